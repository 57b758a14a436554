"""`--mode=sample` refuses bad input with a clear message: no checkpoint, an empty prompt file, a prompt longer
than the text context, a missing prompt file."""

import os
import subprocess
import sys

import pytest

from configs import dream_tiny
from dream_jax.generation import sample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*train first"):
        sample.sample_to_workdir(dream_tiny.get_config(), str(tmp_path), None, 1, 0)


def test_empty_prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n   \n")
    with pytest.raises(ValueError, match="has no prompts"):
        sample.sample_to_workdir(dream_tiny.get_config(), str(tmp_path), str(path), 1, 0)


def test_missing_prompt_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sample.sample_to_workdir(dream_tiny.get_config(), str(tmp_path), str(tmp_path / "nope.txt"), 1, 0)


def test_prompt_longer_than_the_context(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n" + " ".join(["red"] * 40) + "\n")
    with pytest.raises(ValueError, match="context"):
        sample.sample_to_workdir(dream_tiny.get_config(), str(tmp_path), str(path), 1, 0)


def test_cli_prints_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dream_jax.main", "--config=configs/dream_tiny.py",
                          f"--workdir={tmp_path}", "--mode=sample"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "no checkpoint" in lines[0] and "Traceback" not in out.stderr
