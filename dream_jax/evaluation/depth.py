"""Monocular depth probe: DINOv2's linear depth head ("lin. 1") on frozen patch tokens (evaluation/dense.py).

Head "bins" (the default, DINOv2's classification-regression after AdaBins): K = `bins` logits per patch token,
upsampled bilinearly to the target resolution, then ReLU + 0.1 and normalised over the bins ("linear"
normalisation) into weights of `bins` depths spaced uniformly from min_depth to max_depth ("UD"); the prediction is
their weighted sum. Head "regression": one output, max_depth * sigmoid. Training minimises DINOv2's SigLoss (the
scale-invariant log error of Eigen et al.: sqrt(var(g) + 0.15 mean(g)^2), g = log(pred + 1e-3) - log(gt + 1e-3))
over the valid pixels of the batch (min_depth < gt <= max_depth; 0 marks a missing reading), with its 100-step
warm-up on the mean term alone; DINOv2's extra gradient loss is left out. Metrics (the usual NYU set, each computed
per test image over its valid pixels with the prediction clipped to [min_depth, max_depth], then averaged over the
images): rmse, abs_rel = mean |pred - gt| / gt, log10 = mean |log10 pred - log10 gt|, and delta_k = the fraction
of pixels with max(pred / gt, gt / pred) < 1.25^k (k = 1, 2, 3). NYU-v2: max_depth 10 m; the synthetic set:
depths 0.8 to 2.4 for the shape and 5 for the background (data/synthetic.py, shape_depth).

Dimension letters: N images, B batch, S target size, K bins.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.evaluation import dense

HEADS = ("bins", "regression")
SIGLOSS_EPS = 1e-3
SIGLOSS_WARMUP = 100
BIN_EPS = 0.1

# target_key: the tfds feature of the depth map (metres); head 'bins' (classification-regression) or 'regression'.
DEFAULTS = dict(**dense.DEFAULTS, test_split="validation", target_key="depth", min_depth=1e-3, max_depth=10.0,
                head="bins", bins=256)


def validate(config, name, s):
    """A known head, a sensible depth range and both splits readable (errors name the setting)."""
    if s.head not in HEADS:
        raise ValueError(f"config.evals.{name}.head={s.head!r}; expected one of {HEADS}")
    if not 0 < s.min_depth < s.max_depth:
        raise ValueError(f"config.evals.{name}: expected 0 < min_depth < max_depth, got {s.min_depth} and "
                         f"{s.max_depth}")
    if s.head == "bins" and s.bins < 2:
        raise ValueError(f"config.evals.{name}.bins={s.bins}; expected at least 2")
    dense.make_sources(config, name, s, "depth")


def to_depth(outputs, head, min_depth, max_depth):
    """Head outputs [..., K] -> depth [...]: bins' weighted centres, or max_depth * sigmoid for regression."""
    if head == "regression":
        return max_depth * jnp.squeeze(jax.nn.sigmoid(outputs), -1)
    weights = jnp.maximum(outputs, 0.0) + BIN_EPS
    weights = weights / jnp.sum(weights, -1, keepdims=True)
    return weights @ jnp.linspace(min_depth, max_depth, outputs.shape[-1])


def valid_mask(gt, min_depth, max_depth):
    return (gt > min_depth) & (gt <= max_depth)


def sig_loss(pred, gt, step, min_depth, max_depth):
    """DINOv2's SigLoss over the valid pixels of pred and gt [B, S, S]; the variance term joins after the warm-up."""
    gt = gt.astype(jnp.float32)
    valid = valid_mask(gt, min_depth, max_depth)
    count = jnp.maximum(jnp.sum(valid), 1)
    g = jnp.where(valid, jnp.log(pred + SIGLOSS_EPS) - jnp.log(gt + SIGLOSS_EPS), 0.0)
    mean = jnp.sum(g) / count
    var = jnp.sum(jnp.where(valid, (g - mean) ** 2, 0.0)) / count
    return jnp.sqrt(0.15 * mean ** 2 + jnp.where(step >= SIGLOSS_WARMUP, var, 0.0) + 1e-12)


def metrics(pred, gt, min_depth, max_depth):
    """{'rmse', 'abs_rel', 'log10', 'delta1', 'delta2', 'delta3', 'images'}: per image over its valid pixels
    (pred [N, S, S] clipped to the range), averaged over the images with any valid pixel."""
    pred = np.clip(np.asarray(pred, np.float64), min_depth, max_depth)
    gt = np.asarray(gt, np.float64)
    rows = []
    for p, t in zip(pred, gt):
        valid = valid_mask(t, min_depth, max_depth)
        if not valid.any():
            continue
        p, t = p[valid], t[valid]
        ratio = np.maximum(p / t, t / p)
        rows.append([np.sqrt(np.mean((p - t) ** 2)), np.mean(np.abs(p - t) / t),
                     np.mean(np.abs(np.log10(p) - np.log10(t)))] + [np.mean(ratio < 1.25 ** k) for k in (1, 2, 3)])
    if not rows:
        raise ValueError("no test image has a valid depth pixel")
    values = np.mean(rows, axis=0)
    names = ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")
    return {**{k: float(v) for k, v in zip(names, values)}, "images": float(len(rows))}


def run(ctx, name, s):
    """Trains the linear depth head on the train split's patch features; the NYU metrics on the test split."""
    train, test = dense.make_sources(ctx.config, name, s, "depth")
    out = functools.partial(to_depth, head=s.head, min_depth=s.min_depth, max_depth=s.max_depth)

    def loss(outputs, gt, step):
        return sig_loss(out(outputs), gt, step, s.min_depth, s.max_depth)

    preds, gt = dense.fit_and_predict(ctx, s, train, test, loss, 1 if s.head == "regression" else s.bins, out)
    return metrics(preds, gt, s.min_depth, s.max_depth)
