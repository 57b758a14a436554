"""benchmarks/study.py: every arm's overrides make a valid config that differs from DREAM's where the arm says,
the report aggregates seeds per arm and leaves out what an arm cannot measure, and finished runs are skipped."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import study  # noqa: E402
import train_tiny  # noqa: E402
from configs import dream_tiny
from dream_jax import base_config  # noqa: E402
from dream_jax.training import masking, train  # noqa: E402


def _config(arm):
    config = dream_tiny.get_config()
    for assignment in study.ARMS[arm]:
        base_config.apply_override(config, assignment)
    return config


@pytest.mark.parametrize("arm", list(study.ARMS))
def test_every_arm_is_a_valid_config(arm):
    train.validate_config(_config(arm))


def test_arms_differ_from_dream_as_named():
    import jax

    def ratios(arm, step):
        config = _config(arm)
        config.masking.num_groups = 512  # many draws of the step's distribution
        return np.asarray(masking.sample_mask_ratios(jax.random.key(0), step, config))

    assert abs(ratios("dream", 0).mean() - 0.45 * np.sqrt(2 / np.pi)) < 0.03  # warmup: half-normal at mu=0
    assert ratios("no_warmup", 0).min() >= 0.7  # MAR's [0.7, 1] from step 0
    np.testing.assert_array_equal(ratios("fixed_low", 2000), 0.25)
    np.testing.assert_array_equal(ratios("clip_only", 2000), 0.0)
    assert _config("fixed_low").loss.min_masked_for_gen == 0.0  # else 0.25 masking gates generation off
    assert _config("clip_only").loss.gen_weight == 0.0 and _config("fluid").loss.clip_weight == 0.0


def _record(arm, seed, value, frechet=None):
    final = {"zero_shot/top1": value}
    early = {"linear_probe/top1": value, "few_shot/accuracy": value}
    for a in train_tiny.ATTRIBUTES:
        final[f"alignment/plain/oracle_{a}"] = final[f"alignment/sad/oracle_{a}"] = value
        if a != "shape_color":
            final[f"alignment/plain/kl_{a}"] = value
        early[f"alignment/sad/oracle_{a}"] = early[f"alignment/rerank/oracle_{a}"] = value
    if frechet is not None:  # records written before the Fréchet distance have none
        final["alignment/plain/frechet"] = final["alignment/sad/frechet"] = frechet
        early["alignment/sad/frechet"] = early["alignment/rerank/frechet"] = frechet
    return {"arm": arm, "seed": seed, "minutes": 1.0, "final": final, "eval": early}


def test_report_is_mean_and_std_over_seeds_without_what_an_arm_cannot_measure():
    records = [_record("dream", 0, 0.5), _record("dream", 1, 0.7), _record("fluid", 0, 0.9),
               _record("clip_only", 0, 0.3)]
    text = study.report(records)
    assert "| dream | 2 | 1.000 +- 0.000 | 0.600 +- 0.100 | 0.600 +- 0.100 | 0.600 +- 0.100 |" in text
    fluid = [line.split(" | ") for line in text.splitlines() if line.startswith("| fluid |")]
    assert fluid[0][3] == ""  # no zero-shot without a text tower
    assert sum(cell.startswith("0.900") for cell in fluid[1]) == 3  # plain only: shape_color, position, size
    dream = [line for line in text.splitlines() if line.startswith("| dream |")]
    assert dream[1].count("0.600 +- 0.100") == 12  # plain, SAD at two T_c and best-of-5, for three attributes
    # No generator: clip_only has a representation row and no generation or distribution row.
    assert len([line for line in text.splitlines() if line.startswith("| clip_only |")]) == 1
    assert len(fluid) == 3 and fluid[2][2:6] == ["0.900 +- 0.000"] * 3 + ["0.900 +- 0.000 |"]


def test_frechet_columns_count_the_seeds_that_measured_them():
    records = [_record("dream", 0, 0.5, frechet=2.0), _record("dream", 1, 0.7), _record("fluid", 0, 0.9, 4.0)]
    lines = study.report(records).splitlines()
    frechet = lines[lines.index(next(line for line in lines if line.startswith("| arm | seeds | Frechet"))):]
    dream = next(line for line in frechet if line.startswith("| dream |")).split(" | ")
    assert dream[2:6] == ["2.000 +- 0.000 (n=1)"] * 3 + ["2.000 +- 0.000 (n=1) |"]
    fluid = next(line for line in frechet if line.startswith("| fluid |")).split(" | ")
    assert fluid[2] == "4.000 +- 0.000" and fluid[3:] == ["", "", " |"]  # no SAD scorer: plain only

def test_finished_runs_are_skipped_and_unknown_arms_are_one_line_errors(tmp_path):
    for seed in (0, 1):
        (tmp_path / f"dream_seed{seed}.json").write_text(json.dumps(_record("dream", seed, 0.5)))
    script = os.path.join(REPO, "benchmarks", "study.py")
    out = subprocess.run([sys.executable, script, "--arms=dream", "--seeds=0,1", f"--results={tmp_path}"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dream seed 0: done" in out.stdout and "dream seed 1: done" in out.stdout
    assert "| dream | 2 |" in out.stdout
    bad = subprocess.run([sys.executable, script, "--arms=dream,mae"], capture_output=True, text=True, cwd=REPO,
                         timeout=120)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == (
        "error: --arms: unknown mae; expected some of dream, no_warmup, fixed_low, clip_only, fluid")


def test_train_tiny_paired_table_pools_the_seeds_counts():
    def metrics(gained, lost):
        return {f"alignment/sad_vs_plain/{a}_{k}": v for a in train_tiny.ATTRIBUTES
                for k, v in (("gained", gained), ("lost", lost))}

    lines = train_tiny.paired_table({0: (1, {}, metrics(3.0, 0.0)), 1: (1, {}, metrics(1.0, 1.0))}).splitlines()
    assert lines[2] == "| 0 |" + " +3 -0 (0.25) |" * len(train_tiny.ATTRIBUTES)
    assert lines[4] == "| pooled |" + " +4 -1 (0.38) |" * len(train_tiny.ATTRIBUTES)  # 2 x 6 / 32
