"""The finetune evaluator and the linear probe's "mae" protocol end to end on the shrunken tiny config (random
weights, the synthetic shapes, 8 CPU devices): fine-tuning beats its start, a run stopped by `stop_after` and
rerun ends bit-identical to an uninterrupted one, the MAE probe trains and tests, and bad settings fail in one line
naming the setting.

Dimension letters: B batch, K classes.
"""

import dataclasses
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

import train_helpers as th
from dream_jax import runtime, state
from dream_jax.data import eval_sources
from dream_jax.evaluation import finetune, interface, linear_probe, registry, run, trainer

# 256 train images in batches of 32 (4 per device): 8 steps an epoch, 16 steps in all.
FINETUNE = dict(test_split="heldout", num_train=256, num_test=128, batch_size=32, epochs=2, warmup_epochs=0.5,
                base_lr=0.05, mixup=0.0, cutmix=0.0, checkpoint_every=3)  # mixing slows a 16-step start down


@pytest.fixture(scope="module")
def context():
    config = th.tiny_config()
    variables = th.random_like(state.abstract_variables(config), 0)  # an encoder with signal in every layer
    return interface.make_context(runtime.create(config), "", variables, 0, True, log=lambda *_: None)


def _settings(kind, **overrides):
    return ml_collections.ConfigDict(registry.settings(kind, **overrides))


def _final_state(ctx, name, s, step):
    path = os.path.join(trainer.run_dir(ctx, name, s), "checkpoints", str(step), "state")
    return ocp.StandardCheckpointer().restore(path)


def test_finetune_learns_and_a_stopped_run_resumes_bit_exactly(context, tmp_path):
    s = _settings("finetune", **FINETUNE)
    whole = dataclasses.replace(context, workdir=str(tmp_path / "whole"))
    metrics = finetune.run(whole, "finetune", s)
    assert metrics["steps"] == 16 and metrics["epochs"] == 2 and metrics["chance"] == 1 / 28

    # The start: the initial head on the untrained encoder predicts close to one class.
    test_source = eval_sources.evaluator_source(context.config, "finetune", s, s.test_split, s.num_test)
    params = {"encoder": context.predict.encoder.params,
              **finetune.init_head(jax.random.key(s.seed), context.config.model.width, 28)}
    logits, labels = trainer.predict_source(whole, test_source, lambda i, x: finetune._test_logits(
        context.predict.encoder.encode, s.pooling, params, context.predict.encoder.frozen, i, x), s.batch_size)
    start = linear_probe.accuracy(logits, labels, 28)["top1"]
    assert metrics["top1"] > start + 0.05 and metrics["top1"] > 2 / 28, (start, metrics)

    split = dataclasses.replace(context, workdir=str(tmp_path / "split"))
    s.stop_after = 5  # killed after step 5 (checkpointed at 3 and 5)
    assert finetune.run(split, "finetune", s) == {"steps": 5.0, "epochs": 5 / 8}
    s.stop_after = 0
    assert finetune.run(split, "finetune", s) == metrics
    th.assert_trees_equal(_final_state(split, "finetune", s, 16), _final_state(whole, "finetune", s, 16))


def test_a_run_is_named_by_what_it_computes(context):
    """Other settings start another run; how often it checkpoints or where it stops resumes the same one."""
    s = _settings("finetune", **FINETUNE)
    same = trainer.run_dir(context, "finetune", s)
    for key, value in (("stop_after", 3), ("checkpoint_every", 7), ("enabled", False)):
        assert trainer.run_dir(context, "finetune", _settings("finetune", **{**FINETUNE, key: value})) == same
    for key, value in (("base_lr", 1e-3), ("seed", 1), ("num_train", 64)):
        assert trainer.run_dir(context, "finetune", _settings("finetune", **{**FINETUNE, key: value})) != same


def test_the_mae_linear_probe_trains_and_tests(context, tmp_path):
    s = _settings("linear_probe", protocol="mae", test_split="heldout", num_train=256, num_test=128,
                  mae_batch_size=32, epochs=1, warmup_epochs=0.25)
    metrics = linear_probe.run(dataclasses.replace(context, workdir=str(tmp_path)), "linear_probe", s)
    assert metrics["steps"] == 8 and metrics["epochs"] == 1
    assert set(metrics) == {"top1", "top5", "chance", "epochs", "steps"}
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    state_ = _final_state(dataclasses.replace(context, workdir=str(tmp_path)), "linear_probe", s, 8)
    assert np.all(np.asarray(state_["bn"]["var"]) > 0) and not np.allclose(state_["bn"]["mean"], 0)


@pytest.mark.parametrize("kind,setting,value,message", [
    ("linear_probe", "protocol", "lars", "config.evals.x.protocol='lars'; expected one of ('fast', 'mae')"),
    ("linear_probe", "mae_batch_size", 1, "config.evals.x.mae_batch_size=1"),
    ("finetune", "pooling", "cls", "config.evals.x.pooling='cls'"),
    ("finetune", "layer_decay", 1.5, "config.evals.x.layer_decay=1.5"),
    ("finetune", "warmup_epochs", 200.0, "config.evals.x.warmup_epochs=200.0"),
    ("finetune", "interpolation", "nearest", "config.evals.x.interpolation='nearest'"),
    ("finetune", "crop_min_scale", 0.0, "config.evals.x.crop_min_scale=0.0"),
])
def test_bad_settings_fail_in_one_line_naming_them(kind, setting, value, message):
    config = th.tiny_config()
    extra = {"protocol": "mae"} if kind == "linear_probe" and setting != "protocol" else {}
    config.evals = ml_collections.ConfigDict({"x": registry.settings(kind, **{setting: value, **extra})})
    with pytest.raises(ValueError) as error:
        run.validate(config)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("batch_size,message", [(512, "config.evals.finetune.batch_size=512 is larger than the 256"),
                                                (12, "config.evals.finetune.batch_size=12 does not split over")])
def test_a_batch_that_cannot_train_is_named(context, tmp_path, batch_size, message):
    s = _settings("finetune", **{**FINETUNE, "batch_size": batch_size})
    with pytest.raises(ValueError, match=message):
        finetune.run(dataclasses.replace(context, workdir=str(tmp_path)), "finetune", s)
