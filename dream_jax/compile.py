"""`--mode=compile`: ahead-of-time compile of the real train step for a TPU topology, on any machine, with no TPU.

libtpu (the `tpu` extra) describes a topology such as `v5p:4x4x4` as compile-only devices; the configured mesh is
laid over them and `train.jit_step` is lowered with ShapeDtypeStructs carrying the shardings of the train state
(state.abstract_state), the frozen T5 / VAE (sharding.frozen_shardings) and the global batch: no weight is ever
allocated. The report gives XLA's per-device memory (arguments, temporaries, outputs, total against the chip's
HBM), XLA's FLOPs against flops.py's analytic count, and whether the step fits (maxtext's train_compile).

Pretrained shapes come from `text.t5_path` / `tokenizer.vae_path` when their config.json is there, else from
T5-Large and sd-vae-ft-ema (the paper's), written to a temporary directory so the step traces unchanged.

Dimension letters: B global batch, H/W image size, h/w latent size, C CLIP context, Lt cond length.
"""

import dataclasses
import json
import os
import re
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dream_jax import flops, frontend, info, sharding, train
from dream_jax import state as state_lib
from dream_jax.data import webdataset
from dream_jax.models import vae as vae_lib

GIB = 1 << 30
# HBM per device (a chip; v4 and v5p as megacore chips) by jax's device_kind.
HBM_BYTES = {"TPU v4": 32 * GIB, "TPU v5 lite": 16 * GIB, "TPU v5": 95 * GIB, "TPU v6 lite": 32 * GIB}
# Generations whose two TensorCores per chip form one JAX device only when asked (v5p does it by default).
_MEGACORE = ("v4",)


def topology_devices(name):
    """The compile-only devices of a libtpu topology name (e.g. 'v5p:4x4x4'); ValueError if it is unusable."""
    if not name:
        raise ValueError("config.compile_topology is empty; pass e.g. --config.compile_topology=v5p:4x4x4")
    try:
        import libtpu  # noqa: F401 - only to say what is missing
    except ImportError:
        raise ValueError("--mode=compile needs libtpu: pip install -e '.[tpu]'") from None
    from jax.experimental import topologies

    # Compile-only devices touch no chip, so another process holding libtpu (a run on this host) must not block.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    kwargs = {"chip_config_name": "megacore"} if name.split(":")[0] in _MEGACORE else {}
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs).devices
    except Exception as e:  # libtpu's errors for a bad name vary
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"config.compile_topology={name!r} is not a topology libtpu can build ({first}); "
                         "expected e.g. v5e:16x16, v5p:4x4x4, v4:2x4x4") from e


def _stand_in_dirs(config, directory):
    """A copy of the config whose missing pretrained config.json files are T5-Large's / sd-vae-ft-ema's."""
    config = config.copy_and_resolve_references()
    notes = []
    if config.text.cond_encoder == "t5" and not os.path.isfile(os.path.join(config.text.t5_path, "config.json")):
        path = os.path.join(directory, "t5")
        _write_json(path, dict(model_type="t5", feed_forward_proj="relu", **info.T5_LARGE))
        config.text.t5_path = path
        notes.append("T5-Large shapes (text.t5_path has no config.json)")
    if config.tokenizer.kind == "vae" and not os.path.isfile(os.path.join(config.tokenizer.vae_path, "config.json")):
        path = os.path.join(directory, "vae")
        vae = dataclasses.asdict(vae_lib.VaeConfig())
        blocks = len(vae["block_out_channels"])
        _write_json(path, dict(_class_name="AutoencoderKL", act_fn="silu", **vae,
                               down_block_types=["DownEncoderBlock2D"] * blocks,
                               up_block_types=["UpDecoderBlock2D"] * blocks))
        config.tokenizer.vae_path = path
        notes.append("sd-vae-ft-ema shapes (tokenizer.vae_path has no config.json)")
    return config, notes


def _write_json(directory, content):
    os.makedirs(directory)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(content, f)


