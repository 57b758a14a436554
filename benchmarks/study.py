"""The paper's claims at small scale: ablation arms x seeds on the embedded default's recipe, resumable.

    python benchmarks/study.py [--arms=dream,no_warmup,fixed_low,clip_only,fluid] [--seeds=0,1,2]
        [--results=docs/results] [--workdir=workdir/study] [--set=K=V ...] [--report]

Each run (arm, seed) is the README's quickstart training command (benchmarks/train_tiny.run_seed: a fresh process,
`--config.seed=S --config.data.shuffle_seed=S`, equal training steps in every arm) plus the arm's overrides, then
one `--mode=eval` pass. Its results go to RESULTS/<arm>_seed<S>.json and a run whose JSON exists is skipped, so
the study runs in parts, on several machines, and survives a crash (a stopped run restarts from scratch: its
workdir is deleted first). `--report` only prints the tables of the JSONs present.

Arms (ARMS):
  dream      Masking Warmup, both losses (the default).
  no_warmup  MAR / FLUID masking (TruncNormal(1, 0.25) on [0.7, 1]) from step 0, both losses.
  fixed_low  masking fixed at 0.25 for both objectives; the generation loss's gate (loss.min_masked_for_gen=0.5,
             which would switch it off at 0.25) is lowered to 0.
  clip_only  CLIP: generation loss weight 0, masking ratio 0 (no generator: generation is not reported).
  fluid      FLUID: contrastive weight 0, MAR masking (no text tower: zero-shot and SAD are not reported).
Per run: training minutes; zero-shot top-1 (28 shape x colour classes); linear probe and 5-way 5-shot few-shot on
the encoder's features; per-attribute oracle alignment of 256 held-out prompts with plain decoding and SAD
(K=5) at T_c = 4 of 8 steps (31% of the tokens decoded; from the end-of-training report) and T_c = 2 (12.5%; the
eval pass), best-of-5 reranking of finished plain samples by the same score (alignment mode 'rerank'), and per
attribute the KL divergence of the prompts' histogram to the plain samples' (oracle).
Every run also reports each mode's Fréchet distance to real held-out renders in a small fixed classifier's
features (evals.alignment.classifier: WORKDIR/shape_classifier.msgpack, trained by the first run and reused).
The SAD sweep over K and T_c is benchmarks/sad_sweep.py; the plots are benchmarks/study_plots.py.

Dimension letters: none (tables of scalars).
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import host  # noqa: E402
import train_tiny  # noqa: E402
from dream_jax.evaluation import shape_classifier  # noqa: E402

ARMS = {
    "dream": [],
    "no_warmup": ["masking.kind=mar"],
    "fixed_low": ["masking.kind=fixed", "masking.fixed_ratio=0.25", "loss.min_masked_for_gen=0.0"],
    "clip_only": ["loss.gen_weight=0.0", "masking.kind=fixed", "masking.fixed_ratio=0.0"],
    "fluid": ["loss.clip_weight=0.0", "masking.kind=mar"],
}
GENERATES = {"dream", "no_warmup", "fixed_low", "fluid"}  # arms with a trained generator
CONTRASTS = {"dream", "no_warmup", "fixed_low", "clip_only"}  # arms with a trained text tower
SAD_EARLY = 2  # T_c of the eval pass (2 of 8 cosine steps: 2 of 16 tokens decoded)


def config_flags(assignments):
    """`--config.` flags of the training command from study-style assignments ('a.b=value')."""
    return [f"--config.{a}" for a in assignments]


def run(arm, seed, workdir, extra, classifier):
    """The JSON record of one (arm, seed): training, the end-of-training report, and the eval pass. `classifier`:
    the shape classifier's file of every run's Fréchet distance (trained by the first run that needs it)."""
    overrides = ARMS[arm] + extra
    measure = [f"evals.alignment.classifier={classifier}"]
    subprocess.call(["rm", "-rf", workdir])
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    seconds, last, final = train_tiny.run_seed(seed, workdir, config_flags(overrides + measure))
    args = [sys.executable, "-m", "dream_jax.main", "--config=configs/dream_tiny.py", f"--workdir={workdir}",
            "--mode=eval", f"--config.seed={seed}", f"--config.data.shuffle_seed={seed}"] + config_flags(
        overrides + measure + ["evals.zero_shot.enabled=False", f"sampling.sad_step={SAD_EARLY}",
                     "evals.alignment.modes=('sad','rerank')"])
    with open(f"{workdir}.eval.log", "w") as log:
        if subprocess.call(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT):
            raise SystemExit(f"{arm} seed {seed}: evaluation failed; see {log.name}")
    with open(os.path.join(workdir, "eval", f"{last['step']}.json")) as f:
        early = json.load(f)["metrics"]
    return {
        "arm": arm, "seed": seed, "overrides": overrides, "steps": last["step"], "minutes": seconds / 60,
        "steps_per_sec": last["steps_per_sec"], "final": final, "eval": early, **provenance(),
    }


def provenance():
    """{'device', 'commit'} of a result record: where and from which code it was measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"device": host.device(), "commit": commit.stdout.strip()}


