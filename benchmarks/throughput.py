"""Training throughput of the real train step: examples/s, image tokens/s and MFU, on whatever device is present.

    python benchmarks/throughput.py [--config=configs/dream_tiny.py] [--batch_size=N] [--steps=10] [--warmup=2]
        [--mask_ratio=0.75] [--sample_batch=256] [--set model.width=256 --set data.source=latents ...]

The step is train.compile_step's (the jitted train step of train_and_evaluate, sharded over every device, the
encoder at the capacity plan of the step's ratios) on one random batch of the config's shapes (no input pipeline
in the timing) and random frozen T5 / VAE weights of the config's shapes (nothing is read from disk). Masking is
fixed at --mask_ratio so the encoder's plan and the analytic FLOPs agree. Warmup steps (compilation included) are
excluded; the timed steps are dispatched back to back and the last result waited for (block_until_ready).

MFU = flops.train_flops_per_example at --mask_ratio (plus the frozen T5 forward; the VAE is not counted) x
examples/s / (devices x peak). The peak is the device kind's dense bf16 spec (PEAK_FLOPS). On a device with no
spec (CPU) it is a float32 / bfloat16 matmul of the model's dtype timed in the same process, and the report says
so: the house rule that benchmarks print ratios against a reference run in the same process.

With --sample_batch=N (0 = skip) it also times generation of N prompts (generate.generate, the config's sampling
settings: plain decoding and SAD with the config's K and T_c, random weights and prompts, one jit each, warm),
in images/s and SAD's time over plain's. Tokens only: the VAE decode of the finished tokens is not included.

With --official_repo=PATH (a local checkout of the authors' code, github.com/chaoli-charlie/dream) it first times
the authors' PyTorch train step on the same device, batch and masking with bf16 autocast (official_step.py) and
prints dream_jax's examples/s over theirs. B/L/H/G configs only (the authors' scales).

Dimension letters: B batch, N matmul size.
"""

import argparse
import importlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dream_jax import base_config  # noqa: E402
from dream_jax import flops, sharding  # noqa: E402
from dream_jax import compile as compile_lib  # noqa: E402
from dream_jax import frozen as frozen_lib  # noqa: E402
from dream_jax.generation import generate  # noqa: E402
from dream_jax.models import precision  # noqa: E402
from dream_jax.training import train  # noqa: E402

import host  # noqa: E402
import official_step  # noqa: E402

# Dense bf16 peak FLOP/s per device (a chip; v4 / v5p megacore), by a substring of jax's device_kind.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5p": 459e12,
    "TPU v5": 459e12,       # v5p reports "TPU v5"
    "TPU v6 lite": 918e12,  # v6e
    "H100": 989e12,         # SXM; PCIe is 756e12
    "A100": 312e12,
}


def spec_peak(device_kind):
    """(FLOP/s, name) of the first PEAK_FLOPS entry whose key is in device_kind; None if none is."""
    for key, value in PEAK_FLOPS.items():
        if key in device_kind:
            return value, f"{key} bf16 spec"
    return None


def random_like(tree, seed=0):
    """Arrays of the ShapeDtypeStructs' shapes: small normals for floats, small non-negative ints for ints."""
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    out = []
    for s in leaves:
        if jnp.issubdtype(s.dtype, jnp.floating):
            out.append((0.02 * rng.standard_normal(s.shape)).astype(s.dtype))
        else:
            out.append(rng.integers(0, 8, s.shape).astype(s.dtype))
    return jax.tree.unflatten(treedef, out)


def add_step_args(parser, mask_ratio):
    """The flags of the step's setup (make_config, run_steps) that throughput.py and step_profile.py share."""
    parser.add_argument("--config", default="configs/dream_tiny.py")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mask_ratio", type=float, default=mask_ratio)
    parser.add_argument("--set", action="append", default=[], help="a config override, e.g. model.width=256")


def make_config(args):
    config = importlib.import_module(args.config.replace("/", ".").removesuffix(".py")).get_config()
    for assignment in args.set:
        base_config.apply_override(config, assignment)
    if args.batch_size:
        config.batch_size = args.batch_size
    config.masking.kind, config.masking.fixed_ratio = "fixed", args.mask_ratio
    return config


def official_t5(config):
    """The frozen T5's shape for the authors' step (compile.t5_shape), None when the config has the tiny one."""
    if config.text.cond_encoder != "t5":
        return None
    return compile_lib.t5_shape(compile_lib.module_configs(config)[0])


def random_frozen(config):
    """The frozen components of the config's shapes (compile.module_configs: local config.json files, else the
    paper's), random weights."""
    t5, vae, _ = compile_lib.module_configs(config)
    return random_like(frozen_lib.abstract(config, t5, vae))


def setup(config):
    """(step_fn, state, frozen, batch): train.compile_step over every device on random inputs of the config's
    shapes (random frozen weights, one random batch), nothing compiled yet."""
    train.validate_config(config)
    mesh = sharding.make_mesh(config)
    train.check_batch(config, mesh)
    frozen = random_frozen(config)
    frozen = jax.device_put(frozen, sharding.frozen_shardings(frozen, mesh))
    batch = sharding.global_batch(random_like(compile_lib.abstract_batch(config), seed=1), mesh, config)
    return train.compile_step(config, mesh, frozen, batch), train.create_state(config, mesh), frozen, batch