def abstract_frozen(config):
    """ShapeDtypeStructs of frontend.load_frozen's pytree, from the modules' shapes (reads config.json files only)."""
    key = jax.random.key(0)
    ids = jnp.zeros((1, config.model.cond_len), jnp.int32)
    cond = jax.eval_shape(lambda: frontend.cond_encoder(config).init(key, ids))
    frozen = {"cond": cond}
    if config.tokenizer.kind == "vae":
        image = jnp.zeros((1, 8, 8, 3), jnp.float32)
        frozen["vae"] = {"params": jax.eval_shape(lambda: frontend.vae(config).init(key, image))["params"]}
    if config.tokenizer.pca_dim:
        frozen["pca"] = jax.eval_shape(lambda: frontend.fit_pca(config))
    frozen["empty_cond"] = jax.eval_shape(lambda c: frontend.cond_features(config, {"cond": c}, ids, ids)[0], cond)
    return frozen


def abstract_batch(config):
    """ShapeDtypeStructs of one global batch as the config's pipeline yields it."""
    b, m, size = config.batch_size, config.model, config.tokenizer.image_size
    if config.data.source == "latents":
        side = size // 8
        image = jax.ShapeDtypeStruct((b, side, side, 8), jnp.float16)
    else:
        image = jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8)
    batch = {
        "image": image,
        "clip_ids": jax.ShapeDtypeStruct((b, m.text_tower.context_length), jnp.int32),
        "cond_ids": jax.ShapeDtypeStruct((b, m.cond_len), jnp.int32),
        "cond_mask": jax.ShapeDtypeStruct((b, m.cond_len), jnp.int32),
    }
    if config.data.source == "webdataset":
        batch.update({k: jax.ShapeDtypeStruct((b,), jnp.int32) for k in webdataset.COUNT_KEYS})
    return batch


def _with_shardings(tree, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


def _t5_shape(config):
    t5 = frontend.cond_encoder(config).config
    return dict(d_model=t5.d_model, d_kv=t5.d_kv, num_heads=t5.num_heads, d_ff=t5.d_ff, num_layers=t5.num_layers,
                gated=t5.is_gated)


def compile_stats(config):
    """Compiles the train step for `config.compile_topology`; returns a dict of the numbers compile_report prints."""
    train.validate_config(config)
    devices = topology_devices(config.compile_topology)
    with tempfile.TemporaryDirectory() as directory:
        config, notes = _stand_in_dirs(config, directory)
        mesh = sharding.make_mesh(config, devices)
        train.check_batch(config, mesh)
        state = state_lib.abstract_state(config, mesh)
        frozen = abstract_frozen(config)
        frozen = _with_shardings(frozen, sharding.frozen_shardings(frozen, mesh))
        batch = abstract_batch(config)
        batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, config, v.ndim))
                 for k, v in batch.items()}
        # The worst case: the encoder on all positions (plan (), what a step whose classes all need full capacity
        # runs); steps at lower mask ratios compute and hold less (dream_jax/capacity.py).
        config = train.with_plan(config, ())
        step = train.jit_step(config, mesh, frozen, batch)
        ratios = jax.ShapeDtypeStruct((config.masking.num_groups,), jnp.float32, sharding=sharding.replicated(mesh))
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
            lowered = step.lower(state, frozen, batch, ratios)
        t5 = _t5_shape(config)
    kind = devices[0].device_kind
    state_bytes = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
    stats = {
        "topology": config.compile_topology,
        "device_kind": kind,
        "num_devices": len(devices),
        "mesh": dict(mesh.shape),
        "remat": config.model.remat,
        "scan_layers": bool(config.model.scan_layers),
        "grad_accum_steps": config.grad_accum_steps,
        "batch_size": config.batch_size,
        "notes": notes,
        "hbm": HBM_BYTES.get(kind),
        "state_bytes": int(state_bytes),
        "analytic_flops": float(flops.train_flops_per_example(config, 0.0, t5) * config.batch_size),
        "analytic_flops_visible": float(flops.train_flops_per_example(config, 0.75, t5) * config.batch_size),
    }
    try:
        compiled = lowered.compile()
    except Exception as e:  # XLA refuses a program whose temporaries exceed the chip's HBM; anything else re-raises
        out_of_memory = _OOM.search(str(e))
        if not out_of_memory:
            raise
        stats.update(out_of_memory=True, temporaries=_bytes(out_of_memory["temp"]),
                     hbm=_bytes(out_of_memory["hbm"]))
        return stats
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    stats.update(
        out_of_memory=False,
        arguments=memory.argument_size_in_bytes,
        outputs=memory.output_size_in_bytes,
        aliased=memory.alias_size_in_bytes,
        temporaries=memory.temp_size_in_bytes,
        code=memory.generated_code_size_in_bytes,
        total=(memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
               + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes),
        xla_flops_per_device=float(cost.get("flops", float("nan"))),
    )
    return stats