def columns(record):
    """{column: value} of one run's record; columns an arm cannot measure are left out."""
    arm, final, early = record["arm"], record["final"], record["eval"]
    out = {"train minutes": record["minutes"], "linear probe": early["linear_probe/top1"],
           "few-shot 5x5": early["few_shot/accuracy"]}
    if arm in CONTRASTS:
        out["zero-shot"] = final["zero_shot/top1"]
    if arm in GENERATES:
        for a in train_tiny.ATTRIBUTES:
            out[f"{a} plain"] = final[f"alignment/plain/oracle_{a}"]
            if f"alignment/plain/kl_{a}" in final:  # absent from records written before the KL metric
                out[f"{a} KL"] = final[f"alignment/plain/kl_{a}"]
            if arm in CONTRASTS:
                out[f"{a} SAD@31%"] = final[f"alignment/sad/oracle_{a}"]
                out[f"{a} SAD@12.5%"] = early[f"alignment/sad/oracle_{a}"]
                if f"alignment/rerank/oracle_{a}" in early:  # absent from records written before reranking
                    out[f"{a} best-of-5"] = early[f"alignment/rerank/oracle_{a}"]
        for mode, metrics, name in (("plain", final, "plain"), ("sad", final, "SAD@31%"), ("sad", early, "SAD@12.5%"),
                                    ("rerank", early, "best-of-5")):
            key = f"alignment/{mode}/frechet"  # absent from records written before the Fréchet distance
            if key in metrics and (mode == "plain" or arm in CONTRASTS):
                out[f"Frechet {name}"] = metrics[key]
    return out


def table(records, names):
    """A markdown table: one row per arm (mean +- std over its seeds) of the columns `names`."""
    lines = ["| arm | seeds | " + " | ".join(names) + " |", "| --- " * (len(names) + 2) + "|"]
    by_arm = {}
    for r in records:
        by_arm.setdefault(r["arm"], []).append(columns(r))
    for arm in [a for a in ARMS if a in by_arm]:
        cells = []
        for name in names:
            values = [c[name] for c in by_arm[arm] if name in c]
            seeds = "" if len(values) in (0, len(by_arm[arm])) else f" (n={len(values)})"
            cells.append(f"{np.mean(values):.3f} +- {np.std(values):.3f}{seeds}" if values else "")
        if any(cells):  # an arm that measures none of the columns has no row
            lines.append(f"| {arm} | {len(by_arm[arm])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(records):
    """The study's tables (representation; generation), from whatever records exist."""
    chance = "chance: zero-shot 0.036, linear probe 0.036, few-shot 0.200"
    gen = [f"{a} {m}" for a in ("shape_color", "position", "size")
           for m in ("plain", "SAD@31%", "SAD@12.5%", "best-of-5")]
    return "\n\n".join([
        "Representation (" + chance + "):",
        table(records, ["train minutes", "zero-shot", "linear probe", "few-shot 5x5"]),
        "Generation, oracle alignment of the held-out prompts (evals.alignment.num_prompts, 256 by default; chance: "
        "shape_color 0.036, position 0.2, size 0.5):",
        table(records, gen),
        "Distribution of plain samples: KL(prompted || read back) per attribute, nats (0 = the prompts' histogram):",
        table(records, [f"{a} KL" for a in ("shape", "color", "position", "size")]),
        "Distribution of samples: Fréchet distance to real held-out renders in the shape classifier's features "
        "(dream_jax/evaluation/shape_classifier.py; the floor, real renders of the prompts, is printed below):",
        table(records, ["Frechet plain", "Frechet SAD@31%", "Frechet SAD@12.5%", "Frechet best-of-5"]),
    ])


def frechet_floor(classifier, num_prompts=256, num_reference=2048):
    """The Fréchet distance of the alignment prompts' own real renders to the evaluator's reference renders (the
    alignment evaluator's defaults: prompts and reference seed 0): what a perfect generator would score."""
    params = shape_classifier.load_or_train(classifier)
    real = shape_classifier.rendered("heldout", num_prompts, 32, seed=2000)[0]  # alignment.shapes_prompts' draw
    reference = shape_classifier.statistics(params, shape_classifier.reference_images(num_reference))
    return shape_classifier.frechet(params, real, reference)


def load(results):
    if not os.path.isdir(results):
        return []
    names = [f for f in sorted(os.listdir(results)) if f.endswith(".json") and f.rsplit("_seed", 1)[0] in ARMS]
    return [json.load(open(os.path.join(results, f))) for f in names]  # not the SAD sweep's JSONs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--results", default=os.path.join(REPO, "docs", "results"))
    parser.add_argument("--workdir", default="workdir/study")
    parser.add_argument("--set", action="append", default=[], help="an override for every arm, e.g. total_steps=1000")
    parser.add_argument("--report", action="store_true", help="print the tables of the results present and exit")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"error: --arms: unknown {', '.join(unknown)}; expected some of {', '.join(ARMS)}")
    if not args.report:
        os.makedirs(args.results, exist_ok=True)
        for arm in arms:
            for seed in [int(s) for s in args.seeds.split(",")]:
                path = os.path.join(args.results, f"{arm}_seed{seed}.json")
                if os.path.exists(path):
                    print(f"{arm} seed {seed}: done ({path})", flush=True)
                    continue
                root = os.path.abspath(args.workdir)
                record = run(arm, seed, os.path.join(root, arm, f"seed{seed}"), args.set,
                             os.path.join(root, "shape_classifier.msgpack"))
                with open(f"{path}.tmp", "w") as f:
                    json.dump(record, f, indent=1, sort_keys=True)
                os.replace(f"{path}.tmp", path)
                print(f"{arm} seed {seed}: {record['minutes']:.2f} min -> {path}", flush=True)
    print(f"device of this process: {host.device()}")
    print(report(load(args.results)))
    classifier = os.path.join(os.path.abspath(args.workdir), "shape_classifier.msgpack")
    if os.path.exists(classifier):
        print(f"Fréchet distance of real renders of the held-out prompts (the metric's floor): "
              f"{frechet_floor(classifier):.3f}")


if __name__ == "__main__":
    main()
