"""`python -m dream_jax.main` restarts itself once with glibc's malloc on huge pages (dream_jax/huge_pages.py)."""

import os
import platform
import subprocess
import sys

import pytest

import train_helpers as th
from dream_jax import huge_pages

# Imported by every Python start that has its directory on PYTHONPATH: appends "pid utf8_mode GLIBC_TUNABLES".
RECORDER = """import os, sys
with open(os.environ["STARTS_FILE"], "a") as f:
    f.write(f"{os.getpid()} {sys.flags.utf8_mode} {os.environ.get('GLIBC_TUNABLES', '')}\\n")
"""


def test_environment_adds_the_tunable_once():
    assert huge_pages.environment({"A": "1"}, (2, 36)) == {"A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    other = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert huge_pages.environment(other, (2, 35)) == {
        "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    assert huge_pages.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, (2, 36)) is None  # the opt-out
    assert huge_pages.environment({}, (2, 34)) is None  # no such tunable before glibc 2.35
    assert huge_pages.environment({}, None) is None  # musl, macOS, ...


def test_glibc_version_is_the_platforms():
    name, version = platform.libc_ver()
    expected = tuple(int(v) for v in version.split(".")[:2]) if name == "glibc" else None
    assert huge_pages.glibc_version() == expected


def _starts(tmp_path, tunables):
    """The (pid, utf8 mode, GLIBC_TUNABLES) of each interpreter start of `python -X utf8 -m dream_jax.main
    --mode=bad` with GLIBC_TUNABLES=`tunables`, and its exit code and stderr."""
    (tmp_path / "sitecustomize.py").write_text(RECORDER)
    env = dict(os.environ, STARTS_FILE=str(tmp_path / "starts.txt"), GLIBC_TUNABLES=tunables,
               PYTHONPATH=os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH")))))
    proc = subprocess.run([sys.executable, "-X", "utf8", "-m", "dream_jax.main", "--mode=bad"], cwd=th.REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    starts = [line.split(" ", 2) for line in (tmp_path / "starts.txt").read_text().splitlines()]
    return starts, proc.returncode, proc.stderr


@pytest.mark.skipif(huge_pages.glibc_version() is None or huge_pages.glibc_version() < huge_pages.MIN_GLIBC,
                    reason="needs glibc >= 2.35")
def test_main_restarts_itself_once_with_the_tunable_and_the_same_command_line(tmp_path):
    starts, code, err = _starts(tmp_path, "glibc.malloc.arena_max=2")
    assert [tunables for *_, tunables in starts] == ["glibc.malloc.arena_max=2",
                                                     "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"]
    assert starts[0][0] == starts[1][0], "the restart should replace the process, not start another"
    # The same command line after the restart: the interpreter's -X option, and the flags, which reach absl.
    assert [utf8 for _, utf8, _ in starts] == ["1", "1"]
    assert code == 2 and "flag --mode=bad" in err


def test_main_keeps_a_users_choice(tmp_path):
    starts, _, _ = _starts(tmp_path, "glibc.malloc.hugetlb=0")
    assert [tunables for *_, tunables in starts] == ["glibc.malloc.hugetlb=0"]
