"""The encoder at a capacity plan (gathered visible tokens, dream_jax/training/capacity.py) == the key-masked encoder.

Checked at three levels: the Encoder module on its own (with a too-small capacity as the control that can fail);
the training loss, metrics, BatchNorm statistics and gradients of test_sharded_equivalence's tiny config, on one
device, and with 2 microbatches of gradient accumulation on a (2, 2, 2) mesh, against the key-masked single-device
reference; and the acceptance measure, XLA's cost analysis of the train step: the encoder's FLOPs at mask
ratio 0.75 are at most 0.35x those at ratio 0.

Dimension letters: G mask groups, B batch, L image tokens, Bf buffer, K encoder classes, C capacity.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import test_encoder_exact as ee
import test_grad_accum as ga
import test_sharded_equivalence as se
import train_helpers as th
from dream_jax import sharding
from dream_jax import compile as compile_lib
from dream_jax import frozen as frozen_lib
from dream_jax.models.mae import Encoder, keep_mask
from dream_jax.training import capacity, masking, train


def _encoder(plan):
    return Encoder(width=ee.WIDTH, depth=ee.DEPTH, num_heads=ee.HEADS, mlp_dim=ee.MLP, buffer_size=ee.BUFFER,
                   num_classes=ee.CLASSES, capacity=plan)


@functools.partial(jax.jit, static_argnums=0)
def _apply(plan, params, tokens, mask):
    return _encoder(plan).apply({"params": params}, tokens, mask, True)


@pytest.mark.parametrize("accum,shards", [(1, 1), (2, 1), (1, 8), (2, 4)])
def test_plan_holds_every_visible_token(accum, shards):
    config = se._config()
    config.batch_size, config.masking.num_groups, config.grad_accum_steps = 64, 8, accum
    length, width = config.model.seq_len, config.model.seq_len // config.model.encoder_buckets
    for step in range(0, 2400, 37):
        ratios = np.asarray(train.mask_ratios(config, step))
        plan = capacity.plan(config, ratios, shards)
        visible = length - np.asarray(masking.num_masked(jnp.asarray(ratios), length))
        caps = plan or (length,) * capacity.num_classes(config, shards)
        assert all(c % width == 0 or c == length for c in caps)
        # Group g of microbatch j sits in class (g mod G/k) // (G / (k K)); its visible count fits the class.
        per_class = visible.reshape(accum, len(caps), -1)
        assert (per_class <= np.asarray(caps)[None, :, None]).all(), (step, plan)
        # ...and the capacity is the smallest bucket that holds them.
        assert all(c - width < v for c, v in zip(caps, per_class.max(axis=(0, 2))))


def test_number_of_classes_respects_groups_and_shards():
    config = se._config()  # batch 16, 4 groups, encoder_classes 2
    assert capacity.num_classes(config, 1) == 2 and capacity.num_classes(config, 8) == 2
    assert capacity.num_classes(config, 16) == 1  # 8 examples a class cannot spread over 16 shards
    config.model.encoder_classes = 4
    config.grad_accum_steps = 2  # 2 groups a microbatch
    assert capacity.num_classes(config, 1) == 2


def test_gathered_encoder_equals_key_masked():
    params = ee._params(0)
    ratios = jnp.sort(jnp.asarray([0.1, 0.3, 0.6, 0.9], jnp.float32))
    mask = masking.random_masks(jax.random.key(0), ratios, 8, ee.LENGTH)
    tokens = jax.random.normal(jax.random.key(1), (8, ee.LENGTH, ee.TOKEN_DIM))
    keep = np.asarray(keep_mask(mask, ee.BUFFER))
    full = np.asarray(_apply((), params, tokens, mask))
    visible = ee.LENGTH - np.asarray(mask).sum(1)
    assert visible[:4].min() > visible[4:].max()  # ascending ratios: classes of falling visible counts
    tight = tuple(int(v) for v in visible[::2])  # 4 classes of 2, each at exactly its visible count
    for plan in [(int(visible[:4].max()), int(visible[4:].max())), (64, 32), tight, (64, 48, 32, 16)]:
        out = np.asarray(_apply(plan, params, tokens, mask))
        np.testing.assert_allclose(out[keep], full[keep], atol=ee.ATOL, rtol=0, err_msg=str(plan))
    # Control: a class whose capacity is below its visible count loses tokens, and the comparison sees it.
    short = np.asarray(_apply((int(visible[0]) - 2, 32), params, tokens, mask))
    assert np.abs(short[keep] - full[keep]).max() > 1e-2


def _grads(shape, accum, planned):
    """test_grad_accum._run's (loss, metrics, batch_stats, grads) of se.STEP, the encoder key-masked or at the plan
    of the step's ratios (asserted to gather: not every class at full capacity)."""
    config = se._config(shape)
    config.grad_accum_steps = accum
    devices = jax.devices()[:1] if shape == (1, 1, 1) else jax.devices()[:8]
    mesh = sharding.make_mesh(config, devices)
    plan = ()
    if planned:
        ratios = np.asarray(train.mask_ratios(config, se.STEP))
        plan = capacity.plan(config, ratios, sharding.batch_divisor(mesh, config))
        assert plan and min(plan) < config.model.seq_len, plan
    grad_fn = jax.value_and_grad(train.loss_fn, has_aux=True) if accum == 1 else train.accumulated_grads

    def fn(params, batch_stats, frozen, batch, step):
        return grad_fn(params, batch_stats, config, frozen, batch, step, plan=plan)

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
        (loss, (metrics, stats)), grads = jax.jit(fn)(*ga._args(config, mesh))
    return jax.device_get((loss, metrics, stats, grads))


