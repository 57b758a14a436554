"""docs/RESULTS.md's plots, from the JSONs that benchmarks/study.py and benchmarks/sad_sweep.py wrote.

    python benchmarks/study_plots.py [--results=docs/results]

Writes into the results folder:
  arms.png       one panel per metric (zero-shot, linear probe, few-shot, plain shape & colour, plain position,
                 plain Fréchet distance): mean over seeds per arm, the seeds as dots; an arm that cannot measure a
                 metric has no bar.
  curves.png     metrics against training step (benchmarks/study_curves.py's JSONs): the training log's mean masking
                 ratio, then zero-shot, linear probe, plain shape & colour, plain position and plain Fréchet
                 distance at each evaluation; one colour per arm, each seed a thin line, their mean a thick one.
  sad_sweep.png  shape & colour alignment against cost, per image, in matmul FLOPs and in wall milliseconds: SAD as one
                 line per K through its T_c values, best-of-K reranking as one line through K, plain decoding as
                 a dashed level (the mean over the sweep files present, one per seed).

Dimension letters: none (scalars).
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import study  # noqa: E402

CURVE_METRICS = (("zero-shot", "zero_shot/top1"), ("linear probe", "linear_probe/top1"),
                 ("shape_color plain", "alignment/plain/oracle_shape_color"),
                 ("position plain", "alignment/plain/oracle_position"), ("Frechet plain", "alignment/plain/frechet"))
ARM_METRICS = ("zero-shot", "linear probe", "few-shot 5x5", "shape_color plain", "position plain", "Frechet plain")


def plot_arms(records, path):
    """Bars of ARM_METRICS per arm (mean over seeds) with each seed as a dot; returns the path."""
    arms = [a for a in study.ARMS if any(r["arm"] == a for r in records)]
    cols = {a: [study.columns(r) for r in records if r["arm"] == a] for a in arms}
    fig, axes = plt.subplots(1, len(ARM_METRICS), figsize=(3.2 * len(ARM_METRICS), 3.4))
    for ax, metric in zip(axes, ARM_METRICS):
        for i, arm in enumerate(arms):
            values = [c[metric] for c in cols[arm] if metric in c]
            if values:
                ax.bar(i, np.mean(values), color=f"C{i}", alpha=0.6)
                ax.plot([i] * len(values), values, "k.", markersize=4)
        ax.set_xticks(range(len(arms)), arms, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve_points(curve, key):
    """([steps], [values]) of one evaluation metric of a study_curves record, in step order."""
    steps = sorted((int(s) for s, m in curve["eval"].items() if key in m))
    return steps, [curve["eval"][str(s)][key] for s in steps]


def plot_curves(curves, path):
    """The masking ratio and CURVE_METRICS against training step, per arm: seeds thin, their mean thick; returns
    the path."""
    arms = [a for a in study.ARMS if any(c["arm"] == a for c in curves)]
    fig, axes = plt.subplots(1, 1 + len(CURVE_METRICS), figsize=(3.2 * (1 + len(CURVE_METRICS)), 3.4))
    for i, arm in enumerate(arms):
        runs = [c for c in curves if c["arm"] == arm]
        for run in runs:
            steps, ratios = zip(*run["train"]["mask_ratio_mean"])
            axes[0].plot(steps, ratios, color=f"C{i}", linewidth=1, label=arm if run is runs[0] else None)
        for ax, (_, key) in zip(axes[1:], CURVE_METRICS):
            points = [curve_points(run, key) for run in runs]
            for steps, values in points:
                ax.plot(steps, values, color=f"C{i}", linewidth=0.7, alpha=0.5)
            if points and all(p[0] == points[0][0] for p in points) and points[0][0]:
                ax.plot(points[0][0], np.mean([p[1] for p in points], axis=0), "o-", color=f"C{i}", linewidth=2,
                        markersize=3, label=f"{arm} ({len(runs)} seed{'s' * (len(runs) > 1)})")
    for ax, title in zip(axes, ["mean masking ratio (training batches)"] + [t for t, _ in CURVE_METRICS]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sweep_points(sweeps, method, k=None):
    """[(flops, seconds, shape & colour)] of one method (and K), in the sweep's order, averaged over the sweeps."""
    keyed = {}
    for sweep in sweeps:
        for row in sweep["rows"]:
            if row["method"] == method and (k is None or row["k"] == k):
                keyed.setdefault((row["k"], row["tc"]), []).append(
                    (row["flops"], row["seconds"], row["oracle_shape_color"]))
    return [tuple(np.mean(v, axis=0)) for v in keyed.values()]


def plot_sweep(sweeps, path):
    """Shape & colour alignment vs GFLOPs and vs seconds per image: SAD per K, best-of-K, plain; returns the path."""
    num = sweeps[0]["num_prompts"]
    ks = sorted({row["k"] for s in sweeps for row in s["rows"] if row["method"] == "sad"})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, index, label in ((axes[0], 0, "GFLOPs per image"), (axes[1], 1, "milliseconds per image (this process)")):
        scale = 1e-9 if index == 0 else 1e3 / num
        plain = sweep_points(sweeps, "plain")[0]
        ax.axhline(plain[2], color="gray", linestyle="--", label="plain")
        ax.plot([plain[index] * scale], [plain[2]], "D", color="gray")
        for i, k in enumerate(ks):
            pts = sweep_points(sweeps, "sad", k)
            ax.plot([p[index] * scale for p in pts], [p[2] for p in pts], "o-", color=f"C{i}",
                    label=f"SAD K={k} (T_c up)")
        rerank = sweep_points(sweeps, "rerank")
        ax.plot([p[index] * scale for p in rerank], [p[2] for p in rerank], "s--k", label="best-of-K (K up)")
        ax.set_xlabel(label)
        ax.set_ylabel("shape & colour match (oracle)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"SAD vs reranking, {num} held-out prompts, {len(sweeps)} seed(s)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_prefixed(results, prefix):
    """The JSONs in `results` whose names start with `prefix` (the sweep's or the curves'), in name order."""
    if not os.path.isdir(results):
        return []
    names = sorted(f for f in os.listdir(results) if f.startswith(prefix) and f.endswith(".json"))
    return [json.load(open(os.path.join(results, f))) for f in names]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=os.path.join(study.REPO, "docs", "results"))
    args = parser.parse_args()
    records, sweeps = study.load(args.results), load_prefixed(args.results, "sad_sweep_seed")
    curves = load_prefixed(args.results, "curve_")
    if not records and not sweeps and not curves:
        raise SystemExit(f"error: --results={args.results!r} holds no study, sweep or curve JSONs; run "
                         "benchmarks/study.py")
    if records:
        print("wrote", plot_arms(records, os.path.join(args.results, "arms.png")))
    if curves:
        print("wrote", plot_curves(curves, os.path.join(args.results, "curves.png")))
    if sweeps:
        print("wrote", plot_sweep(sweeps, os.path.join(args.results, "sad_sweep.png")))


if __name__ == "__main__":
    main()
