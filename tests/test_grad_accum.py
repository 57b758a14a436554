"""Gradient accumulation (`config.grad_accum_steps`) gives the big batch's loss, metrics, BatchNorm statistics and
gradients, on one device and sharded over 8.

The reference is `jax.value_and_grad(train.loss_fn)` on the whole batch of test_sharded_equivalence's tiny config
(at a step whose mask ratios straddle both gates, so some groups train generation and some samples are filtered
from the contrastive loss); `train.accumulated_grads` splits the same batch into 2 or 4 microbatches. The tiny
config has no dropout, so only float rounding separates the two.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

import test_sharded_equivalence as se
from dream_jax import sharding
from dream_jax import frozen as frozen_lib
from dream_jax import state as state_lib
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.training import train


def _args(config, mesh):
    frozen = jax.device_put(frozen_lib.load(config, tokenizers_lib.make_tokenizers(config)), sharding.replicated(mesh))
    state = state_lib.create_state(config, mesh)
    batch = sharding.global_batch(se._batch(config), mesh, config)
    return (se._perturbed(state.params), state.batch_stats, frozen, batch, np.int32(se.STEP))


@functools.cache
def _run(accum, shape=(1, 1, 1)):
    """(loss, metrics, batch_stats, grads) with `accum` microbatches (1: plain value_and_grad of loss_fn)."""
    config = se._config(shape)
    config.grad_accum_steps = accum
    devices = jax.devices()[:1] if shape == (1, 1, 1) else jax.devices()[:8]
    mesh = sharding.make_mesh(config, devices)
    grad_fn = jax.value_and_grad(train.loss_fn, has_aux=True) if accum == 1 else train.accumulated_grads

    def fn(params, batch_stats, frozen, batch, step):
        return grad_fn(params, batch_stats, config, frozen, batch, step)

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
        (loss, (metrics, stats)), grads = jax.jit(fn)(*_args(config, mesh))
    return jax.device_get((loss, metrics, stats, grads))


@pytest.mark.parametrize("accum,shape", [(4, (1, 1, 1)), (2, (2, 2, 2))], ids=["4-slices", "2-slices-on-2x2x2"])
def test_accumulated_equals_big_batch(accum, shape):
    loss0, metrics0, stats0, grads0 = _run(1)
    loss, metrics, stats, grads = _run(accum, shape)
    # The reference exercises both gates (checked in test_sharded_equivalence); here they must agree too.
    assert 0.0 < metrics0["gen_active_frac"] < 1.0 and 0.0 < metrics0["clip_valid_frac"] < 1.0
    np.testing.assert_allclose(loss, loss0, rtol=se.RTOL)
    assert set(metrics) == set(metrics0)
    for k in metrics0:
        np.testing.assert_allclose(metrics[k], metrics0[k], rtol=se.RTOL, atol=1e-6, err_msg=k)
    se._assert_tree_close(stats, stats0, "batch_stats")
    se._assert_tree_close(grads, grads0, "grad")


def test_accumulation_settings_are_checked():
    config = se._config((8, 1, 1))
    config.grad_accum_steps = 3  # 4 mask groups: a microbatch would cut a group
    with pytest.raises(ValueError, match="grad_accum_steps=3 must be >= 1 and divide masking.num_groups=4"):
        train.validate_config(config)
    config.grad_accum_steps = 4
    config.batch_size = 8  # 4 microbatches of 2 cannot spread over 8 batch shards
    mesh = sharding.make_mesh(config, jax.devices()[:8])
    with pytest.raises(ValueError, match="batch_size=8 is not divisible by the 8 batch shards .* x grad_accum_steps=4"):
        train.check_batch(config, mesh)
