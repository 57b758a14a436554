"""Semantic segmentation probe: DINOv2's linear head on frozen patch tokens (evaluation/dense.py), scored by mIoU.

The head's class logits, bilinearly upsampled to the label resolution, are trained with softmax cross-entropy
averaged over the labelled pixels (IGNORE = 255 is skipped, as mmseg's ignore_index). The metric is mmseg's: a
confusion matrix accumulated over every test pixel, per class IoU = intersection / union, mIoU the mean over the
classes present in the ground truth or the predictions (a class absent from both has no IoU and is left out; one
predicted but absent counts 0), plus pixel accuracy (aAcc). ADE20K (`scene_parse150`): 150 classes, "other"
ignored; the synthetic set: 29 classes, the background included.

Dimension letters: N images, B batch, S label size, K classes.
"""

import functools

import jax.numpy as jnp
import numpy as np
import optax

from dream_jax.data import dense_sources
from dream_jax.evaluation import dense

# target_key: the tfds feature of the per-pixel labels; num_classes: of a tfds dataset (ids 1..num_classes in its
# annotation, 0 ignored); 'shapes' has its own 29.
DEFAULTS = dict(**dense.DEFAULTS, test_split="test", target_key="annotation", num_classes=150)


def validate(config, name, s):
    """A class count that leaves room for the ignore label, both splits readable (errors name the setting)."""
    if not 0 < s.num_classes < dense_sources.IGNORE:
        raise ValueError(f"config.evals.{name}.num_classes={s.num_classes}; expected 1..{dense_sources.IGNORE - 1}")
    dense.make_sources(config, name, s, "segmentation")


def cross_entropy(logits, labels, step, num_classes):
    """Mean softmax cross-entropy over the labelled pixels of logits [B, S, S, K] and labels [B, S, S]."""
    del step
    labels = labels.astype(jnp.int32)
    valid = labels < num_classes
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)


def confusion(pred, target, num_classes):
    """int64 [K, K] counts of (true class, predicted class) over the pixels whose label is a class (not IGNORE)."""
    target, pred = np.asarray(target).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    keep = target < num_classes
    return np.bincount(num_classes * target[keep] + pred[keep], minlength=num_classes ** 2).reshape(
        num_classes, num_classes)


def metrics(conf):
    """{'miou', 'pixel_accuracy', 'classes'} of a confusion matrix [K, K] (rows true, columns predicted)."""
    conf = np.asarray(conf, np.float64)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    iou = inter[present] / union[present]
    return {"miou": float(iou.mean()) if iou.size else 0.0,
            "pixel_accuracy": float(inter.sum() / max(conf.sum(), 1.0)), "classes": float(present.sum())}


def run(ctx, name, s):
    """Trains the linear head on the train split's patch features; mIoU and pixel accuracy on the test split."""
    train, test = dense.make_sources(ctx.config, name, s, "segmentation")
    k = train.num_classes
    preds, labels = dense.fit_and_predict(ctx, s, train, test, functools.partial(cross_entropy, num_classes=k), k,
                                          lambda logits: jnp.argmax(logits, -1).astype(jnp.uint8))
    return metrics(confusion(preds, labels, k))
