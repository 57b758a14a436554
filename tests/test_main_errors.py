"""Mistakes a user can make on the command line end `python -m dream_jax.main` with one line and exit code 2.

Each case is a real subprocess (it must fail before any training starts, so each takes seconds).
"""

import subprocess
import sys

import pytest

import train_helpers as th

TINY = f"--config={th.CONFIG_FILE}"

CASES = {
    "unknown mode": ([TINY, "--mode=bogus"], "--mode=bogus"),
    "missing --config": ([], "--config"),
    "config file does not exist": (["--config=configs/no_such_config.py"], "no_such_config.py"),
    "unknown override": ([TINY, "--config.no_such_field=1"], "no_such_field"),
    "unknown nested override": ([TINY, "--config.masking.no_such_field=1"], "no_such_field"),
    "override of the wrong type": ([TINY, "--config.batch_size=abc"], "batch_size"),
    "bad value": ([TINY, "--config.masking.kind=bogus"], "masking.kind='bogus'"),
    "batch not divisible by mask groups": ([TINY, "--config.batch_size=18"], "num_groups"),
    # conftest gives the process 8 CPU devices, and the tiny config's mesh is all data-parallel.
    "batch not divisible by devices": ([TINY, "--config.batch_size=12"], "batch_size=12"),
    "stray argument": ([TINY, "stray"], "stray"),
    "workdir is a file": ([TINY, "--workdir=setup.py"], "--workdir=setup.py is a file, not a directory"),
    "negative learning rate": ([TINY, "--config.optim.base_lr=-1"], "optim.base_lr=-1.0 must be > 0"),
}


@pytest.mark.parametrize("args,expected", list(CASES.values()), ids=list(CASES))
def test_bad_command_line_is_one_line_and_exit_code_2(args, expected, tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "dream_jax.main", f"--workdir={workdir}", *args], cwd=th.REPO,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert expected in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not workdir.exists()  # nothing is written before the config is known to be good


def test_train_without_workdir_is_one_line_and_exit_code_2():
    proc = subprocess.run([sys.executable, "-m", "dream_jax.main", TINY], cwd=th.REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == "error: --workdir is required for --mode=train"
