"""Training-time image augmentation of the fine-tune and MAE linear-probe evaluators, jittable, randomness from an
explicit rng: torchvision's RandomResizedCrop + horizontal flip (per example) and timm's Mixup / CutMix with
label smoothing (one lambda per batch, timm's mode="batch").

Images stay uint8 (the model's input, interface.Predict.encoder): a resized or mixed image is rounded back to
uint8, at most half a grey level from torchvision's float tensor. The crop is resampled from the whole image with
jax.image.scale_and_translate (antialiased, as PIL), so a kernel at the crop's border also reads the pixels just
outside it, where PIL's crop-then-resize clamps to the border.

Dimension letters: B batch, H W image size, S output size, K classes, N crop tries.
"""

import math

import jax
import jax.numpy as jnp

SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
TRIES = 10  # torchvision's attempts before the center-crop fallback
METHODS = {"bicubic": "cubic", "bilinear": "linear"}


def fallback_box(height, width, ratio=RATIO):
    """torchvision's fallback crop (top, left, h, w): the whole image, clamped to the ratio range, centred."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_box(rng, height, width, scale=SCALE, ratio=RATIO):
    """torchvision RandomResizedCrop.get_params as int32 scalars (top, left, h, w): up to TRIES draws of an area
    fraction in `scale` and a log-uniform aspect ratio in `ratio`; the first that fits the image wins, else the
    fallback box."""
    k_area, k_ratio, k_top, k_left = jax.random.split(rng, 4)
    area = jax.random.uniform(k_area, (TRIES,), minval=scale[0], maxval=scale[1]) * (height * width)
    aspect = jnp.exp(jax.random.uniform(k_ratio, (TRIES,), minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
    ws = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    hs = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first, found = jnp.argmax(fits), jnp.any(fits)
    f_top, f_left, f_h, f_w = fallback_box(height, width, ratio)
    h, w = jnp.where(found, hs[first], f_h), jnp.where(found, ws[first], f_w)
    top = jnp.where(found, jax.random.randint(k_top, (), 0, height - h + 1), f_top)
    left = jnp.where(found, jax.random.randint(k_left, (), 0, width - w + 1), f_left)
    return top, left, h, w


def resized_crop(image, box, size, method="bicubic"):
    """uint8 [H, W, 3], (top, left, h, w) -> the box resized to uint8 [S, S, 3]."""
    top, left, h, w = (jnp.asarray(v, jnp.float32) for v in box)
    scale = jnp.stack([size / h, size / w])
    out = jax.image.scale_and_translate(image.astype(jnp.float32), (size, size, image.shape[-1]), (0, 1), scale,
                                        -jnp.stack([top, left]) * scale, METHODS[method], antialias=True)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def random_resized_crop_flip(rng, images, size, method="bicubic", scale=SCALE, ratio=RATIO):
    """uint8 [B, H, W, 3] -> uint8 [B, S, S, 3]: an independent RandomResizedCrop and a horizontal flip with
    probability 1/2 per example (MAE's train transform without the normalisation)."""
    height, width = images.shape[1:3]

    def one(key, image):
        k_box, k_flip = jax.random.split(key)
        out = resized_crop(image, crop_box(k_box, height, width, scale, ratio), size, method)
        return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)

    return jax.vmap(one)(jax.random.split(rng, images.shape[0]), images)


def smooth_targets(labels, num_classes, lam, smoothing):
    """timm's mixup_target: lam * smoothed one-hot(labels) + (1 - lam) * smoothed one-hot(batch-reversed labels);
    smoothing puts smoothing / K on every class."""
    off = smoothing / num_classes
    one_hot = jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + off
    return lam * one_hot + (1.0 - lam) * one_hot[::-1]


def cutmix_box(rng, lam, height, width):
    """timm's rand_bbox: a box of side sqrt(1 - lam) of the image around a uniform centre, clipped to the image:
    (y0, y1, x0, x1)."""
    k_y, k_x = jax.random.split(rng)
    cut = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = (jnp.floor(height * cut).astype(jnp.int32), jnp.floor(width * cut).astype(jnp.int32))
    cy, cx = jax.random.randint(k_y, (), 0, height), jax.random.randint(k_x, (), 0, width)
    return (jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height),
            jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width))


def mix(rng, images, labels, num_classes, mixup=0.0, cutmix=0.0, smoothing=0.0, switch_prob=0.5):
    """timm's Mixup (mode "batch", prob 1): (images uint8 [B, H, W, 3], soft targets [B, K], lam).

    Each batch is mixed with itself reversed: Mixup blends the images with lam ~ Beta(mixup, mixup), CutMix pastes
    a box of the reversed batch with lam ~ Beta(cutmix, cutmix) corrected to the box's clipped area; with both on,
    CutMix is picked with probability switch_prob. Alpha 0 turns one off; both off leaves the images and gives
    label-smoothed targets (lam 1).
    """
    if not mixup and not cutmix:
        return images, smooth_targets(labels, num_classes, 1.0, smoothing), jnp.float32(1.0)
    k_switch, k_lam, k_box = jax.random.split(rng, 3)
    height, width = images.shape[1:3]
    reversed_ = images[::-1]
    if mixup:
        lam_mix = jax.random.beta(k_lam, mixup, mixup)
        mixed = jnp.round(lam_mix * images.astype(jnp.float32) + (1 - lam_mix) * reversed_.astype(jnp.float32))
        mixed = jnp.clip(mixed, 0, 255).astype(jnp.uint8)
    if cutmix:
        y0, y1, x0, x1 = cutmix_box(k_box, jax.random.beta(k_lam, cutmix, cutmix), height, width)
        rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
        inside = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))[None, :, :, None]
        cut = jnp.where(inside, reversed_, images)
        lam_cut = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
    if mixup and cutmix:
        use_cut = jax.random.uniform(k_switch) < switch_prob
        images, lam = jnp.where(use_cut, cut, mixed), jnp.where(use_cut, lam_cut, lam_mix)
    else:
        images, lam = (cut, lam_cut) if cutmix else (mixed, lam_mix)
    return images, smooth_targets(labels, num_classes, lam, smoothing), lam.astype(jnp.float32)
