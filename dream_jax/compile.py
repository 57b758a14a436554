"""`--mode=compile`: ahead-of-time compile of the real train step for a TPU topology, on any machine, with no TPU.

libtpu (the `tpu` extra) describes a topology such as `v5p:4x4x4` as compile-only devices; the configured mesh is
laid over them and `train.jit_step` is lowered with ShapeDtypeStructs carrying the shardings of the train state
(state.abstract_state), the frozen T5 / VAE (sharding.frozen_shardings) and the global batch: no weight is ever
allocated. The report gives XLA's per-device memory (arguments, temporaries, outputs, total against the chip's
HBM), XLA's FLOPs against flops.py's analytic count, and whether the step fits (maxtext's train_compile).

Pretrained shapes come from `text.t5_path` / `tokenizer.vae_path` when their config.json is there, else from
T5-Large and sd-vae-ft-ema (the paper's): the frozen components are built from module configs
(runtime.abstract), no file is read while tracing.

Dimension letters: B global batch, H/W image size, h/w latent size, C CLIP context, Lt cond length.
"""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dream_jax import flops, info, runtime, sharding
from dream_jax import frozen as frozen_lib
from dream_jax import state as state_lib
from dream_jax.data import webdataset
from dream_jax.interop import pretrained
from dream_jax.models import t5 as t5_lib
from dream_jax.models import vae as vae_lib
from dream_jax.training import train

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


def module_configs(config):
    """(T5Config, VaeConfig or None, notes): from `text.t5_path` / `tokenizer.vae_path` when their config.json is
    there, else T5-Large's and sd-vae-ft-ema's (the paper's), so a pod's step compiles on a machine without them."""
    notes = []
    if config.text.cond_encoder == "tiny_t5":
        t5 = frozen_lib.tiny_t5_config(config)
    elif os.path.isfile(os.path.join(config.text.t5_path, "config.json")):
        t5 = pretrained.t5_config(config.text.t5_path)
    else:
        t5 = t5_lib.T5Config(**info.T5_LARGE)
        notes.append("T5-Large shapes (text.t5_path has no config.json)")
    vae = None
    if config.tokenizer.kind == "vae":
        if os.path.isfile(os.path.join(config.tokenizer.vae_path, "config.json")):
            vae = pretrained.vae_config(config.tokenizer.vae_path)
        else:
            vae = vae_lib.VaeConfig()
            notes.append("sd-vae-ft-ema shapes (tokenizer.vae_path has no config.json)")
    return t5, vae, notes


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


def t5_shape(t5):
    return dict(d_model=t5.d_model, d_kv=t5.d_kv, num_heads=t5.num_heads, d_ff=t5.d_ff, num_layers=t5.num_layers,
                gated=t5.is_gated)


def compile_stats(config):
    """Compiles the train step for `config.compile_topology`; returns a dict of the numbers compile_report prints."""
    train.validate_config(config)
    devices = topology_devices(config.compile_topology)
    t5, vae, notes = module_configs(config)
    mesh = sharding.make_mesh(config, devices)
    train.check_batch(config, mesh)
    rt = runtime.abstract(config, mesh, t5, vae)
    state = state_lib.abstract_state(config, mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, config, v.ndim))
             for k, v in abstract_batch(config).items()}
    # The worst case: the encoder on all positions (plan (), what a step whose classes all need full capacity
    # runs); steps at lower mask ratios compute and hold less (dream_jax/training/capacity.py).
    step = train.jit_step(config, mesh, rt.frozen, batch, plan=())
    ratios = jax.ShapeDtypeStruct((config.masking.num_groups,), jnp.float32, sharding=sharding.replicated(mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
        lowered = step.lower(state, rt.frozen, batch, ratios)
    t5 = t5_shape(t5)
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
