"""`--mode=info`: the parameter/FLOP table comes from eval_shape in seconds, and its numbers are consistent."""

import os
import subprocess
import sys
import time

from configs import dream_b, dream_g
from dream_jax import flops, info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_info_mode_for_dream_g_prints_the_table_quickly():
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "dream_jax.main", "--config=configs/dream_g.py", "--mode=info"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert time.monotonic() - start < 120
    assert "| total trainable                      |   2,432,714,657 |" in out.stdout
    for name in ("encoder", "decoder", "text aligner", "CLIP text tower", "projections", "diffusion head",
                 "T5-Large encoder (frozen)", "SD-VAE KL-f8 (frozen)", "| 0.75 |"):
        assert name in out.stdout


def test_component_counts_add_up_and_flops_drop_with_masking():
    config = dream_b.get_config()
    counts = info.trainable_counts(config)
    assert sum(counts.values()) == 329_357_857
    # The encoder's transformer blocks: 12 x (4 D^2 + 2 D M + biases and norms).
    d, m = 768, 3072
    blocks = 12 * (4 * d * d + 4 * d + 2 * d * m + m + d + 4 * d)
    assert counts["encoder"] == blocks + 16 * d + d + 2 * d + 320 * d + 1000 * d + d + 2 * d
    f0, f75 = flops.forward_flops(config, 0.0), flops.forward_flops(config, 0.75)
    assert f75["encoder"] < 0.5 * f0["encoder"]
    assert f75["decoder"] < f0["decoder"] and f75["diffusion head"] == f0["diffusion head"]


def test_encoder_flops_match_a_dense_count():
    """2 x multiply-adds of the encoder on n tokens: z_proj on visible tokens, qkv/proj/MLP and attention."""
    config = dream_g.get_config()
    d, m, n_vis = 1664, 8192, 64
    n = 64 + n_vis
    per_block = 2 * n * (3 * d * d + d * d + 2 * d * m) + 2 * 2 * n * n * d
    expected = 2 * n_vis * 16 * d + 24 * per_block
    assert flops.forward_flops(config, 0.75)["encoder"] == expected
