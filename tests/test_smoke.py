"""The seconds-long smoke test (flax examples' style): train_and_evaluate for one step on the tiny config in this
process, then the train loop's evaluation of that step, without the CLI in between; and the session's compilation
cache policy that keeps that step from aborting."""

import json
import os

import jax
import numpy as np

import train_helpers as th
from dream_jax.training import train


def test_one_step_trains_checkpoints_and_evaluates(tmp_path):
    config = th.tiny_config(total_steps=1, checkpoint_every=1, eval_every=1, mesh__shape=(-1, 1, 1),
                            evals__zero_shot__num_images=32, evals__zero_shot__batch_size=32,
                            evals__linear_probe__enabled=False, evals__few_shot__enabled=False,
                            evals__alignment__enabled=False, evals__segmentation__enabled=False,
                            evals__depth__enabled=False, evals__finetune__enabled=False)
    workdir = str(tmp_path)
    state = train.train_and_evaluate(config, workdir)
    assert int(state.step) == 1
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["1"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert [r["step"] for r in logged] == [1] and np.isfinite(logged[0]["loss"])
    with open(os.path.join(workdir, "eval", "1.json")) as f:
        record = json.load(f)
    assert record["step"] == 1 and record["use_ema"] is True
    assert set(record["metrics"]) == {"zero_shot/top1", "zero_shot/top5", "zero_shot/chance"}


def test_only_one_device_processes_use_the_compilation_cache():
    """An 8-device executable read back from the persistent compilation cache could abort this module's train step
    (tests/conftest.py): the session's processes of several devices compile theirs."""
    assert jax.device_count() == 8 and not jax.config.jax_enable_compilation_cache
    assert th.subprocess_env()["JAX_ENABLE_COMPILATION_CACHE"] == "true"
    assert th.subprocess_env(devices=4)["JAX_ENABLE_COMPILATION_CACHE"] == "false"
    assert os.environ["JAX_COMPILATION_CACHE_DIR"]  # for the one-device subprocesses
