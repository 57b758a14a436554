"""The pieces of the finetune evaluator and the linear probe's "mae" protocol, each against an independent formula:
drop path (expected value, per-example rate, MAE's per-block rates in unrolled and scanned stacks), layer-wise lr
decay and weight-decay groups (MAE's param_groups_lrd on the authors' parameter names), RandomResizedCrop and flip,
Mixup / CutMix targets, LARS and the BatchNorm of the probe.

Dimension letters: B batch, L tokens, D width, H W image size.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_helpers as th
from dream_jax import state as state_lib
from dream_jax.evaluation import augment, finetune, linear_probe_mae, trainer
from dream_jax.interop import layout, to_pytorch
from dream_jax.models import transformer


class _DropPath(nn.Module):
    rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        return transformer.drop_path(self, x, self.rate, deterministic)


def test_drop_path_keeps_the_mean_and_drops_whole_examples_at_the_rate():
    x = jnp.ones((20000, 3, 2))
    y = np.asarray(_DropPath(0.3).apply({}, x, False, rngs={"dropout": jax.random.key(0)}))
    dropped = np.all(y == 0, axis=(1, 2))
    assert abs(dropped.mean() - 0.3) < 0.015
    np.testing.assert_allclose(y[~dropped], 1 / 0.7, rtol=1e-6)  # whole examples kept, scaled by 1 / keep
    assert abs(y.mean() - 1.0) < 0.03
    np.testing.assert_array_equal(_DropPath(0.3).apply({}, x, True), x)  # deterministic: identity, no rng
    np.testing.assert_array_equal(_DropPath(0.0).apply({}, x, False), x)  # rate 0: identity, no rng


class _Stack(nn.Module):
    depth: int
    scan: bool
    drop_path: float
    remat: str = "none"

    @nn.compact
    def __call__(self, x, deterministic):
        return transformer.stack(transformer.Block, self.depth, "blocks", self.scan, self.remat,
                                 drop_path=self.drop_path, num_heads=2, mlp_dim=16)(x, None, deterministic)


def test_drop_path_rates_are_maes_linspace():
    np.testing.assert_allclose(transformer.drop_path_rates(0.3, 4), np.linspace(0, 0.3, 4), rtol=1e-12)
    assert transformer.drop_path_rates(0.3, 1) == [0.0]


@pytest.mark.parametrize("scan,remat", [(False, "none"), (True, "full")])
def test_each_block_gets_its_own_rate_unrolled_and_scanned(scan, remat):
    """Rates linspace(0, 1, 2) = (0, 1): the first block always runs, the second never, in training; so the train
    output is the first block alone, in both layouts, and the last block is back when deterministic."""
    x = jax.random.normal(jax.random.key(1), (4, 5, 8))
    two = _Stack(2, scan, 1.0, remat)
    params = jax.jit(lambda x: two.init({"params": jax.random.key(0)}, x, True)["params"])(x)
    first = params["blocks"] if scan else params["blocks_0"]
    first = jax.tree.map(lambda p: p[0], first) if scan else first
    one = _Stack(1, False, 0.0)
    expected = jax.jit(lambda p, x: one.apply({"params": {"blocks_0": p}}, x, True))(first, x)
    apply = jax.jit(lambda p, x, deterministic: two.apply({"params": p}, x, deterministic,
                                                          rngs={"dropout": jax.random.key(2)}), static_argnums=2)
    np.testing.assert_allclose(apply(params, x, False), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(apply(params, x, True), expected, atol=1e-3)


# ---------------------------------------------------------------------------------- layer-wise decay, groups
def _mae_layer_id(key, num_layers):
    """MAE's util/lr_decay.get_layer_id_for_vit on the authors' names (pos embed, buffer class_emb, z_proj = the
    patch embedding)."""
    if key.split(".")[0] in ("encoder_pos_embed_learned", "class_emb", "fake_latent", "z_proj", "z_proj_ln"):
        return 0
    if key.startswith("encoder_blocks."):
        return int(key.split(".")[1]) + 1
    return num_layers


def _authors_view(config, tree):
    """A tree over the fine-tuned encoder's parameters (broadcast to their shapes) in the authors' state_dict."""
    variables = th.random_like(state_lib.abstract_variables(config), 0)
    variables["params"]["encoder"] = tree
    state_dict = layout.to_state_dict(to_pytorch.table(config), variables)
    names = [k for k in state_dict if k.split(".")[0] in {"fake_latent", "encoder_pos_embed_learned", "class_emb",
                                                          "z_proj", "z_proj_ln", "encoder_blocks", "encoder_norm"}]
    return {k: np.asarray(state_dict[k]) for k in names}


@pytest.mark.parametrize("scan", [False, True])
def test_layer_scales_and_decay_groups_are_maes(scan):
    depth, decay = 3, 0.65
    config = th.tiny_config(model__encoder_depth=depth, model__scan_layers=scan)
    params = {"encoder": th.random_like(state_lib.abstract_variables(config), 0)["params"]["encoder"],
              **finetune.init_head(jax.random.key(0), config.model.width, 5)}
    scales = finetune.layer_scales(params, depth, decay)

    def full(tree):  # per-parameter values at the parameters' shapes
        return jax.tree.map(lambda v, p: np.broadcast_to(np.asarray(v, np.float32), p.shape), tree, params["encoder"])

    seen = _authors_view(config, full(scales["encoder"]))
    assert len(seen) == 9 + 12 * depth  # embedding 7, blocks, encoder_norm 2
    for key, value in seen.items():
        np.testing.assert_allclose(value, decay ** (depth + 1 - _mae_layer_id(key, depth + 1)), rtol=1e-6,
                                   err_msg=key)
    for part in ("fc_norm", "head"):  # the head is layer depth + 1: scale 1
        assert all(float(s) == 1.0 for s in jax.tree.leaves(scales[part]))
    # Weight decay: matrices only (the authors' tensors > 1-D), never position embeddings or the buffer tokens.
    mask = finetune.decay_mask(params)
    seen = _authors_view(config, full(jax.tree.map(np.float32, mask["encoder"])))
    for key, value in seen.items():
        expected = value.ndim > 1 and key.split(".")[0] not in finetune.NO_DECAY
        assert np.all(value == expected), key
    assert mask["head"] == {"kernel": True, "bias": False} and not any(jax.tree.leaves(mask["fc_norm"]))


def test_warmup_cosine_is_maes_schedule():
    schedule = trainer.warmup_cosine(2.0, 10, 110, min_lr=0.5)
    for step in (0, 5, 10, 60, 110):
        expected = (2.0 * step / 10 if step < 10 else
                    0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi * (step - 10) / 100)))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- augmentation
def test_random_resized_crop_boxes_stay_within_torchvisions_bounds():
    boxes = jax.jit(jax.vmap(lambda k: jnp.stack(augment.crop_box(k, 40, 30))))(jax.random.split(jax.random.key(0),
                                                                                          2000))
    top, left, h, w = np.asarray(boxes).T
    assert np.all((top >= 0) & (left >= 0) & (top + h <= 40) & (left + w <= 30))
    # Rounded sides: the area fraction and the ratio hold up to one pixel of rounding on each side.
    area = h * w / (40 * 30)
    assert area.min() >= (math.sqrt(0.08 * 1200) - 1) ** 2 / 1200 - 1e-9 and area.max() <= 1.0
    ratio = w / h
    assert np.all((ratio > 0.7) & (ratio < 1.45))
    assert area.std() > 0.1 and len(np.unique(top)) > 10  # random, not the fallback
    assert augment.fallback_box(40, 10, augment.RATIO) == (round(40 - 10 / 0.75) // 2, 0, round(10 / 0.75), 10)
    assert augment.fallback_box(10, 10, augment.RATIO) == (0, 0, 10, 10)


def test_resized_crop_and_flip():
    resized_crop = jax.jit(augment.resized_crop, static_argnums=(2, 3))
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    np.testing.assert_array_equal(resized_crop(jnp.asarray(image), (0, 0, 16, 16), 16, "bicubic"), image)
    # The box: a 2x upsample of the top-left quadrant keeps its mean colour.
    up = np.asarray(resized_crop(jnp.asarray(image), (0, 0, 8, 8), 16, "bicubic"), np.float32)
    np.testing.assert_allclose(up.mean(), image[:8, :8].astype(np.float32).mean(), atol=2.0)
    # The whole image at a fixed ratio: every output is the image or its mirror, and both happen.
    outs = jax.jit(augment.random_resized_crop_flip, static_argnums=(2, 3, 4, 5))(
        jax.random.key(0), jnp.asarray(np.stack([image] * 64)), 16, "bicubic", (1.0, 1.0), (1.0, 1.0))
    flipped = [bool(np.array_equal(o, image[:, ::-1])) for o in np.asarray(outs)]
    assert all(f or np.array_equal(o, image) for f, o in zip(flipped, np.asarray(outs)))
    assert 10 < sum(flipped) < 54


def _smoothed(labels, k, smoothing):
    out = np.full((len(labels), k), smoothing / k)
    out[np.arange(len(labels)), labels] += 1 - smoothing
    return out


def test_mixup_and_cutmix_mix_images_and_targets_as_timm():
    b, k, smoothing = 6, 5, 0.1
    labels = np.array([0, 1, 2, 3, 4, 0])
    images = np.repeat(np.arange(b, dtype=np.uint8)[:, None, None, None] * 40, 8, 1).repeat(8, 2).repeat(3, 3)
    one_hot = _smoothed(labels, k, smoothing)
    mix = jax.jit(augment.mix, static_argnames=("num_classes", "mixup", "cutmix", "smoothing"))
    x, y, lam = mix(jax.random.key(0), jnp.asarray(images), labels, num_classes=k, mixup=0.8, smoothing=smoothing)
    lam = float(lam)
    assert 0 < lam < 1
    np.testing.assert_allclose(y, lam * one_hot + (1 - lam) * one_hot[::-1], rtol=1e-5)
    np.testing.assert_array_equal(x, np.round(lam * images + (1 - lam) * images[::-1].astype(np.float32)))
    for seed in range(5):
        x, y, lam = mix(jax.random.key(seed), jnp.asarray(images), labels, num_classes=k, cutmix=1.0,
                        smoothing=smoothing)
        pasted = np.mean(np.asarray(x)[0, :, :, 0] == images[-1, 0, 0, 0])  # example 0 gets example 5's box
        np.testing.assert_allclose(float(lam), 1 - pasted, atol=1e-6)
        np.testing.assert_allclose(y, float(lam) * one_hot + (1 - float(lam)) * one_hot[::-1], rtol=1e-5)
    x, y, lam = mix(jax.random.key(0), jnp.asarray(images), labels, num_classes=k, smoothing=smoothing)  # no mix
    np.testing.assert_array_equal(x, images)
    np.testing.assert_allclose(y, one_hot, rtol=1e-6)
    assert float(lam) == 1.0


# ------------------------------------------------------------------------------------------ the MAE probe's parts
def test_lars_matches_maes_formula_over_two_steps():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(2)]
    lrs, wd, m = (0.5, 0.25), 0.1, 0.9
    tx = linear_probe_mae.lars(lambda step: jnp.asarray(lrs)[step], wd, m)
    state, p = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    # MAE's util/lars.py step in numpy: decay + trust ratio on > 1-D tensors, momentum, then the lr.
    ref, mu = {k: v.astype(np.float64) for k, v in params.items()}, {k: 0.0 for k in params}
    for lr, g in zip(lrs, grads):
        for k in ref:
            dp = g[k].astype(np.float64)
            if ref[k].ndim > 1:
                dp = dp + wd * ref[k]
                dp = dp * 0.001 * np.linalg.norm(ref[k]) / np.linalg.norm(dp)
            mu[k] = m * mu[k] + dp
            ref[k] = ref[k] - lr * mu[k]
    for k in ref:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-5, atol=1e-7)


def test_batch_norm_is_torchs_batchnorm1d_without_affine():
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32) * 3 + 1
    stats = {"mean": np.zeros(3, np.float32), "var": np.ones(3, np.float32)}
    y, new = linear_probe_mae.batch_norm_train(jnp.asarray(x), stats)
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-6), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new["mean"], 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * x.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(linear_probe_mae.batch_norm_test(jnp.asarray(x), new),
                               (x - new["mean"]) / np.sqrt(new["var"] + 1e-6), rtol=1e-5)


def test_batch_order_is_a_seeded_permutation_per_epoch():
    first = np.concatenate([trainer.batch_indices(10, 3, 0, s) for s in range(3)])
    assert len(set(first)) == 9  # one epoch: 9 distinct examples of 10 (the last batch is dropped)
    again = np.concatenate([trainer.batch_indices(10, 3, 0, s) for s in range(3)])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(trainer.batch_indices(10, 3, 0, 3), trainer.batch_indices(10, 3, 0, 0))
    assert trainer.steps_per_epoch(10, 3, "x") == 3
    with pytest.raises(ValueError, match="x=11 is larger than the 10"):
        trainer.steps_per_epoch(10, 11, "x")
