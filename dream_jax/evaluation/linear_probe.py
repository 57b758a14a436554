"""Linear probe of the frozen encoder: `protocol` "fast" (the default, below) or "mae" (the authors' recipe,
linear_probe_mae.py).

The fast protocol runs on cached encoder features (dream_jax/evaluation/features.py), PAPER.md §4 adapted:
features are standardised with the train split's per-dimension mean and variance (the authors'
BatchNorm1d(affine=False) in front of the linear layer; its running statistics converge to exactly these), then a
linear classifier is trained with softmax cross-entropy, Adam and a cosine learning rate, plus an L2 penalty on the
weights. A small grid of (learning rate, L2) is trained at once (vmapped) on a random `1 - holdout` of the train
split and scored on the rest; the best point is retrained on the whole train split and its test accuracy is
reported. The authors train the probe with LARS for 90 epochs on augmented images (protocol "mae"); here the
features are extracted once from the un-augmented images, which is cheaper and usually a little lower.

Dimension letters: N examples, D feature dim, K classes, G grid points.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dream_jax.data import eval_sources
from dream_jax.evaluation import features as features_lib
from dream_jax.evaluation import linear_probe_mae

PROTOCOLS = ("fast", "mae")

# protocol "fast": a grid of learning rates x L2 penalties, each trained `steps` steps on batches of
# train_batch_size; `holdout` of the train split picks the best. protocol "mae": linear_probe_mae.SETTINGS (MAE's
# values). num_train / num_test 0: the whole split.
DEFAULTS = dict(enabled=True, **eval_sources.SOURCE_DEFAULTS, train_split="train", test_split="validation",
                num_train=0, num_test=0, pooling="buffer", protocol="fast", lrs=(1e-3, 3e-3, 1e-2),
                l2s=(0.0, 1e-4, 1e-3), steps=2000, train_batch_size=1024, holdout=0.1, **linear_probe_mae.SETTINGS)


def validate(config, name, s):
    """A known protocol and pooling, and both splits readable (ValueError / FileNotFoundError naming the setting)."""
    if s.protocol not in PROTOCOLS:
        raise ValueError(f"config.evals.{name}.protocol={s.protocol!r}; expected one of {PROTOCOLS}")
    if s.pooling not in features_lib.POOLINGS:
        raise ValueError(f"config.evals.{name}.pooling={s.pooling!r}; expected one of {features_lib.POOLINGS}")
    if s.protocol == "mae":
        linear_probe_mae.validate(name, s)
    eval_sources.evaluator_source(config, name, s, s.train_split, s.num_train)
    eval_sources.evaluator_source(config, name, s, s.test_split, s.num_test)


def run(ctx, name, s):
    """The protocol's probe: `evaluate` on the cached features of the train and test splits ("fast"), or
    linear_probe_mae.run."""
    if s.protocol == "mae":
        test_logits, labels, num_classes, progress = linear_probe_mae.run(ctx, name, s)
        return progress if test_logits is None else {**accuracy(test_logits, labels, num_classes), **progress}
    train_x, train_y, num_classes = features_lib.of_split(ctx, name, s, s.train_split, s.num_train)
    test_x, test_y, _ = features_lib.of_split(ctx, name, s, s.test_split, s.num_test)
    return evaluate(train_x, train_y, test_x, test_y, num_classes, tuple(s.lrs), tuple(s.l2s), s.steps,
                    s.train_batch_size, s.holdout, s.seed)


def standardize(train, *others, eps=1e-5):
    """(train, *others) standardised with train's mean and variance (BatchNorm1d(affine=False), eval mode)."""
    mean = train.mean(axis=0, keepdims=True)
    scale = 1.0 / np.sqrt(train.var(axis=0, keepdims=True) + eps)
    return tuple(((x - mean) * scale).astype(np.float32) for x in (train, *others))


