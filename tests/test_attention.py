"""MultiHeadAttention against a numpy reference of the formula, on both of its paths.

The fused path (jax.nn.dot_product_attention, every attention without active dropout) and the explicit path
(einsum-softmax-dropout-einsum, training with attn_dropout > 0; here at a dropout rate of 1e-9 so the weights are
kept) must both equal softmax(q k^T / sqrt(K) masked) v with the module's own projections, for self-attention
with a key mask, causal self-attention, and cross-attention; in bfloat16 the fused path stays within bf16 noise.

Dimension letters: B batch, L query length, S key length, D width, H heads, K head dim.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dream_jax.models.transformer import MultiHeadAttention

B, L, S, D, H = 2, 7, 5, 32, 4


def _params(module, x, y, mask):
    variables = module.init(jax.random.key(0), x, y, mask)
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda a: a + 0.1 * rng.standard_normal(a.shape).astype(np.float32),
                        nn.unbox(variables))


def _reference(p, x, y, mask):
    """numpy float64: the projections, softmax(q k^T / sqrt(K)) over allowed keys, then proj."""
    x = np.asarray(x, np.float64)
    k_dim = D // H
    if y is None:
        qkv = np.einsum("bld,dthk->blthk", x, p["qkv"]["kernel"]) + p["qkv"]["bias"]
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
        y = np.asarray(y, np.float64)
        q = np.einsum("bld,dhk->blhk", x, p["q"]["kernel"]) + p["q"]["bias"]
        kv = np.einsum("bsd,dthk->bsthk", y, p["kv"]["kernel"]) + p["kv"]["bias"]
        k, v = kv[:, :, 0], kv[:, :, 1]
    logits = np.einsum("blhk,bshk->bhls", q, k) / np.sqrt(k_dim)
    if mask is not None:
        logits = np.where(np.asarray(mask), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhls,bshk->blhk", weights, v)
    return np.einsum("blhk,hkd->bld", out, p["proj"]["kernel"]) + p["proj"]["bias"]


def _case(kind):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, L, D)).astype(np.float32)
    if kind == "cross":
        return x, rng.standard_normal((B, S, D)).astype(np.float32), None
    if kind == "causal":
        return x, None, np.tril(np.ones((L, L), bool))[None, None]
    keep = np.ones((B, 1, 1, L), bool)
    keep[0, ..., [1, 4]] = False
    keep[1, ..., :3] = False
    return x, None, keep


@pytest.mark.parametrize("kind", ["key_mask", "causal", "cross"])
@pytest.mark.parametrize("path", ["fused", "explicit"])
def test_attention_equals_the_formula(kind, path):
    x, y, mask = _case(kind)
    rate = 1e-9 if path == "explicit" else 0.1  # explicit: active dropout that keeps every weight
    module = MultiHeadAttention(H, attn_dropout=rate)
    variables = _params(module, x, y, mask)
    if path == "explicit":
        out = module.apply(variables, x, y, mask, deterministic=False, rngs={"dropout": jax.random.key(2)})
    else:  # dropout configured but inactive (evaluation): the fused kernel runs
        out = module.apply(variables, x, y, mask, deterministic=True)
    expected = _reference(jax.tree.map(np.asarray, variables["params"]), x, y, mask)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1


def test_bfloat16_fused_attention_is_within_bf16_noise():
    x, y, mask = _case("key_mask")
    module = MultiHeadAttention(H, dtype=jnp.bfloat16)
    variables = _params(module, x, y, mask)
    out = module.apply(variables, x, y, mask)
    assert out.dtype == jnp.bfloat16
    expected = _reference(jax.tree.map(np.asarray, variables["params"]), x, y, mask)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=0.05, atol=0.05)
