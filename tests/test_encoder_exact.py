"""The static-shape encoder (all positions computed, masked tokens removed as attention keys) == the authors'
encoder, which gathers the visible tokens + buffer and runs the blocks on that shorter sequence.

The reference is built here step by step from the encoder's own parameters: z_proj, buffer from class_emb[0],
position embedding, z_proj_ln, then *gather*, then each block via Block.apply on the short sequence, then
encoder_norm. Each sample has its own visible count, so the reference runs sample by sample.

Dimension letters: B batch, L image tokens, Bf buffer tokens, P = Bf + L, V kept positions, T token dim, D width.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dream_jax.models.dream import mean_pool
from dream_jax.models.mae import Encoder, keep_mask
from dream_jax.models.transformer import Block
from dream_jax.training import masking

WIDTH, DEPTH, HEADS, MLP, BUFFER, CLASSES = 64, 2, 4, 96, 4, 3
LENGTH, TOKEN_DIM = 64, 12
ATOL = 1e-5


def _encoder():
    return Encoder(width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, buffer_size=BUFFER,
                   num_classes=CLASSES, attn_dropout=0.1, proj_dropout=0.1, dtype=jnp.float32)


@functools.cache
def _params(seed):
    tokens = jnp.zeros((1, LENGTH, TOKEN_DIM))
    init = jax.jit(_encoder().init)(jax.random.key(seed), tokens, jnp.zeros((1, LENGTH), bool))
    # Norms start at scale 1 / bias 0 and biases at 0: perturb every leaf so that each one matters.
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(x + 0.1 * rng.standard_normal(x.shape), jnp.float32),
                        nn.unbox(init["params"]))


def _layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def _reference(params, tokens, mask):
    """Per sample: the gathered visible tokens + buffer through the same blocks. Returns a list of [V_b, D]."""
    x = tokens @ params["z_proj"]["kernel"] + params["z_proj"]["bias"]
    buffer = jnp.broadcast_to(params["class_emb"][0], (tokens.shape[0], BUFFER, WIDTH))
    x = jnp.concatenate([buffer, x], axis=1) + params["encoder_pos_embed_learned"]
    x = _layer_norm(x, params["z_proj_ln"])
    outputs = []
    for b in range(tokens.shape[0]):
        kept = np.concatenate([np.arange(BUFFER), BUFFER + np.flatnonzero(~np.asarray(mask[b]))])
        outputs.append(_blocks_and_norm(params, x[b, kept][None])[0])
    return outputs


@jax.jit
def _blocks_and_norm(params, h):
    """The encoder blocks and final norm on one gathered sequence [1, V, D] (jit only for speed)."""
    for i in range(DEPTH):
        h = Block(HEADS, MLP, 0.1, 0.1).apply({"params": params[f"encoder_blocks_{i}"]}, h, None, True)
    return _layer_norm(h, params["encoder_norm"])


@jax.jit
def _run_encoder(params, tokens, mask):
    return _encoder().apply({"params": params}, tokens, mask, True)


def _masks(ratios, per_group, seed):
    ratios = jnp.asarray(ratios, jnp.float32)
    return masking.random_masks(jax.random.key(seed), ratios, len(ratios) * per_group, LENGTH)


@pytest.mark.parametrize("ratios", [(0.0, 0.5, 0.9), (0.9, 0.0, 0.5, 0.33)])
def test_encoder_equals_gathered_reference(ratios):
    params = _params(0)
    mask = _masks(ratios, per_group=2, seed=len(ratios))
    tokens = jax.random.normal(jax.random.key(1), (mask.shape[0], LENGTH, TOKEN_DIM))
    counts = np.asarray(mask).sum(1)
    assert sorted(set(counts)) == sorted({int(np.ceil(LENGTH * r)) for r in np.float32(ratios)})

    out = _run_encoder(params, tokens, mask)
    assert out.shape == (mask.shape[0], BUFFER + LENGTH, WIDTH)
    keep = np.asarray(keep_mask(mask, BUFFER))
    ref = _reference(params, tokens, mask)
    for b in range(mask.shape[0]):
        assert ref[b].shape[0] == BUFFER + LENGTH - counts[b]
        np.testing.assert_allclose(out[b][keep[b]], ref[b], atol=ATOL, rtol=0)

    # The image embedding's input: mean over buffer + visible outputs.
    pooled = mean_pool(out, jnp.asarray(keep))
    np.testing.assert_allclose(pooled, np.stack([r.mean(0) for r in ref]), atol=ATOL, rtol=0)


def test_masked_token_values_do_not_leak():
    # Kept outputs must not depend on what sits at masked positions (the gather drops them entirely).
    params = _params(0)
    mask = _masks((0.5, 0.9), per_group=2, seed=3)
    tokens = jax.random.normal(jax.random.key(4), (4, LENGTH, TOKEN_DIM))
    noise = 100.0 * jax.random.normal(jax.random.key(5), tokens.shape)
    other = jnp.where(mask[..., None], noise, tokens)
    run = lambda t: _run_encoder(params, t, mask)
    keep = np.asarray(keep_mask(mask, BUFFER))
    a, b = np.asarray(run(tokens)), np.asarray(run(other))
    np.testing.assert_allclose(a[keep], b[keep], atol=ATOL, rtol=0)
    # ...while the masked rows (don't-care) do change, so the check above is not vacuous.
    assert np.abs(a[~keep] - b[~keep]).max() > 1e-2


def test_no_key_masking_would_differ():
    # Control: the same blocks over all positions (what a missing key mask would compute) differ from the
    # gathered reference, so the equality test can fail.
    params = _params(0)
    mask = _masks((0.5,), per_group=2, seed=6)
    tokens = jax.random.normal(jax.random.key(7), (2, LENGTH, TOKEN_DIM))
    unmasked = _run_encoder(params, tokens, jnp.zeros_like(mask))
    keep = np.asarray(keep_mask(mask, BUFFER))
    ref = _reference(params, tokens, mask)
    assert np.abs(np.asarray(unmasked[0])[keep[0]] - ref[0]).max() > 1e-3
