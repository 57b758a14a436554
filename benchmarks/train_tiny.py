"""Train the embedded default for a wall-clock budget and report steps/s, zero-shot accuracy and generation loss.

    python benchmarks/train_tiny.py --minutes=10 --workdir=workdir/bench_tiny

A 30-step calibration run measures steps/s on this machine; the main run then gets the number of steps that
fits the budget, with the 48-epoch masking warmup compressed into it. Prints a JSON line with the results
(also written to WORKDIR/benchmark.json) and the device it ran on.
"""

import argparse
import json
import os
import shutil
import time

import jax

from configs import dream_tiny
from dream_jax import frontend, sample, sharding, train
from dream_jax.evaluation import zero_shot


def _config(steps):
    c = dream_tiny.get_config()
    c.total_steps = steps
    c.steps_per_epoch = max(1, steps // c.num_epochs)
    c.checkpoint_every = max(steps, 1)
    c.log_every = max(10, steps // 40)
    return c


def _last_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f][-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workdir", default="workdir/bench_tiny")
    args = parser.parse_args()
    calib = args.workdir + "_calibration"
    shutil.rmtree(calib, ignore_errors=True)
    shutil.rmtree(args.workdir, ignore_errors=True)
    start = time.monotonic()
    train.train_and_evaluate(_config(30), calib)
    rate = _last_metrics(calib)["steps_per_sec"]
    budget = args.minutes * 60 - (time.monotonic() - start)
    steps = max(30, int(rate * budget))
    print(f"calibration: {rate:.2f} steps/s -> {steps} steps for the remaining {budget:.0f} s", flush=True)
    config = _config(steps)
    t0 = time.monotonic()
    train.train_and_evaluate(config, args.workdir)
    train_seconds = time.monotonic() - t0
    last = _last_metrics(args.workdir)
    tokenizers = frontend.make_tokenizers(config)
    frozen = frontend.load_frozen(config, tokenizers)
    mesh = sharding.make_mesh(config)
    result = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
              "cpu_count": os.cpu_count(), "steps": steps, "train_seconds": round(train_seconds, 1),
              "steps_per_sec": round(steps / train_seconds, 3), "final_gen_loss": last["gen_loss"],
              "final_clip_loss": last["clip_loss"]}
    for use_ema in (True, False):
        config.sampling.use_ema = use_ema
        variables, _ = sample.restore_variables(config, args.workdir, mesh)
        zs = zero_shot.shapes_task(config, variables, frozen, tokenizers, num_images=1024)
        result[f"zero_shot_top1_{'ema' if use_ema else 'live'}"] = zs["zero_shot_top1"]
    result["chance_top1"] = zs["chance_top1"]
    with open(os.path.join(args.workdir, "benchmark.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
