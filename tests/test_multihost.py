"""Multi-host training on one machine: 2 processes x 2 CPU devices behave as 1 process on 1 device.

Each process is `python -m dream_jax.main --distributed` with the coordinator on 127.0.0.1 and its rank in
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (collectives over gloo). The (data, fsdp, tensor) mesh
is (1, 4, 1): its FSDP axis runs over both processes' devices (sharding.make_mesh's process-then-id order), so the
parameters are split across the two processes and the checkpoint is written collectively. The per-step losses equal
those of one process on one device (pipeline.ProcessChunks makes the global batches the same), and one process on one
device resumes from the 2-process checkpoint, its arrays gathered from both processes' shards, and continues as the
single-process run does (the data position carried over by checkpoint._rescaled_data_state). One-device processes
share the persistent compilation cache (conftest.py), which processes of several devices leave off: the resumed run
reads the reference run's programs (alone, idle: 12.7 s instead of 23 s on 4 devices; docs/BENCHMARKS.md).
"""

import json
import os
import socket

import numpy as np

import train_helpers as th

STEPS, SPLIT = 5, 3  # the 2-process run stops (and checkpoints) at SPLIT; the resumed run goes on to STEPS
MESH, SINGLE = "(1,4,1)", "(1,1,1)"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(workdir, total, mesh=MESH):
    return th.main_args(workdir, total_steps=total, checkpoint_every=SPLIT) + [f"--config.mesh.shape={mesh}"]


def _losses(workdir):
    return {step: r["loss"] for step, r in th.metrics_by_step(workdir).items()}


def test_two_processes_match_one_and_resume_on_one(tmp_path):
    port = _free_port()
    workdir = tmp_path / "multi"
    procs = []
    for rank in range(2):
        env = th.subprocess_env(devices=2)
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank))
        # The two processes compile the step separately; on a busy 2-core machine one can reach the first
        # collective minutes after the other, past gloo's default 30 s.
        env["XLA_FLAGS"] += " --xla_cpu_collective_timeout_seconds=600"
        procs.append(th.start(["--distributed"] + _args(workdir, SPLIT), env, tmp_path / f"rank{rank}.txt"))
    try:
        codes = [proc.wait(timeout=400) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for rank, code in enumerate(codes):
        assert code == 0, th.read(tmp_path / f"rank{rank}.txt")[-3000:]
    assert f"step {SPLIT}/{SPLIT}" in th.read(tmp_path / "rank0.txt")
    assert "step 1/" not in th.read(tmp_path / "rank1.txt")  # only process 0 reports and writes metrics
    assert th.finalized_steps(workdir) == [SPLIT]
    data = workdir / "checkpoints" / str(SPLIT) / "data"
    assert sorted(n for n in os.listdir(data) if n.startswith("process_")) == ["process_0-of-2.json",
                                                                              "process_1-of-2.json"]

    # The reference: one process on one device, straight through.
    single_env = th.subprocess_env()
    reference = tmp_path / "single"
    code, out = th.run(_args(reference, STEPS, SINGLE), single_env, tmp_path / "single.txt")
    assert code == 0, out[-3000:]
    expected = _losses(reference)
    multi = _losses(workdir)
    assert sorted(multi) == list(range(1, SPLIT + 1))
    for step in multi:
        np.testing.assert_allclose(multi[step], expected[step], rtol=1e-5, err_msg=f"step {step}")

    # One process resumes the 2-process checkpoint at SPLIT, with its data position, and goes on as the reference.
    code, out = th.run(_args(workdir, STEPS, SINGLE), single_env, tmp_path / "resumed.txt")
    assert code == 0, out[-3000:]
    assert f"step {SPLIT + 1}/{STEPS}" in out and "step 1/" not in out
    resumed = _losses(workdir)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(SPLIT + 1, STEPS + 1):
        np.testing.assert_allclose(resumed[step], expected[step], rtol=1e-5, err_msg=f"step {step}")
    with open(workdir / "checkpoints" / str(STEPS) / "data" / "process_0-of-1.json") as f:
        assert json.load(f) == {"next_index": STEPS * 16}  # batch_size 16 per step, one global stream
