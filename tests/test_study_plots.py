"""benchmarks/study_plots.py: the sweep's points average over seeds per setting, curves are in step order, and
every figure is written."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
sys.path.insert(0, os.path.join(REPO, "tests"))

import study_plots  # noqa: E402
from test_study import _record  # noqa: E402


def _sweep(offset):
    rows = [{"method": "plain", "k": 1, "tc": 0, "flops": 1e9, "seconds": 2.0, "oracle_shape_color": 0.5 + offset}]
    for k in (2, 5):
        rows += [{"method": "sad", "k": k, "tc": tc, "flops": (1 + 0.1 * k * tc) * 1e9, "seconds": 2.0 + tc,
                  "oracle_shape_color": 0.6 + offset} for tc in (1, 2)]
        rows.append({"method": "rerank", "k": k, "tc": 0, "flops": k * 1e9, "seconds": 2.0 * k,
                     "oracle_shape_color": 0.7 + offset})
    return {"num_prompts": 64, "rows": rows}


def test_sweep_points_are_means_over_seeds_in_sweep_order():
    points = study_plots.sweep_points([_sweep(0.0), _sweep(0.1)], "sad", 5)
    assert points == [pytest.approx((1.5e9, 3.0, 0.65)), pytest.approx((2.0e9, 4.0, 0.65))]
    assert [p[0] for p in study_plots.sweep_points([_sweep(0.0)], "rerank")] == [2e9, 5e9]


def _curve(arm, seed, offset):
    evals = {str(step): {"zero_shot/top1": 0.1 * step / 600 + offset, "alignment/plain/frechet": 5.0}
             for step in (600, 1200, 1800)}
    return {"arm": arm, "seed": seed, "eval": evals, "train": {"mask_ratio_mean": [[50, 0.1], [100, 0.2]]}}


def test_curve_points_are_in_step_order_and_skip_missing_metrics():
    curve = _curve("dream", 0, 0.0)
    curve["eval"]["300"] = {"alignment/plain/frechet": 9.0}  # no zero-shot at this step
    steps, values = study_plots.curve_points(curve, "zero_shot/top1")
    assert steps == [600, 1200, 1800] and values == pytest.approx([0.1, 0.2, 0.3])
    assert study_plots.curve_points(curve, "alignment/plain/frechet")[0] == [300, 600, 1200, 1800]


def test_figures_are_written(tmp_path):
    records = [_record("dream", 0, 0.5, frechet=2.0), _record("dream", 1, 0.7), _record("clip_only", 0, 0.3)]
    curves = [_curve("dream", 0, 0.0), _curve("dream", 1, 0.1), _curve("no_warmup", 0, 0.0)]
    for path in (study_plots.plot_arms(records, str(tmp_path / "arms.png")),
                 study_plots.plot_sweep([_sweep(0.0)], str(tmp_path / "sad_sweep.png")),
                 study_plots.plot_curves(curves, str(tmp_path / "curves.png"))):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 10_000
