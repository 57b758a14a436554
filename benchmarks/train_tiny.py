"""The embedded default over seeds: the README's quickstart training command, timed, and its end-of-training report.

    python benchmarks/train_tiny.py --seeds=0,1,2 --workdir=workdir/bench_tiny

Each seed runs `python -m dream_jax.main --config=configs/dream_tiny.py --workdir=WORKDIR/seed{S}` in a fresh
process with `--config.seed=S --config.data.shuffle_seed=S` (model init, masks and data order), exactly as a user
would (`--set=K=V` flags follow them: `--seeds=1 --set=data.shuffle_seed=0` is the config as it is), and is timed
from process start to exit (imports, PCA fit, compilation, training and the final report).
Printed: one row per seed and a mean +- std row of training minutes, steady steps/s (the last progress line),
zero-shot top-1 and the oracle alignment per attribute of plain / SAD samples, with chance; then, per attribute,
the samples SAD got right and plain decoding wrong and the reverse with McNemar's exact p, per seed and pooled over
the seeds; the device (CPU model and cores) with the float32 2048^3 matmul's TFLOP/s measured in this process
before the first seed and after the last (host.py: this machine's speed moves from hour to hour, and the minutes
with it); a JSON of everything in WORKDIR/benchmark.json.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from dream_jax.evaluation import paired, report  # noqa: E402

import host  # noqa: E402

ATTRIBUTES = ("shape", "color", "position", "size", "shape_color")


def run_seed(seed, workdir, extra):
    """(wall seconds, last progress record, final eval metrics) of one quickstart training run."""
    args = [sys.executable, "-m", "dream_jax.main", "--config=configs/dream_tiny.py", f"--workdir={workdir}",
            f"--config.seed={seed}", f"--config.data.shuffle_seed={seed}"] + extra
    start = time.monotonic()
    with open(os.path.join(os.path.dirname(workdir), f"seed{seed}.log"), "w") as log:
        code = subprocess.call(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if code:
        raise SystemExit(f"seed {seed}: training exited with {code}; see {log.name}")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    with open(os.path.join(workdir, "eval", f"{last['step']}.json")) as f:
        metrics = json.load(f)["metrics"]
    return seconds, last, metrics


def row(values):
    return "| " + " | ".join(values) + " |"


def table(results):
    head = ["seed", "minutes", "steps/s", "zero-shot top-1"] + [f"{a} plain / SAD" for a in ATTRIBUTES]
    lines = [row(head), row(["---"] * len(head))]
    columns = []
    for seed, (seconds, last, m) in results.items():
        values = [seconds / 60, last["steps_per_sec"], m["zero_shot/top1"]]
        for a in ATTRIBUTES:
            values += [m[f"alignment/plain/oracle_{a}"], m[f"alignment/sad/oracle_{a}"]]
        columns.append(values)
        lines.append(row([str(seed)] + _cells(values)))
    mean, std = np.mean(columns, axis=0), np.std(columns, axis=0)
    lines.append(row(["mean +- std"] + [f"{m:.3f} +- {s:.3f}" for m, s in zip(mean, std)][:3]
                     + [f"{mean[i]:.3f} / {mean[i + 1]:.3f} (+- {std[i]:.3f} / {std[i + 1]:.3f})"
                        for i in range(3, len(mean), 2)]))
    chance = next(iter(results.values()))[2]["zero_shot/chance"]
    lines.append(row(["chance", "", "", f"{chance:.3f}"] + [f"{report.CHANCE[a]:.3f}" for a in ATTRIBUTES]))
    return "\n".join(lines)


def paired_table(results):
    """SAD against plain decoding per seed and pooled: '+gained -lost (p)' per attribute."""
    head = ["seed"] + [f"{a}: SAD +right -wrong (p)" for a in ATTRIBUTES]
    lines = [row(head), row(["---"] * len(head))]
    counts = {seed: [(m[f"alignment/sad_vs_plain/{a}_gained"], m[f"alignment/sad_vs_plain/{a}_lost"])
                     for a in ATTRIBUTES] for seed, (_, _, m) in results.items()}
    counts["pooled"] = [tuple(map(sum, zip(*cells))) for cells in zip(*counts.values())]
    for seed, cells in counts.items():
        lines.append(row([str(seed)] + [f"+{g:.0f} -{lo:.0f} ({paired.mcnemar_p(int(g), int(lo)):.2f})"
                                        for g, lo in cells]))
    return "\n".join(lines)


def _cells(values):
    out = [f"{values[0]:.2f}", f"{values[1]:.2f}", f"{values[2]:.3f}"]
    return out + [f"{values[i]:.3f} / {values[i + 1]:.3f}" for i in range(3, len(values), 2)]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="workdir/bench_tiny")
    parser.add_argument("--set", action="append", default=[], help="extra --config.X=V flags, e.g. total_steps=1000")
    args = parser.parse_args()
    extra = [f"--config.{s}" for s in args.set]
    os.makedirs(args.workdir, exist_ok=True)
    results = {}
    matmul = [host.matmul_flops() / 1e12]
    for seed in [int(s) for s in args.seeds.split(",")]:
        workdir = os.path.join(os.path.abspath(args.workdir), f"seed{seed}")
        subprocess.call(["rm", "-rf", workdir])
        results[seed] = run_seed(seed, workdir, extra)
        print(f"seed {seed}: {results[seed][0] / 60:.2f} min", flush=True)
    matmul.append(host.matmul_flops() / 1e12)
    device = (f"{host.device()}; float32 2048^3 matmul {matmul[0]:.3f} TFLOP/s before the first seed, "
              f"{matmul[1]:.3f} after the last")
    print(f"device: {device}; command: python benchmarks/train_tiny.py --seeds={args.seeds}"
          + "".join(f" --set={s}" for s in args.set))
    print(table(results))
    print(paired_table(results))
    with open(os.path.join(args.workdir, "benchmark.json"), "w") as f:
        json.dump({"device": device, "extra": extra, "results": {s: {"seconds": r[0], "last": r[1], "metrics": r[2]}
                                                                  for s, r in results.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
