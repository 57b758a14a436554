"""`evaluate_workdir` (the `--mode=eval` job) on a tiny model trained here for 20 steps: every configured metric
reaches WORKDIR/eval/<step>.json, TensorBoard and the JSONL log; what a configured evaluator lacks (weights file,
dataset, a setting) is named before anything is restored."""

import json
import os

import ml_collections
import pytest

import train_helpers as th
from configs import common
from dream_jax.evaluation import run

STEPS = 20


def _small_evals():
    """The tiny config's evaluators at a size that runs in seconds."""
    return ml_collections.ConfigDict(dict(
        zero_shot=common.eval_settings("zero_shot", split="heldout", num_images=64, batch_size=32),
        linear_probe=common.eval_settings("linear_probe", test_split="heldout", num_train=256, num_test=128,
                                          steps=50, batch_size=64, train_batch_size=128, pooling="all"),
        few_shot=common.eval_settings("few_shot", split="heldout", num_images=256, batch_size=64, pooling="all",
                                      shots=2, queries=3, episodes=40),
        alignment=common.eval_settings("alignment", prompts="shapes", num_prompts=4),
    ))


def _config(**extra):
    c = th.tiny_config(total_steps=STEPS, checkpoint_every=STEPS, log_every=STEPS, **extra)
    c.sampling.update(dict(num_iter=4, sad_step=2, num_candidates=2, batch_size=8))
    c.diffusion.sampling_steps = 5
    c.evals = _small_evals()
    return c


@pytest.fixture(scope="module")
def trained(pytestconfig, tmp_path_factory):
    """A workdir trained for STEPS steps by `python -m dream_jax.main` on one device; the train step is the one
    tests/test_train_loop.py compiles, so the two share the persistent compilation cache."""
    env = th.subprocess_env(pytestconfig.cache.mkdir("jax_compilation_cache"))
    workdir = tmp_path_factory.mktemp("eval_run") / "run"
    code, out = th.run(th.main_args(workdir, total_steps=STEPS, checkpoint_every=STEPS), env,
                       workdir.parent / "log.txt")
    assert code == 0, out
    return _config(), str(workdir)


EXPECTED = {
    "zero_shot": ["top1", "top5", "chance"],
    "linear_probe": ["top1", "top5", "best_lr", "best_l2", "holdout_top1", "chance"],
    "few_shot": ["accuracy", "ci95", "episodes", "chance"],
    "alignment": [f"{mode}/{m}" for mode in ("sad", "plain") for m in
                  ["own_score", "oracle_shape", "oracle_color", "oracle_position", "oracle_size",
                   "oracle_shape_color", "oracle_all"]],
}


def test_evaluate_workdir_writes_every_configured_metric(trained, capsys):
    config, workdir = trained
    metrics = run.evaluate_workdir(config, workdir)
    names = {f"{name}/{m}" for name, ms in EXPECTED.items() for m in ms}
    assert set(metrics) == names
    record = json.load(open(os.path.join(workdir, "eval", f"{STEPS}.json")))
    assert record["step"] == STEPS and record["use_ema"] is True and set(record["metrics"]) == names
    assert set(record["seconds"]) == set(EXPECTED) and record["evals"]["few_shot"]["shots"] == 2
    for name, value in metrics.items():
        assert value == value, name  # no NaN
    assert 0 <= metrics["zero_shot/top1"] <= 1 and metrics["zero_shot/chance"] == pytest.approx(1 / 28)
    assert -1 <= metrics["alignment/sad/own_score"] <= 1
    logged = [json.loads(line) for line in open(os.path.join(workdir, "eval", "metrics.jsonl"))]
    assert logged[-1]["step"] == STEPS and set(logged[-1]) == names | {"step"}
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "eval", "tensorboard")))
    cache = os.path.join(workdir, "eval", "features", f"step{STEPS}_ema")
    assert sorted(os.listdir(cache)) == ["shapes-shape_color_heldout_128_32_seed0_all.npz",
                                        "shapes-shape_color_heldout_256_32_seed0_all.npz",
                                        "shapes-shape_color_train_256_32_seed0_all.npz"]
    table = capsys.readouterr().out
    assert f"evaluation at step {STEPS} (EMA weights)" in table and "few_shot/ci95" in table

    # The cached features give the probe and few-shot the same numbers again without the encoder.
    config.evals = ml_collections.ConfigDict({k: _small_evals()[k] for k in ("linear_probe", "few_shot")})
    again = run.evaluate_workdir(config, workdir)
    for k, v in again.items():
        assert v == pytest.approx(metrics[k]), k
    assert "from the cache" in capsys.readouterr().out


@pytest.mark.parametrize("evals,message", [
    (dict(fid=common.eval_settings("fid", prompts="shapes", reference="shapes", inception_weights="/no/such.pth")),
     "config.evals.fid.inception_weights='/no/such.pth' does not exist; provide a local copy of the standard FID "
     "Inception weights"),
    (dict(fid=common.eval_settings("fid", prompts="shapes", reference="shapes")),
     "config.evals.fid.inception_weights is not set"),
    (dict(probe=common.eval_settings("linear_probe", dataset="cifar10", data_dir="DATA_DIR")),
     "config.evals.probe.dataset='cifar10' split 'train' is not prepared as ArrayRecord: prepare it once with "
     "`tfds build cifar10 --file_format=array_record --data_dir=DATA_DIR`"),
    (dict(zero_shot=dict(dataset="shapes", num_imagez=3)), "config.evals.zero_shot has unknown settings ['num_imagez']"),
    (dict(mystery=dict(dataset="shapes")), "config.evals.mystery: unknown evaluator kind 'mystery'"),
    (dict(align=common.eval_settings("alignment", prompts="/no/prompts.txt")),
     "config.evals.align.prompts='/no/prompts.txt' does not exist"),
])
def test_missing_inputs_are_named_before_restoring(evals, message, tmp_path):
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    message = message.replace("DATA_DIR", str(data_dir))
    for settings in evals.values():
        if settings.get("data_dir") == "DATA_DIR":
            settings["data_dir"] = str(data_dir)
    config = _config()
    config.evals = ml_collections.ConfigDict(evals)
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        run.evaluate_workdir(config, str(tmp_path / "empty_workdir"))  # no checkpoint: validation comes first
    assert message in str(info.value)
    assert not (tmp_path / "empty_workdir").exists()


def test_periodic_evaluation_runs_every_n_steps():
    config = _config()
    config.eval_every = 0
    assert run.maybe_evaluate(config, "unused", 10, None, None, None, None) is None
    config.eval_every = 4
    assert run.maybe_evaluate(config, "unused", 10, None, None, None, None) is None
