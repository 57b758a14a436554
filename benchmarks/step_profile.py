"""Where a train step's time goes: a jax.profiler trace of the real train step, its XLA ops grouped by kind.

    python benchmarks/step_profile.py [--config=configs/dream_tiny.py] [--batch_size=N] [--mask_ratio=0.5]
        [--steps=10] [--warmup=2] [--top=20] [--set model.width=256 ...]

The step and its inputs are throughput.py's (train.compile_step on random weights and one random batch, masking
fixed at --mask_ratio). After the warmup (compilation), --steps steps run untraced, then the same number traced:
both wall times a step are printed, so the tracing overhead shows. An op is a complete event of the trace on one of
XLA's threads (XLA:CPU's intra-op pool and the PjRt client's), runtime bookkeeping ("Thunk...::", "end: ...")
left out; ops are grouped by name without the numeric suffix (ynn_fusion.663 -> ynn_fusion: the fusions XLA:CPU
hands to YNNPACK, its matmuls and what is fused into them). A group's time sums its events over every thread (two
busy threads count twice), so the groups add up to the op time, which can exceed the wall time; the ops' count a
step is the number of kernels the runtime dispatches, the overhead that dominates a tiny model on a CPU. On an
accelerator the ops run on the device's streams, which this grouping does not read: use `--config.profile_steps`
and TensorBoard's profile plugin there.

Printed: the device (host.py), wall ms a step untraced and traced, op ms and ops a step, then the --top groups by
time with ms a step, calls a step and their share of the op time.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import host  # noqa: E402
import throughput  # noqa: E402

XLA_THREADS = ("tf_XLAEigen", "tf_XLAPjRtCpuClient")


def trace_events(trace_dir):
    """The trace's events (Chrome trace format) and {(pid, tid): thread name} of the one trace under trace_dir."""
    paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    if len(paths) != 1:
        raise SystemExit(f"error: expected one trace.json.gz under {trace_dir}, found {len(paths)}")
    with gzip.open(paths[0]) as f:
        events = json.load(f)["traceEvents"]
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    return events, threads


def op_groups(events, threads):
    """{group: [total microseconds, calls]} of the XLA ops among `events` (see the module docstring)."""
    groups = collections.defaultdict(lambda: [0.0, 0])
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or "::" in name or name.startswith("end: "):
            continue
        if not threads.get((e["pid"], e["tid"]), "").startswith(XLA_THREADS):
            continue
        group = groups[re.sub(r"\.\d+$", "", name)]
        group[0] += e["dur"]
        group[1] += 1
    return dict(groups)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    throughput.add_step_args(parser, mask_ratio=0.5)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    config = throughput.make_config(args)
    step_fn, state, frozen, batch = throughput.setup(config)
    state, _ = throughput.run_steps(step_fn, state, frozen, batch, 0, args.warmup)
    state, untraced = throughput.run_steps(step_fn, state, frozen, batch, args.warmup, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        _, traced = throughput.run_steps(step_fn, state, frozen, batch, args.warmup + args.steps, args.steps)
        jax.profiler.stop_trace()
        groups = op_groups(*trace_events(tmp))
    if not groups:
        raise SystemExit("error: the trace holds no XLA:CPU op events (on an accelerator, use --config.profile_steps)")
    total = sum(t for t, _ in groups.values())
    calls = sum(n for _, n in groups.values())
    per = 1e3 * args.steps  # microseconds over the traced steps -> ms a step
    print(f"DREAM-{config.model.scale} train step on {jax.device_count()} x {jax.devices()[0].device_kind}, "
          f"{host.device()}; batch {config.batch_size}, mask ratio {args.mask_ratio}")
    print(f"  wall a step: {untraced / args.steps * 1e3:.1f} ms untraced, {traced / args.steps * 1e3:.1f} ms traced")
    print(f"  ops a step:  {total / per:.1f} ms over all threads, {calls / args.steps:.0f} ops")
    print(f"  {'group':<32} {'ms/step':>8} {'ops/step':>9} {'share':>6}")
    for name, (t, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"  {name:<32} {t / per:8.2f} {n / args.steps:9.1f} {t / total:6.1%}")


if __name__ == "__main__":
    main()