# XLA's TPU compiler stops when the temporaries alone exceed HBM: "... HLO temporaries (98.09G) exceeds available
# HBM (95.74G)".
_OOM = re.compile(r"temporaries \((?P<temp>[\d.]+[KMGT]?)\) exceeds available HBM \((?P<hbm>[\d.]+[KMGT]?)\)")


def _bytes(text):
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(float(text.rstrip("KMGT")) * scale.get(text[-1], 1))


def _gib(n):
    return f"{n / GIB:.2f} GiB"


def fits(stats):
    """True / False against the chip's HBM; None for a chip whose HBM is not in HBM_BYTES."""
    if stats["out_of_memory"]:
        return False
    return None if stats["hbm"] is None else stats["total"] <= stats["hbm"]


def compile_report(config):
    """The --mode=compile report as text."""
    s = compile_stats(config)
    mesh = " x ".join(f"{k} {v}" for k, v in s["mesh"].items())
    per_device_batch = s["batch_size"] // (s["mesh"]["data"] * s["mesh"]["fsdp"])
    verdict = {True: "FITS", False: "DOES NOT FIT", None: "unknown HBM for this chip"}[fits(s)]
    lines = [
        f"train step of DREAM-{config.model.scale} compiled for {s['topology']}: {s['num_devices']} x "
        f"{s['device_kind']}, mesh {mesh}, global batch {s['batch_size']} ({per_device_batch} per device), "
        f"remat {s['remat']}, {'scanned' if s['scan_layers'] else 'unrolled'} blocks, grad_accum_steps "
        f"{s['grad_accum_steps']}",
        "  (the worst-case step: the encoder at full capacity, as at mask ratio 0; steps whose mask groups all hide "
        "more tokens compile at a smaller capacity and need less)",
        *(f"  (using {n})" for n in s["notes"]),
        "",
    ]
    if s["out_of_memory"]:
        return "\n".join(lines + [
            f"XLA stopped: the temporaries alone need {_gib(s['temporaries'])} per device, more than the "
            f"{_gib(s['hbm'])} of HBM.",
            f"  verdict      {verdict} (try --config.model.remat=full, --config.grad_accum_steps=2, or more fsdp)"])
    xla_total = s["xla_flops_per_device"] * s["num_devices"]
    lines += [
        "per-device memory (XLA memory_analysis)",
        f"  arguments    {_gib(s['arguments'])}   (this device's part of the train state, {_gib(s['state_bytes'])} "
        "in all, of the frozen T5/VAE and of the batch)",
        f"  outputs      {_gib(s['outputs'])}   ({_gib(s['aliased'])} of it in donated argument buffers)",
        f"  temporaries  {_gib(s['temporaries'])}",
        f"  code         {_gib(s['code'])}",
        f"  total        {_gib(s['total'])}   of {_gib(s['hbm']) if s['hbm'] else '?'} HBM"
        + (f" ({100 * s['total'] / s['hbm']:.0f}%)" if s["hbm"] else ""),
        f"  verdict      {verdict}",
        "",
        "FLOPs per step (XLA cost_analysis x devices vs dream_jax.flops)",
        f"  XLA          {xla_total / 1e15:.2f} PFLOP ({s['xla_flops_per_device'] / 1e12:.2f} TFLOP per device)",
        f"  analytic     {s['analytic_flops'] / 1e15:.2f} PFLOP at mask ratio 0 (the key-masked encoder computes "
        f"every position; {s['analytic_flops_visible'] / 1e15:.2f} on visible tokens only at ratio 0.75)",
        f"  XLA/analytic {xla_total / s['analytic_flops']:.2f} (XLA also counts the frozen VAE encoder, "
        "element-wise ops and the optimiser"
        + (f"; it counts each loop body once, so 1 of {s['grad_accum_steps']} microbatches" if s["grad_accum_steps"] > 1
           else "") + ("; and one block of each scanned tower" if s["scan_layers"] else "") + ")",
    ]
    return "\n".join(lines)