def run_steps(step_fn, state, frozen, batch, first, count):
    """(state, seconds) of steps first .. first + count - 1 dispatched back to back, the last one waited for."""
    start = time.perf_counter()
    for i in range(first, first + count):
        state, metrics = step_fn(state, frozen, batch, i)
    jax.block_until_ready((state, metrics))
    return state, time.perf_counter() - start


def measure(config, steps, warmup):
    """(seconds per step, compile-and-warmup seconds, the frozen T5's shape or None) of train.compile_step on
    random inputs."""
    step_fn, state, frozen, batch = setup(config)
    state, warm = run_steps(step_fn, state, frozen, batch, 0, warmup)
    _, seconds = run_steps(step_fn, state, frozen, batch, warmup, steps)
    return seconds / steps, warm, official_t5(config)


def measure_sampling(config, batch):
    """{'plain', 'sad'} -> (seconds of the first call, compilation included; warm seconds) of generate.generate on
    `batch` random prompts (random weights)."""
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    frozen = random_frozen(config)
    state = train.create_state(config, mesh)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    m = config.model
    rng = np.random.default_rng(2)
    clip_ids = jnp.asarray(rng.integers(1, m.text_tower.vocab_size, (batch, m.text_tower.context_length)),
                           jnp.int32)
    cond_ids = jnp.asarray(rng.integers(1, 100, (batch, m.cond_len)), jnp.int32)
    cond_mask = jnp.ones((batch, m.cond_len), jnp.int32)
    fc = generate.freeze(config)
    out = {}
    for name, opts in (("plain", generate.options_from_config(config, num_candidates=1, sad_step=0)),
                       ("sad", generate.options_from_config(config))):
        args = (fc, opts, variables, frozen, clip_ids, cond_ids, cond_mask, jax.random.key(0))
        start = time.perf_counter()
        jax.block_until_ready(generate.generate(*args))
        first = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(generate.generate(*args))
        out[name] = first, time.perf_counter() - start
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_args(parser, mask_ratio=0.75)
    parser.add_argument("--sample_batch", type=int, default=0, help="also time generation of N prompts (0: skip)")
    parser.add_argument("--official_repo", default="", help="a checkout of the authors' code to time beside ours")
    args = parser.parse_args()
    config = make_config(args)
    official = None
    if args.official_repo:  # first, so that torch releases the accelerator's memory before JAX allocates it
        try:
            official = official_step.measure(args.official_repo, config, config.batch_size, args.mask_ratio,
                                             args.steps, args.warmup, official_t5(config))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}")
    seconds, warm, t5 = measure(config, args.steps, args.warmup)

    devices = jax.devices()
    kind = devices[0].device_kind
    per_example = flops.train_flops_per_example(config, args.mask_ratio, t5)
    examples = config.batch_size / seconds
    achieved = per_example * examples
    peak = spec_peak(kind)
    if peak is None:
        dtype = precision.compute_dtype(config.model.precision)
        peak = (host.matmul_flops(dtype), f"{dtype.name} 2048^3 matmul measured in this process")
    peak_flops, peak_name = peak
    print(f"DREAM-{config.model.scale} train step on {len(devices)} x {kind} ({jax.default_backend()}), "
          f"mesh {dict(sharding.make_mesh(config).shape)}, batch {config.batch_size}, mask ratio {args.mask_ratio}")
    print(f"  warmup ({args.warmup} steps, compilation included) {warm:.1f} s; {args.steps} timed steps")
    print(f"  step time      {seconds * 1e3:.1f} ms")
    print(f"  examples/s     {examples:.1f}")
    print(f"  tokens/s       {examples * config.model.seq_len:.0f} (image tokens, {config.model.seq_len} an example)")
    print(f"  model FLOP/s   {achieved / 1e12:.3f} TFLOP/s ({per_example / 1e9:.2f} GFLOP an example, flops.py)")
    print(f"  peak           {peak_flops / 1e12:.3f} TFLOP/s per device ({peak_name})")
    print(f"  MFU            {achieved / (len(devices) * peak_flops):.3f}")
    if official:
        theirs, name = official
        print(f"authors' PyTorch step on {name} (bf16 autocast, batch {config.batch_size}): {theirs * 1e3:.1f} ms, "
              f"{config.batch_size / theirs:.1f} examples/s; dream_jax / authors = {theirs / seconds:.2f}x")
    if args.sample_batch:
        s = config.sampling
        times = measure_sampling(config, args.sample_batch)
        print(f"sampling {args.sample_batch} prompts on 1 x {kind}: {s.num_iter} decoding steps, "
              f"{config.diffusion.sampling_steps} head steps, CFG {s.cfg}; SAD K={s.num_candidates}, T_c={s.sad_step}")
        plain = times["plain"][1]
        for name, (first, seconds) in times.items():
            print(f"  {name:<6} {seconds:.2f} s, {args.sample_batch / seconds:.1f} images/s "
                  f"({seconds / plain:.2f} x plain); first call {first:.1f} s (compilation included)")


if __name__ == "__main__":
    main()
