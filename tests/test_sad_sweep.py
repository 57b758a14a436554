"""benchmarks/sad_sweep.py: the settings it sweeps, the FLOPs it charges each, and its one-line errors."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import sad_sweep  # noqa: E402
from configs import dream_tiny  # noqa: E402
from dream_jax import flops  # noqa: E402


def test_plain_once_then_sad_at_every_t_c_and_reranking_per_k():
    assert sad_sweep.settings([1, 2, 5], [1, 4]) == [
        ("plain", 1, 0), ("sad", 2, 1), ("sad", 2, 4), ("rerank", 2, 0), ("sad", 5, 1), ("sad", 5, 4),
        ("rerank", 5, 0)]


def test_costs_plain_below_sad_below_reranking_which_is_k_plain_decodes_and_scores():
    config = dream_tiny.get_config()
    plain = sad_sweep.cost_flops("plain", sad_sweep.with_sampling(config, 1, 0), 1)
    sad = [sad_sweep.cost_flops("sad", sad_sweep.with_sampling(config, 5, tc), 5) for tc in (1, 2, 4, 5)]
    rerank = sad_sweep.cost_flops("rerank", sad_sweep.with_sampling(config, 5, 0), 5)
    score = flops.encoder_forward_flops(config, config.model.seq_len) + flops.forward_flops(config, 0.0)["projections"]
    assert plain < sad[0] < sad[1] < sad[2] < sad[3] < rerank
    assert rerank == pytest.approx(5 * (plain + score))


@pytest.mark.parametrize("flags,message", [
    (["--workdir=/no/such/workdir"], "error: --workdir='/no/such/workdir' does not exist"),
    (["--workdir=.", "--warmup=100"], "error: --warmup=100 and --num_prompts=256 must be multiples of "
                                      "sampling.batch_size=64"),
])
def test_bad_flags_are_one_line_errors(flags, message):
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "sad_sweep.py")] + flags,
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode != 0 and out.stderr.strip().splitlines()[-1].startswith(message), out.stderr[-1000:]
