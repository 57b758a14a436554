"""The end-of-training report's settings and summary (evaluation/report.py); test_learning.py runs it for real."""

import pytest

from configs import dream_tiny
from dream_jax import runtime
from dream_jax.evaluation import report

METRICS = {"zero_shot/top1": 0.98, "zero_shot/top5": 1.0, "zero_shot/chance": 1 / 28,
           **{f"alignment/{mode}/oracle_{a}": 0.5 + 0.1 * (mode == "sad")
              for mode in ("plain", "sad") for a in ("shape", "color", "position", "size", "shape_color", "all")},
           **{f"alignment/sad_vs_plain/{a}_{k}": v for a in ("shape", "color", "position", "size", "shape_color", "all")
              for k, v in (("gained", 30.0), ("lost", 4.0), ("p", 4.5e-6))},
           "alignment/plain/own_score": 0.3}


def test_summary_lists_zero_shot_and_each_attribute_plain_and_sad_with_chance_and_their_paired_counts():
    text = report.summary(3000, 420.0, METRICS, grid="W/samples/grid.png", report_seconds=45.0)
    lines = text.splitlines()
    assert lines[0] == "summary after 3000 steps (training 7.0 min wall, compilation included, this report 0.8 min)"
    assert "  zero_shot: top-1 0.980 (chance 0.036)" in lines
    assert ("  alignment: samples matching the prompt, plain / sad (chance); sad vs plain: samples gained / lost, "
            "McNemar p") in lines
    assert "    shape        0.500 / 0.600  (0.250)  +30 -4 p=0.00" in lines
    assert "    shape_color  0.500 / 0.600  (0.036)  +30 -4 p=0.00" in lines
    assert lines[-1] == "  sample grid: W/samples/grid.png"
    assert not any("own_score" in line or " all " in line for line in lines)


def test_final_config_enables_only_the_named_evaluators():
    config = dream_tiny.get_config()
    config.evals.alignment.enabled = False
    out = report.final_config(config)
    assert set(out.evals) == {"zero_shot", "alignment"} and out.evals.alignment.enabled
    assert not config.evals.alignment.enabled  # the caller's config is left alone


@pytest.mark.parametrize("field, value, message", [
    ("final_evals", ("zero_shot", "fidd"), r"config\.final_evals names \['fidd'\], which config\.evals lacks"),
    ("final_samples", -1, r"config\.final_samples=-1 must be >= 0"),
])
def test_bad_report_settings_raise_one_clear_error(field, value, message):
    config = dream_tiny.get_config()
    config[field] = value
    with pytest.raises(ValueError, match=message):
        report.validate(config)


def test_nothing_to_report_does_nothing(capsys):
    config = dream_tiny.get_config()
    config.final_samples, config.final_evals = 0, ()
    assert report.run(runtime.Runtime(config, None, None, None), "unused", None, 1, 1.0) == ({}, None)
    assert capsys.readouterr().out == ""


def test_summary_without_paired_counts_lists_rates_only():
    metrics = {k: v for k, v in METRICS.items() if "_vs_plain/" not in k}
    lines = report.summary(3000, 420.0, metrics).splitlines()
    assert "  alignment: samples matching the prompt, plain / sad (chance)" in lines
    assert "    shape        0.500 / 0.600  (0.250)" in lines
