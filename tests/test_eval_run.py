"""`evaluate_workdir` (the `--mode=eval` job) on a workdir of the shrunken tiny config: every configured metric
reaches WORKDIR/eval/<step>.json, TensorBoard and the JSONL log; what a configured evaluator lacks (weights file,
dataset, a setting) is named before anything is restored; `maybe_evaluate` is the train loop's periodic hook."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

import train_helpers as th
from dream_jax import checkpoint, runtime, sharding, state
from dream_jax.evaluation import registry, run, shape_classifier


STEPS = 20


def _small_evals():
    """The tiny config's evaluators at a size that runs in seconds."""
    return ml_collections.ConfigDict(dict(
        zero_shot=registry.settings("zero_shot", split="heldout", num_images=64, batch_size=32),
        linear_probe=registry.settings("linear_probe", test_split="heldout", num_train=256, num_test=128,
                                       steps=50, batch_size=64, train_batch_size=128, pooling="all"),
        few_shot=registry.settings("few_shot", split="heldout", num_images=256, batch_size=64, pooling="all",
                                   shots=2, queries=3, episodes=40),
        alignment=registry.settings("alignment", prompts="shapes", num_prompts=4, num_reference=16),
        segmentation=registry.settings("segmentation", num_train=32, num_test=16, steps=10, train_batch_size=8,
                                       batch_size=16),
        depth=registry.settings("depth", num_train=32, num_test=16, steps=10, train_batch_size=8, batch_size=16,
                                bins=8),
    ))


