"""Metrics against training step, DREAM against no-warmup (docs/RESULTS.md's training-curve question), resumable.

    python benchmarks/study_curves.py [--arms=dream,no_warmup] [--seeds=1] [--every=320]
        [--results=docs/results] [--workdir=workdir/study] [--set=K=V ...]

Each run is benchmarks/study.py's training run of that arm and seed (the quickstart's training command plus the
arm's overrides) with the train loop's evaluation on (`--config.eval_every=EVERY`, EMA weights): zero-shot, linear
probe, few-shot, and plain decoding's oracle alignment and Fréchet distance on the 256 held-out prompts (the
study's classifier, WORKDIR/shape_classifier.msgpack, trained by the first run that needs it). The end-of-training
report is off (final_evals=(), final_samples=0), so the last step's record is the loop's. A run's curve goes to
RESULTS/curve_<arm>_seed<S>.json: {step: metrics} of the evaluations, and the training log's masking ratio and
losses per logged step. A run whose JSON exists is skipped. Its training minutes include the evaluations, so they
are not study.py's.
The figure is benchmarks/study_plots.py's curves.png.

Dimension letters: none (scalars).
"""

import argparse
import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, REPO)

import study  # noqa: E402
import train_tiny  # noqa: E402
from dream_jax import base_config  # noqa: E402
from configs import dream_tiny  # noqa: E402

# The training log's columns a curve keeps (metrics.jsonl; the masking ratio shows the warmup's schedule).
TRAIN_KEYS = ("mask_ratio_mean", "clip_loss", "gen_loss")
# Evaluators of the tiny config whose metrics no curve keeps: off in the loop's evaluations.
UNCURVED = ("finetune", "segmentation", "depth")
# Which evaluation metrics a curve keeps.
EVAL_KEYS = ("zero_shot/top1", "linear_probe/top1", "few_shot/accuracy", "alignment/plain/frechet") + tuple(
    f"alignment/plain/oracle_{a}" for a in train_tiny.ATTRIBUTES)


def check_every(every, extra):
    """ValueError unless `every` divides the run's total steps (the last step must be evaluated); returns them."""
    config = dream_tiny.get_config()
    for assignment in extra:
        base_config.apply_override(config, assignment)
    steps = config.total_steps
    if every <= 0 or steps % every:
        raise ValueError(f"--every={every} must be a positive divisor of total_steps={steps}")
    return steps


def flags(arm, every, extra, classifier):
    """The training command's overrides of one curve run."""
    return study.ARMS[arm] + extra + [
        f"eval_every={every}", "final_evals=()", "final_samples=0", f"evals.alignment.classifier={classifier}",
        "evals.alignment.modes=('plain',)"] + [f"evals.{name}.enabled=False" for name in UNCURVED]


def curve(workdir):
    """{'eval': {step: {EVAL_KEYS}}, 'train': {key: [[step, value], ...]}} from a finished curve run's workdir."""
    evals = {}
    with open(os.path.join(workdir, "eval", "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            evals[str(row["step"])] = {k: row[k] for k in EVAL_KEYS if k in row}
    train = {k: [] for k in TRAIN_KEYS}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            for k in TRAIN_KEYS:
                if k in row:
                    train[k].append([row["step"], row[k]])
    return {"eval": evals, "train": train}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="dream,no_warmup")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--every", type=int, default=320)
    parser.add_argument("--results", default=os.path.join(REPO, "docs", "results"))
    parser.add_argument("--workdir", default="workdir/study")
    parser.add_argument("--set", action="append", default=[], help="an override for every arm, e.g. total_steps=1200")
    args = parser.parse_args()
    unknown = [a for a in args.arms.split(",") if a not in study.ARMS]
    if unknown:
        raise SystemExit(f"error: --arms: unknown {', '.join(unknown)}; expected some of {', '.join(study.ARMS)}")
    try:
        steps = check_every(args.every, args.set)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    root = os.path.abspath(args.workdir)
    os.makedirs(args.results, exist_ok=True)
    for arm in args.arms.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            path = os.path.join(args.results, f"curve_{arm}_seed{seed}.json")
            if os.path.exists(path):
                print(f"{arm} seed {seed}: done ({path})", flush=True)
                continue
            workdir = os.path.join(root, "curves", arm, f"seed{seed}")
            shutil.rmtree(workdir, ignore_errors=True)  # a stopped run restarts from scratch
            os.makedirs(os.path.dirname(workdir), exist_ok=True)
            overrides = flags(arm, args.every, args.set, os.path.join(root, "shape_classifier.msgpack"))
            seconds, _, _ = train_tiny.run_seed(seed, workdir, study.config_flags(overrides))
            record = dict(curve(workdir), arm=arm, seed=seed, every=args.every, steps=steps, minutes=seconds / 60,
                          overrides=overrides, **study.provenance())
            with open(f"{path}.tmp", "w") as f:
                json.dump(record, f, indent=1, sort_keys=True)
            os.replace(f"{path}.tmp", path)
            print(f"{arm} seed {seed}: {seconds / 60:.2f} min -> {path}", flush=True)


if __name__ == "__main__":
    main()
