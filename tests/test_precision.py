"""model.precision (dream_jax/models/precision.py): what the bfloat16 policy computes in bfloat16 and keeps float32.

Two train steps of the shrunken tiny config under each policy from the same state and batch: master weights,
gradients, Adam moments, EMA, losses and metrics stay float32 under "bfloat16", its matmuls run in bfloat16, and
its losses are the float32 policy's within bfloat16 rounding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_helpers as th
from dream_jax import frontend, sharding, train
from dream_jax.models import precision
from dream_jax.state import create_state


def _batch(config):
    tokenizers = frontend.make_tokenizers(config)
    captions = [f"a red circle number {i}" for i in range(config.batch_size)]
    cond_ids, cond_mask = tokenizers.cond_ids(captions)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (config.batch_size, 32, 32, 3)).astype(np.uint8)
    return tokenizers, {"image": image, "clip_ids": tokenizers.clip_ids(captions), "cond_ids": cond_ids,
                        "cond_mask": cond_mask}


def _step(config, state, tokenizers, batch):
    frozen = frontend.load_frozen(config, tokenizers)
    return train.train_step(config, state, frozen, batch, train.mask_ratios(config, state.step))


@pytest.fixture(scope="module")
def runs():
    """{policy: (state before, state after, metrics, jaxpr of the step)} from one state and batch."""
    out = {}
    for name in precision.POLICIES:
        config = th.tiny_config(model__precision=name)
        state = create_state(config, sharding.make_mesh(config, jax.devices()[:1]))
        # Random weights: the zero-initialised head would output 0 under either policy.
        state = state.replace(params=jax.tree.map(jnp.asarray, th.random_like(state.params, 0)))
        tokenizers, batch = _batch(config)
        step = functools.partial(_step, config)
        jaxpr = jax.make_jaxpr(step, static_argnums=(1,))(state, tokenizers, batch)
        step = jax.jit(step, static_argnums=(1,))
        first, _ = step(state, tokenizers, batch)  # step 0's learning rate is 0
        new, metrics = step(first, tokenizers, batch)
        out[name] = (first, new, metrics, jaxpr)
    return out


def _floating(tree):
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


def _dots(jaxpr):
    """(operand dtypes, output dtype) of every dot_general in a (closed) jaxpr, sub-jaxprs included."""
    found = []

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "dot_general":
                found.append((tuple(v.aval.dtype for v in eqn.invars), eqn.outvars[0].aval.dtype))
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return found


def test_bfloat16_keeps_master_weights_optimiser_state_and_metrics_float32(runs):
    before, after, metrics, _ = runs["bfloat16"]
    for tree in (after.params, after.opt_state, after.ema_params, after.batch_stats):
        assert {x.dtype for x in _floating(tree)} == {jnp.dtype(jnp.float32)}
    assert {v.dtype for v in metrics.values()} == {jnp.dtype(jnp.float32)}
    # The step moved the weights: float32 updates are not lost to bfloat16 rounding.
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params)))


def test_bfloat16_matmuls_run_in_bfloat16(runs):
    dots16 = _dots(runs["bfloat16"][3])
    dots32 = _dots(runs["float32"][3])
    assert all(inputs == (jnp.float32, jnp.float32) for inputs, _ in dots32)
    bf16 = [(i, o) for i, o in dots16 if i == (jnp.bfloat16, jnp.bfloat16)]
    # The same program: only dtypes differ, and most matmuls (every block's, the head's, the frozen T5's, forward
    # and backward) are bfloat16; the rest are float32 by design (projection MLP, contrastive logits, PCA
    # tokenizer) or accumulate in float32 (attention logits and their gradients).
    assert len(dots16) == len(dots32)
    assert len(bf16) > 0.6 * len(dots16)
    assert all(o == jnp.float32 for i, o in dots16 if jnp.float32 in i)


def test_bfloat16_losses_match_float32_within_rounding(runs):
    m16, m32 = runs["bfloat16"][2], runs["float32"][2]
    for key in ("clip_loss", "gen_loss", "loss"):
        a, b = float(m16[key]), float(m32[key])
        assert a != b, key  # bfloat16 really computed something
        assert abs(a - b) <= 0.02 * abs(b), (key, a, b)