@pytest.mark.parametrize("shape,accum", [((1, 1, 1), 1), ((2, 2, 2), 2)], ids=["one-device", "2-slices-on-2x2x2"])
def test_loss_and_grads_at_a_plan_equal_the_key_masked_step(shape, accum):
    loss0, metrics0, stats0, grads0 = ga._run(1)  # key-masked, one device, the whole batch
    loss, metrics, stats, grads = _grads(shape, accum, planned=True)
    np.testing.assert_allclose(loss, loss0, rtol=se.RTOL)
    for k in metrics0:
        np.testing.assert_allclose(metrics[k], metrics0[k], rtol=se.RTOL, atol=1e-6, err_msg=k)
    se._assert_tree_close(stats, stats0, "batch_stats")
    se._assert_tree_close(grads, grads0, "grad")


def _step_flops(ratio, encoder_depth):
    """XLA's FLOPs of the train step of the shrunken tiny config at a fixed mask ratio, at its plan.

    Counted on the lowered program (XLA's cost analysis before optimisation), which skips compiling four train
    steps: the ratio below was 0.2540 lowered and 0.2539 compiled (2026-12-06)."""
    # 4x4 raw patches (64 tokens) and capacity classes: the tiny default's 16 tokens leave too few to count.
    config = th.tiny_config(masking__fixed_ratio=ratio, model__encoder_depth=encoder_depth, mesh__shape=(1, 1, 1),
                            tokenizer__patch_size=4, tokenizer__pca_dim=0, model__seq_len=64, model__token_dim=48,
                            model__encoder_classes=2, model__encoder_buckets=4)
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    ratios = np.asarray(train.mask_ratios(config, 0))
    plan = capacity.plan(config, ratios, 1)
    state = train.abstract_state(config, mesh)
    frozen = frozen_lib.abstract(config, frozen_lib.tiny_t5_config(config), None)
    batch = compile_lib.abstract_batch(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
        lowered = train.jit_step(config, mesh, frozen, batch, plan).lower(state, frozen, batch, ratios)
    cost = lowered.cost_analysis()
    return plan, float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def test_encoder_flops_follow_the_visible_tokens():
    # Two encoder blocks' FLOPs (forward and backward) = the step with 3 blocks minus the step with 1.
    plan0, with0 = _step_flops(0.0, 3)
    _, without0 = _step_flops(0.0, 1)
    plan75, with75 = _step_flops(0.75, 3)
    _, without75 = _step_flops(0.75, 1)
    assert plan0 == () and plan75 == (16, 16)  # 64 tokens, 48 masked: buckets of 64 / 4
    ratio = (with75 - without75) / (with0 - without0)
    assert ratio <= 0.35, ratio
