"""Trainable parameter counts: the model's (shapes only, via jax.eval_shape) == a closed form from the config.

The closed form is written out here part by part from ../shared/OFFICIAL_LAYOUT.md's key table, and the scale
totals are checked against the authors' own counts (B 329.36M, L 635.99M, H 1128.42M, G 2432.71M). BatchNorm
running statistics are buffers, not trainable parameters, and must not be counted.

Dimension letters: D width, M MLP hidden, N depth, W CLIP tower width, P projection hidden, E embedding dim,
Wd DiffLoss width, T token dim.
"""

import functools
import math

import jax
import pytest

from configs import dream_tiny
from dream_jax import base_config
from dream_jax import state as state_lib
from dream_jax.models.dream import DREAM

# The authors' measured totals (OFFICIAL_LAYOUT.md §1), in millions, to 0.01M.
OFFICIAL_M = {"B": 329.36, "L": 635.99, "H": 1128.42, "G": 2432.71}


def closed_form(m):
    """Trainable parameters of DREAM from the `model` config section, one term per component."""
    D, M, T = m.width, m.mlp_dim, m.token_dim
    seq, buf = m.seq_len, m.buffer_size
    ln = lambda w: 2 * w
    linear = lambda i, o: i * o + o

    # timm Block: norm1, qkv, proj, norm2, fc1, fc2.
    block = ln(D) + linear(D, 3 * D) + linear(D, D) + ln(D) + linear(D, M) + linear(M, D)
    # CrossAttentionBlock: norm0, self_attn (qkv, proj), norm1, cross_attn (q, kv, proj), norm2, mlp.
    cross_block = (ln(D) + linear(D, 3 * D) + linear(D, D) + ln(D) + linear(D, D) + linear(D, 2 * D)
                   + linear(D, D) + ln(D) + linear(D, M) + linear(M, D))
    encoder = (m.num_classes * D + D  # class_emb, fake_latent
               + (seq + buf) * D  # encoder_pos_embed_learned
               + linear(T, D) + ln(D)  # z_proj, z_proj_ln
               + m.encoder_depth * block + ln(D))  # blocks, encoder_norm
    decoder = (linear(D, D) + D  # decoder_embed, mask_token
               + (seq + buf) * D + ln(D)  # decoder_pos_embed_learned, decoder_proj_ln
               + m.decoder_depth * cross_block + ln(D)  # blocks, decoder_norm
               + seq * D)  # diffusion_pos_embed_learned
    aligner = linear(m.cond_dim, D) + m.cond_len * D + ln(D) + m.aligner_depth * block

    t = m.text_tower
    W = t.width
    clip_block = ln(W) + linear(W, 3 * W) + linear(W, W) + ln(W) + linear(W, 4 * W) + linear(4 * W, W)
    text_tower = t.vocab_size * W + t.context_length * W + t.depth * clip_block + ln(W) + W * m.embed_dim

    P, E = m.proj_hidden_dim, m.embed_dim
    projection = linear(D, P) + 2 * P + linear(P, P) + 2 * P + linear(P, E)  # BN scale + bias, no running stats

    Wd = m.diffloss_width
    res_block = ln(Wd) + 2 * linear(Wd, Wd) + linear(Wd, 3 * Wd)
    diffloss = (linear(256, Wd) + linear(Wd, Wd)  # time_embed (256-d sinusoid)
                + linear(D, Wd) + linear(T, Wd)  # cond_embed, input_proj
                + m.diffloss_depth * res_block
                + linear(Wd, 2 * T) + linear(Wd, 2 * Wd))  # final_layer: linear, adaLN (affine-free LN)
    logit_scale = 1
    return encoder + decoder + aligner + text_tower + projection + diffloss + logit_scale


def model_count(config):
    """Trainable parameters of DREAM(config.model).init, from shapes only (nothing allocated)."""
    shapes = jax.eval_shape(
        lambda r: DREAM(config.model).init({"params": r}, *state_lib.dummy_inputs(config)), jax.random.key(0))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


@functools.cache
def _scale_count(scale):
    return model_count(base_config.get_base_config(scale))


@pytest.mark.parametrize("scale", ["B", "L", "H", "G"])
def test_scale_count_matches_closed_form_and_authors(scale):
    config = base_config.get_base_config(scale)
    n = _scale_count(scale)
    assert n == closed_form(config.model)
    assert round(n / 1e6, 2) == OFFICIAL_M[scale]


def test_giant_is_2_4b():
    n = _scale_count("G")
    assert 2.3e9 <= n <= 2.5e9


def test_scales_match_paper_table():
    # PAPER.md §1.2: (width, encoder depth, decoder depth, heads, MLP hidden).
    paper = {"B": (768, 12, 12, 12, 3072), "L": (1024, 16, 16, 16, 4096), "H": (1280, 20, 20, 16, 5120),
             "G": (1664, 24, 24, 16, 8192)}
    for scale, (w, enc, dec, heads, mlp) in paper.items():
        m = base_config.get_base_config(scale).model
        assert (m.width, m.encoder_depth, m.decoder_depth, m.num_heads, m.mlp_dim) == (w, enc, dec, heads, mlp)


def _tiny_variant(**overrides):
    config = dream_tiny.get_config()
    for key, value in overrides.items():
        target = config.model
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return config


@pytest.mark.parametrize("overrides", [
    {},
    {"width": 96, "num_heads": 3, "mlp_dim": 200, "encoder_depth": 2, "decoder_depth": 1, "aligner_depth": 2,
     "buffer_size": 8, "num_classes": 5, "diffloss_depth": 1, "diffloss_width": 48, "embed_dim": 32,
     "proj_hidden_dim": 40, "cond_len": 8, "text_tower.depth": 1, "text_tower.width": 32},
])
def test_tiny_count_matches_closed_form(overrides):
    config = _tiny_variant(**overrides)
    assert model_count(config) == closed_form(config.model)


def test_batch_stats_are_not_trainable():
    config = dream_tiny.get_config()
    shapes = jax.eval_shape(
        lambda r: DREAM(config.model).init({"params": r}, *state_lib.dummy_inputs(config)), jax.random.key(0))
    stats = jax.tree.leaves(shapes["batch_stats"])
    # bn1, bn2: running mean and variance over the projection hidden width.
    assert sum(math.prod(x.shape) for x in stats) == 4 * config.model.proj_hidden_dim
