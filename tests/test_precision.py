"""model.precision (dream_jax/models/precision.py): what the bfloat16 policy computes in bfloat16 and keeps float32.

The shrunken tiny config's train step under each policy, from the same random weights and batch: under
"bfloat16" master weights, Adam moments, EMA, BatchNorm statistics and metrics stay float32, its matmuls run in
bfloat16, and its losses are the float32 policy's within bfloat16 rounding.
"""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import train_helpers as th
from dream_jax import sharding
from dream_jax import frozen as frozen_lib
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.models import precision
from dream_jax.state import abstract_state
from dream_jax.training import train


def _setup(name):
    config = th.tiny_config(model__precision=name)
    tokenizers = tokenizers_lib.make_tokenizers(config)
    captions = [f"a red circle number {i}" for i in range(config.batch_size)]
    cond_ids, cond_mask = tokenizers.cond_ids(captions)
    image = np.random.default_rng(0).integers(0, 256, (config.batch_size, 32, 32, 3)).astype(np.uint8)
    batch = {"image": image, "clip_ids": tokenizers.clip_ids(captions), "cond_ids": cond_ids,
             "cond_mask": cond_mask}
    state = abstract_state(config, sharding.make_mesh(config, jax.devices()[:1]))
    # Random weights (the zero-initialised head would output 0 under either policy); the optimiser state stays
    # abstract: only eval_shape and make_jaxpr see it.
    state = state.replace(params=jax.tree.map(jnp.asarray, th.random_like(state.params, 0)),
                          batch_stats=jax.tree.map(jnp.asarray, th.random_like(state.batch_stats, 1)))
    return config, tokenizers, batch, state


def _step(config, tokenizers, state, batch):
    frozen = frozen_lib.load(config, tokenizers)
    return train.train_step(config, (), state, frozen, batch, train.mask_ratios(config, state.step))


def _loss(config, tokenizers, params, batch_stats, batch):
    frozen = frozen_lib.load(config, tokenizers)
    return train.loss_fn(params, batch_stats, config, frozen, batch, 0)[1][0]


@pytest.fixture(scope="module")
def runs():
    """{policy: (config, tokenizers, batch, state)}."""
    return {name: _setup(name) for name in precision.POLICIES}


def _dots(jaxpr):
    """(operand dtypes, output dtype) of every dot_general in a (closed) jaxpr, sub-jaxprs included."""
    found = []

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "dot_general":
                found.append((tuple(v.aval.dtype for v in eqn.invars), eqn.outvars[0].aval.dtype))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return found


def test_bfloat16_keeps_master_weights_optimiser_state_and_metrics_float32(runs):
    config, tokenizers, batch, state = runs["bfloat16"]
    new, metrics = jax.eval_shape(functools.partial(_step, config, tokenizers), state, batch)
    for tree in (new.params, new.opt_state, new.ema_params, new.batch_stats, metrics):
        floating = [x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floating and set(floating) == {jnp.dtype(jnp.float32)}


def test_bfloat16_matmuls_run_in_bfloat16(runs):
    dots = {name: _dots(jax.make_jaxpr(functools.partial(_step, *run[:2]))(run[3], run[2]))
            for name, run in runs.items()}
    assert all(inputs == (jnp.float32, jnp.float32) for inputs, _ in dots["float32"])
    bf16 = [i for i, _ in dots["bfloat16"] if i == (jnp.bfloat16, jnp.bfloat16)]
    # The same program: only dtypes differ, and most matmuls (every block's, the head's, the frozen T5's, forward
    # and backward) are bfloat16; the rest are float32 by design (projection MLP, contrastive logits, PCA
    # tokenizer) or accumulate in float32 (attention logits and their gradients).
    assert len(dots["bfloat16"]) == len(dots["float32"])
    assert len(bf16) > 0.6 * len(dots["bfloat16"])
    assert all(o == jnp.float32 for i, o in dots["bfloat16"] if jnp.float32 in i)


def test_bfloat16_losses_match_float32_within_rounding(runs):
    metrics = {}
    for name, (config, tokenizers, batch, state) in runs.items():
        loss = jax.jit(functools.partial(_loss, config, tokenizers))
        metrics[name] = loss(state.params, state.batch_stats, batch)
    for key in ("clip_loss", "gen_loss", "loss"):
        a, b = float(metrics["bfloat16"][key]), float(metrics["float32"][key])
        assert metrics["bfloat16"][key].dtype == jnp.float32
        assert a != b, key  # bfloat16 really computed something
        assert abs(a - b) <= 0.02 * abs(b), (key, a, b)
