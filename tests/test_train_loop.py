"""Tests of the training loop (dream_jax.training.train) as a user runs it: learning, bit-exact resume after SIGKILL,
SIGTERM preemption and Ctrl-C, the NaN guard, and the metrics it writes.

Runs are real `python -m dream_jax.main` subprocesses (or small scripts around the library) on one CPU device
with a shrunken tiny config (train_helpers.OVERRIDES); they share a persistent compilation cache, so only the
first one, the uninterrupted run of the resume test, compiles the step.
"""

import json
import os
import signal
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_helpers as th
from dream_jax import checkpoint, sharding
from dream_jax.training import train

STEPS = 20  # the resume test checkpoints at STEPS // 2 and STEPS; the kill must land between them
HALF = STEPS // 2


@pytest.fixture(scope="module")
def env():
    return th.subprocess_env()


@pytest.fixture(scope="module")
def straight_run(env, tmp_path_factory):
    """STEPS steps in one uninterrupted run: (workdir, console output)."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    code, out = th.run(th.main_args(workdir, total_steps=STEPS, checkpoint_every=HALF, profile_steps="3,4"), env,
                       workdir.parent / "log.txt")
    assert code == 0, out
    assert th.finalized_steps(workdir) == [HALF, STEPS]
    return workdir, out


def _one_device(config):
    return sharding.make_mesh(config, jax.devices()[:1])


def _restore(workdir, config, step):
    manager = checkpoint.Manager(str(workdir), config, read_only=True)
    try:
        return manager.restore(step, train.abstract_state(config, _one_device(config)))
    finally:
        manager.close()


def test_resume_after_sigkill_is_bit_exact(straight_run, env, tmp_path):
    straight, _ = straight_run
    workdir = tmp_path / "run"
    args = th.main_args(workdir, total_steps=STEPS, checkpoint_every=HALF)

    proc = th.start(args, env, tmp_path / "killed.txt")
    th.wait_for(lambda: HALF in th.finalized_steps(workdir), proc, interval=0.01,
                what=f"the checkpoint of step {HALF}")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert th.finalized_steps(workdir) == [HALF], "the run finished before it was killed; the test needs a slower run"

    code, out = th.run(args, env, tmp_path / "resumed.txt")
    assert code == 0, out
    assert f"step {HALF + 1}/{STEPS}" in out and f"step {HALF}/{STEPS}" not in out, "it did not resume at HALF"

    config = th.tiny_config(total_steps=STEPS)
    th.assert_trees_equal(_restore(workdir, config, STEPS), _restore(straight, config, STEPS))

    # Same batches in the same order after the resume: the per-step losses match to the bit, and so does the
    # saved grain iterator state.
    expected = th.metrics_by_step(straight)
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    # What the killed run logged after its checkpoint was dropped on resume: every step appears once.
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    for record in records:
        for name in ("loss", "gen_loss", "clip_loss", "clip_acc", "grad_norm"):
            assert record[name] == expected[record["step"]][name], (record["step"], name)
    data_state = os.path.join("checkpoints", str(STEPS), "data", "process_0-of-1.json")
    assert th.read(workdir / data_state) == th.read(straight / data_state)
    # TensorBoard is told the same: the resumed run's events purge those of steps after the checkpoint.
    from tensorboardX.proto import event_pb2

    starts = [e.step for e in _events(workdir / "tensorboard") if e.session_log.status == event_pb2.SessionLog.START]
    assert HALF + 1 in starts


def test_a_failed_restore_releases_the_workdir(straight_run):
    """A config that does not fit the checkpoints fails naming an array, and closes the workdir's lock on the way
    out, so the same process (a notebook) can retry at once."""
    workdir, _ = straight_run
    config = th.tiny_config(total_steps=STEPS, model__mlp_dim=96)
    with pytest.raises(ValueError, match=r"mlp/fc1/bias is \(128,\) in the checkpoint but \(96,\) in this config"):
        train.train_and_evaluate(config, str(workdir))
    checkpoint.Manager(str(workdir), config).close()
    assert th.finalized_steps(workdir) == [HALF, STEPS]


FIXED_BATCH_SCRIPT = """
# python fixed_batch.py TESTS_DIR: JSON metrics of 30 train steps on one batch, the step held at 1 (past the
# 1-step warmup) so that masks and noise repeat too: one fixed objective.
import json
import os
import sys

import jax
import numpy as np

sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]  # tests/ and the repo root (configs/)
import train_helpers as th
from dream_jax import sharding
from dream_jax import frozen as frozen_lib
from dream_jax.data import pipeline
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.training import train

