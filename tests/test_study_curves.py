"""benchmarks/study_curves.py: its overrides make a valid config that evaluates in the loop and skips the final
report, a run's files become one curve record, and a bad --every is refused before anything trains."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import study_curves  # noqa: E402
from configs import dream_tiny
from dream_jax import base_config  # noqa: E402
from dream_jax.evaluation import registry  # noqa: E402
from dream_jax.evaluation import report  # noqa: E402
from dream_jax.training import train  # noqa: E402


@pytest.mark.parametrize("arm", ["dream", "no_warmup"])
def test_overrides_evaluate_in_the_loop_and_skip_the_report(arm, tmp_path):
    config = dream_tiny.get_config()
    for assignment in study_curves.flags(arm, 600, ["total_steps=1200"], str(tmp_path / "c.msgpack")):
        base_config.apply_override(config, assignment)
    train.validate_config(config)
    report.validate(config)
    assert config.eval_every == 600 and config.total_steps == 1200
    assert config.final_evals == () and config.final_samples == 0  # the last step's record is the loop's
    assert config.evals.alignment.modes == ("plain",)
    assert sorted(name for name, _ in registry.enabled(config)) == [
        "alignment", "few_shot", "linear_probe", "zero_shot"]
    assert (config.masking.kind == "mar") == (arm == "no_warmup")


def test_every_must_divide_the_total_steps():
    assert study_curves.check_every(320, []) == 1920
    assert study_curves.check_every(100, ["total_steps=1200"]) == 1200
    for every, extra in ((700, []), (0, []), (600, ["total_steps=1000"])):
        with pytest.raises(ValueError, match="positive divisor of total_steps"):
            study_curves.check_every(every, extra)


def test_bad_every_is_a_one_line_error_before_training(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/study_curves.py", "--every=7", f"--workdir={tmp_path}",
                          f"--results={tmp_path}"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["error: --every=7 must be a positive divisor of total_steps=1920"]
    assert os.listdir(tmp_path) == []


def test_curve_reads_the_evaluations_and_the_training_log(tmp_path):
    os.makedirs(tmp_path / "eval")
    with open(tmp_path / "eval" / "metrics.jsonl", "w") as f:
        for step, value in ((600, 0.5), (1200, 0.9)):
            f.write(json.dumps({"step": step, "zero_shot/top1": value, "alignment/plain/frechet": 10 * value,
                                "alignment/plain/own_score": 1.0}) + "\n")
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in (50, 100):
            f.write(json.dumps({"step": step, "mask_ratio_mean": step / 100, "clip_loss": 1.0, "lr": 0.1}) + "\n")
    curve = study_curves.curve(str(tmp_path))
    assert curve["eval"] == {"600": {"zero_shot/top1": 0.5, "alignment/plain/frechet": 5.0},
                             "1200": {"zero_shot/top1": 0.9, "alignment/plain/frechet": 9.0}}
    assert curve["train"] == {"mask_ratio_mean": [[50, 0.5], [100, 1.0]], "clip_loss": [[50, 1.0], [100, 1.0]],
                              "gen_loss": []}
