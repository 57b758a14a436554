"""The train step's optimiser: optim.flat_update (AdamW's moments as two flat vectors) moves every param as the
leaf-by-leaf AdamW does up to float rounding, with the gradient clip off and on, and keeps its moments replicated."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import train_helpers as th
from dream_jax import sharding
from dream_jax import state as state_lib


def _params_and_grads(config):
    params = th.random_like(state_lib.abstract_variables(config)["params"], seed=0)
    grads = [th.random_like(params, seed=s) for s in (1, 2, 3)]
    return params, grads


def _run(config, params, grads_list):
    tx = state_lib.make_optimizer(config)

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state, out = tx.init(params), []
    for grads in grads_list:
        params, opt_state = update(params, opt_state, grads)
        out.append(params)
    return out


def test_flat_update_moves_every_param_as_the_leafwise_adamw():
    leafwise = th.tiny_config(optim__flat_update=False, optim__warmup_epochs=0.0)
    flat = th.tiny_config(optim__flat_update=True, optim__warmup_epochs=0.0)
    params, grads = _params_and_grads(leafwise)
    norms = [float(optax.tree.norm(g)) for g in grads]
    grads[2] = jax.tree.map(lambda g: g * (0.5 * leafwise.optim.grad_clip / norms[2]), grads[2])  # clip off
    assert norms[1] > leafwise.optim.grad_clip  # clip on (step 0 has lr 0: the one-step warmup)
    expected, got = _run(leafwise, params, grads), _run(flat, params, grads)
    lr = float(state_lib.learning_rate(leafwise)(1))
    for a, b in zip(expected, got):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(y, x, rtol=0, atol=1e-3 * lr)  # a few float32 roundings of lr-sized steps
    # Every param moved by steps of ~lr, far beyond that tolerance; weight decay reached only decay_mask's leaves
    # (the no-decay group's params would move by lr * weight_decay * |p| more if it reached them).
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(got[-1])):
        assert np.max(np.abs(np.asarray(y) - np.asarray(x))) > 0.5 * lr
    mask = jax.tree.leaves(state_lib.decay_mask(params))
    assert any(mask) and not all(mask)


@pytest.mark.parametrize("flat", [False, True])
def test_global_norm(flat):
    config = th.tiny_config(optim__flat_update=flat)
    params, _ = _params_and_grads(config)
    expected = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(params)))
    np.testing.assert_allclose(float(state_lib.global_norm(config, params)), expected, rtol=1e-6)
    if not flat:
        assert state_lib.global_norm(config, params) == optax.tree.norm(params)


def test_flat_moments_are_replicated_while_the_params_are_sharded():
    config = th.tiny_config(optim__flat_update=True, mesh__shape=(1, 8, 1))
    shardings = state_lib.state_shardings(config, sharding.make_mesh(config))
    moments = [s for s in jax.tree.leaves(shardings.opt_state) if s.spec != jax.sharding.PartitionSpec()]
    assert moments == []
    assert any(s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(shardings.params))
    assert jnp.ndim(jax.tree.leaves(state_lib.abstract_state(config, sharding.make_mesh(config)).opt_state)[-1]) <= 1