@functools.partial(jax.jit, static_argnames=("num_classes", "steps", "batch_size"))
def fit(features, labels, lrs, l2s, rng, num_classes, steps, batch_size):
    """Linear classifiers for each grid point (lrs [G], l2s [G]): W [G, D, K], b [G, K]."""
    n, d = features.shape
    batch_size = min(batch_size, n)
    schedule = optax.cosine_decay_schedule(1.0, steps)

    def one(lr, l2):
        params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}
        tx = optax.chain(optax.scale_by_adam(), optax.scale_by_schedule(schedule), optax.scale(-lr))

        def loss(p, x, y):
            logits = x @ p["w"] + p["b"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + 0.5 * l2 * jnp.sum(p["w"] ** 2)

        def step(carry, key):
            p, opt = carry
            idx = jax.random.randint(key, (batch_size,), 0, n)
            grads = jax.grad(loss)(p, features[idx], labels[idx])
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(rng, steps))
        return params["w"], params["b"]

    return jax.vmap(one)(lrs, l2s)


def topk_accuracy(logits, labels, k=1):
    top = np.argsort(-np.asarray(logits), axis=-1)[..., :k]
    return np.mean(np.any(top == np.asarray(labels)[..., None], axis=-1), axis=-1)


def accuracy(logits, labels, num_classes):
    """{'top1', 'chance', and 'top5' with more than 5 classes} of logits [N, K] against labels [N]."""
    out = {"top1": float(topk_accuracy(logits, labels, 1)), "chance": 1.0 / num_classes}
    if num_classes > 5:
        out["top5"] = float(topk_accuracy(logits, labels, 5))
    return out


def evaluate(train_x, train_y, test_x, test_y, num_classes, lrs=(1e-3, 3e-3, 1e-2), l2s=(0.0, 1e-4, 1e-3),
             steps=500, batch_size=1024, holdout=0.1, seed=0):
    """{'top1', 'top5', 'best_lr', 'best_l2', 'holdout_top1'} of a linear probe with the hyper-parameters chosen
    on a held-out `holdout` of the train split."""
    train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
    train_y, test_y = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
    if train_x.shape[0] < 2 or test_x.shape[0] < 1:
        raise ValueError(f"linear probe needs >= 2 train and >= 1 test examples, got {train_x.shape[0]} and "
                         f"{test_x.shape[0]}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout}; expected a fraction in (0, 1)")
    if max(train_y.max(), test_y.max()) >= num_classes or min(train_y.min(), test_y.min()) < 0:
        raise ValueError(f"labels outside [0, {num_classes})")
    grid = [(lr, l2) for lr in lrs for l2 in l2s]
    lr_arr, l2_arr = (jnp.asarray([g[i] for g in grid], jnp.float32) for i in (0, 1))
    rng = np.random.default_rng(seed)
    order = rng.permutation(train_x.shape[0])
    n_val = max(1, int(round(holdout * len(order))))
    val, fit_idx = order[:n_val], order[n_val:]
    key = jax.random.key(seed)

    fx, vx = standardize(train_x[fit_idx], train_x[val])
    w, b = fit(jnp.asarray(fx), jnp.asarray(train_y[fit_idx]), lr_arr, l2_arr, key, num_classes, steps, batch_size)
    val_logits = np.einsum("nd,gdk->gnk", vx, np.asarray(w)) + np.asarray(b)[:, None]
    val_acc = topk_accuracy(val_logits, train_y[val][None], 1)
    best = int(np.argmax(val_acc))

    tx, sx = standardize(train_x, test_x)
    w, b = fit(jnp.asarray(tx), jnp.asarray(train_y), lr_arr[best:best + 1], l2_arr[best:best + 1], key,
               num_classes, steps, batch_size)
    logits = sx @ np.asarray(w[0]) + np.asarray(b[0])
    return {**accuracy(logits, test_y, num_classes), "best_lr": float(grid[best][0]), "best_l2": float(grid[best][1]),
            "holdout_top1": float(val_acc[best])}
