"""Where a train step's compile time goes: the whole step against its two halves, each traced, lowered and
compiled on its own.

    python benchmarks/compile_split.py [--config=configs/dream_tiny.py] [--batch_size=N] [--mask_ratio=0.5]
        [--repeats=2] [--set model.width=256 ...]

The halves are train.step_grads (the model: loss, gradients, batch-norm statistics) and train.apply_grads (the
optimiser: global-norm clip, AdamW as optim.flat_update says, the EMA and the logged norms); the whole is
train.jit_step, as training compiles it. Inputs are throughput.py's (random weights and batch of the config's
shapes, masking fixed at --mask_ratio). Every repeat traces anew (a new jit), so no in-memory cache is read; the
persistent compilation cache is whatever the environment sets (off by default). XLA_FLAGS apply as given: the test
suite compiles with tests/xla_flags.FAST_COMPILE, training with XLA's defaults.

Printed: the device (host.py) and XLA_FLAGS, then per program the best of --repeats for tracing, lowering and
compiling (seconds), the compile's share of the whole step's, and the optimised HLO's instruction count.
"""

import argparse
import functools
import os
import sys
import time

import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import host  # noqa: E402
import throughput  # noqa: E402
from dream_jax import sharding  # noqa: E402
from dream_jax.training import capacity, train  # noqa: E402


def programs(config):
    """(mesh, {name: (a maker of a fresh jit, its arguments)}) of the whole step and its two halves on random
    inputs."""
    _, state, frozen, batch = throughput.setup(config)
    mesh = sharding.make_mesh(config)
    ratios = train.mask_ratios(config, 0)
    plan = tuple(capacity.plan(config, ratios, sharding.batch_divisor(mesh, config)))
    grads = jax.tree.map(lambda p: 0.01 * p, state.params)
    return mesh, {
        "step": (lambda: train.jit_step(config, mesh, frozen, batch, plan), (state, frozen, batch, ratios)),
        "grads": (lambda: jax.jit(functools.partial(train.step_grads, config, plan)), (state, frozen, batch, ratios)),
        "update": (lambda: jax.jit(functools.partial(train.apply_grads, config)),
                   (state, grads, state.batch_stats, {})),
    }


def time_program(make, args, config, mesh):
    """(trace, lower, compile seconds, optimised HLO instructions) of one fresh jit of `make()` on `args`, inside
    the mesh and the logical-axis rules as train.compile_step calls it."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
        start = time.perf_counter()
        traced = make().trace(*args)
        traced_at = time.perf_counter()
        lowered = traced.lower()
        lowered_at = time.perf_counter()
        compiled = lowered.compile()
        done = time.perf_counter()
    instructions = sum(" = " in line for line in compiled.as_text().splitlines())
    return traced_at - start, lowered_at - traced_at, done - lowered_at, instructions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dream_tiny.py")
    parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
    parser.add_argument("--mask_ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="a config override, e.g. model.width=256")
    args = parser.parse_args()
    if args.repeats < 1:
        raise SystemExit(f"error: --repeats={args.repeats} must be >= 1")
    config = throughput.make_config(args)
    mesh, progs = programs(config)
    print(f"DREAM-{config.model.scale} train step on {jax.device_count()} x {jax.devices()[0].device_kind}, "
          f"{host.device()}; batch {config.batch_size}")
    print(f"  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"  {'program':<8} {'trace s':>8} {'lower s':>8} {'compile s':>10} {'of step':>8} {'HLO instr':>10}")
    whole = None
    for name, (make, fn_args) in progs.items():
        runs = [time_program(make, fn_args, config, mesh) for _ in range(args.repeats)]
        trace, lower, comp = (min(r[i] for r in runs) for i in range(3))
        whole = whole or comp
        print(f"  {name:<8} {trace:8.2f} {lower:8.2f} {comp:10.2f} {comp / whole:8.0%} {runs[0][3]:10d}")


if __name__ == "__main__":
    main()