def _config(**extra):
    c = th.tiny_config(total_steps=STEPS, checkpoint_every=STEPS, log_every=STEPS, **extra)
    c.sampling.update(dict(num_iter=4, sad_step=2, num_candidates=2, batch_size=8))
    c.diffusion.sampling_steps = 5
    c.evals = _small_evals()
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir holding a checkpoint at step STEPS, as a run of the shrunken tiny config leaves it.

    The state is the initial one saved directly: compiling the train step would cost this file half its time
    budget, the evaluators do not care whether the weights learned (test_learning.py checks that they do), and
    tests/test_train_loop.py covers the workdirs that training writes.
    """
    workdir = str(tmp_path_factory.mktemp("eval_run") / "run")
    config = _config()
    # A cheap classifier for the alignment evaluator's Fréchet distance (test_shape_classifier.py checks one
    # trained further).
    config.evals.alignment.classifier = os.path.join(os.path.dirname(workdir), "shape_classifier.msgpack")
    shape_classifier.load_or_train(config.evals.alignment.classifier, steps=2, width=4)
    st = state.create_state(config, sharding.make_mesh(config, jax.devices()[:1]))  # restored onto 8 below
    manager = checkpoint.Manager(workdir, config)
    manager.save(STEPS, st.replace(step=st.step + STEPS))
    manager.close()
    return config, workdir


EXPECTED = {
    "zero_shot": ["top1", "top5", "chance"],
    "linear_probe": ["top1", "top5", "best_lr", "best_l2", "holdout_top1", "chance"],
    "few_shot": ["accuracy", "ci95", "episodes", "chance"],
    "alignment": [f"{mode}/{m}" for mode in ("sad", "plain") for m in
                  ["own_score", "oracle_shape", "oracle_color", "oracle_position", "oracle_size",
                   "oracle_shape_color", "oracle_all", "kl_shape", "kl_color", "kl_position", "kl_size", "frechet"]]
    + [f"sad_vs_plain/{a}_{k}" for a in ("shape", "color", "position", "size", "shape_color", "all")
       for k in ("gained", "lost", "p")],
    "segmentation": ["miou", "pixel_accuracy", "classes"],
    "depth": ["rmse", "abs_rel", "log10", "delta1", "delta2", "delta3", "images"],
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
    (dict(fid=registry.settings("fid", prompts="shapes", reference="shapes", inception_weights="/no/such.pth")),
     "config.evals.fid.inception_weights='/no/such.pth' does not exist; provide a local copy of the standard FID "
     "Inception weights"),
    (dict(fid=registry.settings("fid", prompts="shapes", reference="shapes")),
     "config.evals.fid.inception_weights is not set"),
    (dict(probe=registry.settings("linear_probe", dataset="cifar10", data_dir="DATA_DIR")),
     "config.evals.probe.dataset='cifar10' split 'train' is not prepared as ArrayRecord: prepare it once with "
     "`tfds build cifar10 --file_format=array_record --data_dir=DATA_DIR`"),
    (dict(zero_shot=dict(dataset="shapes", num_imagez=3)),
     "config.evals.zero_shot has unknown settings ['num_imagez']"),
    (dict(mystery=dict(dataset="shapes")), "config.evals.mystery: unknown evaluator kind 'mystery'"),
    (dict(seg=registry.settings("segmentation", dataset="scene_parse150", data_dir="DATA_DIR")),
     "config.evals.seg.dataset='scene_parse150' split 'train' is not prepared as ArrayRecord: prepare it once with "
     "`tfds build scene_parse150 --file_format=array_record --data_dir=DATA_DIR`"),
    (dict(depth=registry.settings("depth", dataset="nyu_depth_v2", data_dir="DATA_DIR")),
     "config.evals.depth.dataset='nyu_depth_v2' split 'train' is not prepared as ArrayRecord"),
    (dict(depth=registry.settings("depth", head="bin")), "config.evals.depth.head='bin'; expected one of"),
    (dict(align=registry.settings("alignment", prompts="/no/prompts.txt")),
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


def test_periodic_evaluation_runs_every_n_steps(trained):
    _, workdir = trained
    config = _config()
    config.evals = ml_collections.ConfigDict({"zero_shot": _small_evals()["zero_shot"]})
    mesh = sharding.make_mesh(config)
    manager = checkpoint.Manager(workdir, config, read_only=True)
    st = manager.restore(STEPS, state.abstract_state(config, mesh))
    manager.close()
    rt = runtime.create(config, mesh)
    config.eval_every = 0
    assert run.maybe_evaluate(rt, workdir, STEPS, st) is None
    config.eval_every = 8
    assert run.maybe_evaluate(rt, workdir, STEPS, st) is None
    config.eval_every = 10
    metrics = run.maybe_evaluate(rt, workdir, STEPS, st)
    assert set(metrics) == {"zero_shot/top1", "zero_shot/top5", "zero_shot/chance"}
    # EMA weights by default, as --mode=eval: the same number from the in-memory state and from the checkpoint.
    variables = {"params": st.ema_params, "batch_stats": st.batch_stats}
    direct = run.evaluate_variables(rt, workdir, variables, STEPS)
    assert direct == metrics


_ONLY_ZERO_SHOT = ["--config.evals.zero_shot.num_images=32", "--config.evals.zero_shot.batch_size=32",
                   "--config.evals.linear_probe.enabled=False", "--config.evals.few_shot.enabled=False",
                   "--config.evals.alignment.enabled=False", "--config.evals.segmentation.enabled=False",
                   "--config.evals.depth.enabled=False", "--config.evals.finetune.enabled=False"]


def test_main_eval_mode_writes_the_json(trained):
    _, workdir = trained
    env = th.subprocess_env()
    args = th.main_args(workdir) + ["--mode=eval"] + _ONLY_ZERO_SHOT
    proc = subprocess.run([sys.executable, "-m", "dream_jax.main", *args], cwd=th.REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.load(open(os.path.join(workdir, "eval", f"{STEPS}.json")))
    assert set(record["metrics"]) == {"zero_shot/top1", "zero_shot/top5", "zero_shot/chance"}
    assert "zero_shot/top1" in proc.stdout
    # The paper's seven columns follow the metric table: the run's value, or how to switch an evaluator on.
    table = proc.stdout[proc.stdout.index("the paper's table"):].splitlines()
    assert len(table) == 2 + 7 and "72.7  off: --config.evals.linear_probe.enabled=True" in table[2]


def test_main_eval_mode_names_the_missing_weights_in_one_line(tmp_path):
    args = th.main_args(tmp_path / "run") + ["--mode=eval", "--config.evals.fid.enabled=True",
                                             "--config.evals.fid.inception_weights=/no/such.pth"]
    proc = subprocess.run([sys.executable, "-m", "dream_jax.main", *args], cwd=th.REPO, capture_output=True,
                          text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: config.evals.fid.inception_weights='/no/such.pth' does not exist")