assert jax.device_count() == 1, jax.devices()  # subprocess_env's one device, not conftest's 8
config = th.tiny_config()
mesh = sharding.make_mesh(config)
tokenizers = tokenizers_lib.make_tokenizers(config)
frozen = jax.device_put(frozen_lib.load(config, tokenizers), sharding.replicated(mesh))
batch = sharding.global_batch(next(iter(pipeline.make_dataset(config, tokenizers))), mesh, config)
state = train.create_state(config, mesh)
step_fn = train.compile_step(config, mesh, frozen, batch)
history = []
for _ in range(30):
    state = state.replace(step=jax.device_put(np.int32(1), state.step.sharding))
    state, metrics = step_fn(state, frozen, batch)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
print(json.dumps(history))
"""


def test_loss_decreases_on_a_fixed_batch(env, tmp_path):
    # A subprocess, placed after the straight run: it reuses that run's compiled step from the shared cache.
    script = tmp_path / "fixed_batch.py"
    script.write_text(FIXED_BATCH_SCRIPT)
    code, out = th.run([os.path.dirname(os.path.abspath(__file__))], env, tmp_path / "log.txt",
                       module=(str(script),))
    assert code == 0, out
    history = json.loads(out.strip().splitlines()[-1])
    assert all(np.isfinite(m["loss"]) for m in history)
    for name in ("loss", "gen_loss", "clip_loss"):
        first = np.mean([m[name] for m in history[:3]])
        last = np.mean([m[name] for m in history[-3:]])
        assert last < 0.8 * first, f"{name}: {first:.4f} -> {last:.4f}"


def _stop_with(signum, args, env, log, step):
    """Starts `args`, sends `signum` once the progress line of `step` is out; returns (exit code, output)."""
    proc = th.start(args, env, log)
    th.wait_for(lambda: f"step {step}/" in th.read(log), proc, what=f"step {step}")
    proc.send_signal(signum)
    return proc.wait(timeout=120), th.read(log)


def test_sigterm_and_ctrl_c_checkpoint_and_the_rerun_resumes(env, tmp_path):
    """SIGTERM (a preemption) checkpoints the step it lands in and exits 0; the rerun resumes there, and a Ctrl-C
    (SIGINT) does the same but exits 130 with one line saying so."""
    workdir = tmp_path / "run"
    args = th.main_args(workdir, total_steps=1000, checkpoint_every=1000)
    code, out = _stop_with(signal.SIGTERM, args, env, tmp_path / "terminated.txt", 2)
    assert code == 0, out
    assert "signal 15 received" in out
    steps = th.finalized_steps(workdir)
    assert len(steps) == 1 and 2 <= steps[0] < 1000, steps
    stopped = steps[0]
    assert max(th.metrics_by_step(workdir)) == stopped

    code, out = _stop_with(signal.SIGINT, args, env, tmp_path / "interrupted.txt", stopped + 2)
    assert code == 130, out
    assert f"step {stopped + 1}/1000" in out and "step 1/" not in out, "it did not resume"
    steps = th.finalized_steps(workdir)
    assert len(steps) == 2 and steps[0] == stopped and stopped + 2 <= steps[1] < 1000, steps
    assert out.strip().splitlines()[-1] == (f"error: interrupted at step {steps[1]}, its checkpoint saved: rerun "
                                            "the same command to resume")
    assert max(th.metrics_by_step(workdir)) == steps[1]


def test_a_second_ctrl_c_aborts_at_once():
    signals = train._StopSignals()
    signals(signal.SIGTERM, None)
    signals(signal.SIGTERM, None)  # repeated preemption notices only set the flag
    assert signals.requested and not signals.interrupted
    signals(signal.SIGINT, None)
    assert signals.interrupted
    with pytest.raises(KeyboardInterrupt):
        signals(signal.SIGINT, None)


NAN_SCRIPT = '''
"""python nan_run.py BAD_STEP MAIN_ARGS...: dream_jax.main with every param turned to NaN just before step BAD_STEP."""
import sys

import jax
import jax.numpy as jnp

from dream_jax import main
from dream_jax.training import train

bad = int(sys.argv.pop(1))
real_compile_step = train.compile_step


class Poisoned:
    def __init__(self, step_fn):
        self.step_fn = step_fn

    @property
    def compile_seconds(self):  # read by the train loop's progress line
        return self.step_fn.compile_seconds

    def __call__(self, state, frozen, batch, *step):
        if int(state.step) + 1 == bad:
            state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
        return self.step_fn(state, frozen, batch, *step)


def compile_step(config, mesh, frozen, example_batch):
    return Poisoned(real_compile_step(config, mesh, frozen, example_batch))


train.compile_step = compile_step
main.run()
'''


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(env, tmp_path):
    script = tmp_path / "nan_run.py"
    script.write_text(NAN_SCRIPT)
    workdir = tmp_path / "run"
    # Metrics are only fetched every 100 steps, so the guard must also run before each checkpoint.
    args = ["3"] + th.main_args(workdir, total_steps=6, checkpoint_every=2, log_every=100)
    code, out = th.run(args, env, tmp_path / "log.txt", module=(str(script),))
    assert code != 0
    assert "non-finite loss nan" in out and "at step 3" in out, out[-3000:]
    assert th.finalized_steps(workdir) == [2]
    assert max(th.metrics_by_step(workdir)) == 2

    config = th.tiny_config(total_steps=6)
    manager = checkpoint.Manager(str(workdir), config, read_only=True)
    state, step = manager.restore_latest(train.abstract_state(config, _one_device(config)))
    manager.close()
    assert step == 2
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state.params))


def _events(directory):
    """The Event protos of the TFRecord event files in `directory`, read without TensorFlow."""
    from tensorboardX.proto import event_pb2

    for name in sorted(n for n in os.listdir(directory) if n.startswith("events.out.tfevents")):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):  # record: uint64 length, uint32 crc, payload, uint32 crc
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            yield event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4


LOGGED = ("loss", "gen_loss", "clip_loss", "lr", "grad_norm", "logit_scale", "mask_ratio_mean", "mask_ratio_min",
          "mask_ratio_max", "clip_valid_frac", "gen_active_frac", "steps_per_sec", "examples_per_sec")


def test_metrics_and_tensorboard_events(straight_run):
    workdir, out = straight_run
    records = th.metrics_by_step(workdir)
    assert sorted(records) == list(range(1, STEPS + 1))  # log_every=1
    for step, record in records.items():
        assert all(name in record and np.isfinite(record[name]) for name in LOGGED), sorted(record)
        # The 1-step warmup starts from 0 (the authors' per-iteration schedule), then base_lr * batch / 256.
        assert record["lr"] == (0.0 if step == 1 else pytest.approx(0.016 * 16 / 256))
        # Fixed 60% masking: every sample is a contrastive query (>= 25% visible), every group trains generation.
        assert record["mask_ratio_mean"] == pytest.approx(0.6)
        assert record["clip_valid_frac"] == 1.0 and record["gen_active_frac"] == 1.0
        assert record["examples_per_sec"] == pytest.approx(16 * record["steps_per_sec"])
    tensorboard = workdir / "tensorboard"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tensorboard))
    assert set(LOGGED) <= {v.tag for e in _events(tensorboard) for v in e.summary.value}
    assert f"step {STEPS}/{STEPS} (100.0%)" in out and "steps/s ETA" in out
    # --config.profile_steps=3,4: one jax.profiler trace beside the scalars, where TensorBoard's profile tab looks.
    runs = os.listdir(tensorboard / "plugins" / "profile")
    assert len(runs) == 1
    traces = [n for n in os.listdir(tensorboard / "plugins" / "profile" / runs[0]) if n.endswith(".xplane.pb")]
    assert len(traces) == 1 and os.path.getsize(tensorboard / "plugins" / "profile" / runs[0] / traces[0]) > 1000


def test_writer_does_not_load_torch(tmp_path):
    """tensorboardX imports torch where it is installed (seconds at the start of every run); the writer hides it,
    writes its events, and torch still imports afterwards."""
    pytest.importorskip("torch")
    script = ("import sys; from dream_jax import summary; w = summary.Writer(sys.argv[1]); w.scalars(1, {'loss': 1.0});"
              " w.close(); print('torch' in sys.modules); import torch; print(torch.ones(2).sum().item())")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=th.REPO, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "2.0"]
    assert [e.summary.value[0].tag for e in _events(tmp_path / "tensorboard") if e.summary.value] == ["loss"]


def test_writer_on_resume_drops_records_after_the_resume_step(tmp_path):
    from dream_jax import summary

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n{"step": 3, "loss": 3.0}\n{"step": 4, "lo')
    writer = summary.Writer(str(tmp_path), resume_step=2)
    writer.scalars(3, {"loss": 30.0})
    writer.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 30.0}]
    summary.Writer(str(tmp_path)).close()  # no resume step (e.g. sampling into the workdir): nothing dropped
    assert len(path.read_text().splitlines()) == 3
