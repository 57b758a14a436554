"""evaluation/paper_table: every column of the paper's table gets a line: the run's value where an evaluator of its
kind ran (percent for accuracies), how to switch it on where the config has it off, and a hint where it has none."""

import ml_collections

from configs import dream_tiny
from dream_jax.evaluation import paper_table, registry


def _config(evals):
    return ml_collections.ConfigDict(dict(evals=evals))


def test_every_column_has_a_line_with_the_runs_value_or_how_to_get_one():
    config = _config(dict(
        linear_probe=registry.settings("linear_probe", dataset="imagenet2012"),
        probe_b=registry.settings("linear_probe", dataset="cifar10"),
        fid=registry.settings("fid", enabled=False),
        clip_score=registry.settings("clip_score"),
    ))
    metrics = {"linear_probe/top1": 0.5234, "probe_b/top1": 0.9, "clip_score/clip_score": 30.123}
    rows = {title: (paper, text) for title, paper, text in paper_table.rows(config, metrics)}
    assert len(rows) == 7
    assert rows["ImageNet linear probe top-1 (%)"] == (72.7, "52.3 (linear_probe on imagenet2012); 90.0 (probe_b on cifar10)")
    assert rows["CC12M FID"][1] == ("off: --config.evals.fid.enabled=True with inception_weights, prompts and "
                                    "reference")
    assert rows["CLIP Score"] == (30.1, "30.123 (clip_score)")
    assert rows["few-shot 5-way 5-shot (%)"][1] == "not configured (add a few_shot entry to config.evals)"


def test_tiny_config_configures_all_seven_columns():
    config = dream_tiny.get_config()
    text = paper_table.format_rows(config, {})
    assert len(text.splitlines()) == 2 + 7
    assert "not configured" not in text
