"""What the dense probes (segmentation.py, depth.py) share: DINOv2's linear protocol on frozen patch tokens.

The paper publishes no dense heads, so the probes follow DINOv2's linear ones (Oquab et al. 2023, §7.4; their
`BNHead`): the encoder runs once over every image, fully visible (interface.Predict.patch_features: the final
normalised image tokens on the h x w patch grid, buffer tokens dropped; float16 on the host); a BatchNorm without
affine, i.e. each channel standardised with the train split's mean and variance (what BatchNorm's running
statistics converge to), then one linear (1x1) layer maps each patch token to K outputs (class logits or depth-bin
logits), which are bilinearly upsampled (half-pixel centres, align_corners=False) to the target's S x S
resolution, where the loss and the metrics are computed. The layer is trained with AdamW on random batches of
train_batch_size images for `steps` steps, the learning rate rising linearly over the first 3.75% of them and then
falling linearly to 0 (DINOv2's 1500-step warmup and poly(1.0) decay over 40k iterations). Unlike DINOv2 the
images are not augmented (features are extracted once) and no [CLS] token is concatenated to the patch tokens.

Dimension letters: N images, B batch, h/w patch grid, D width, S target size, K head outputs.
"""

import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dream_jax.data import dense_sources
from dream_jax.evaluation import features as features_lib

# Settings both probes take. dataset: 'shapes' (the renderer's per-pixel ground truth) or a tfds name read from
# data_dir ('' = tfds' default); num_train / num_test 0: the whole split (512 / 512 for 'shapes'); batch_size:
# images per batch of feature extraction and scoring; train_batch_size: images per step of the head.
DEFAULTS = dict(enabled=True, dataset="shapes", data_dir="", image_key="image", train_split="train", num_train=0,
                num_test=0, steps=40000, lr=1e-3, weight_decay=1e-4, train_batch_size=16, batch_size=64, seed=0)

WARMUP_FRACTION = 0.0375


def make_sources(config, name, s, task):
    """(train, test) dense sources of evaluator `name` at the model's image size (raise naming the setting)."""
    what = f"config.evals.{name}"
    size = config.tokenizer.image_size
    return (dense_sources.make_dense_source(s, task, s.train_split, size, what, s.num_train),
            dense_sources.make_dense_source(s, task, s.test_split, size, what, s.num_test))


def extract(ctx, source, batch_size=64, seed=0):
    """(patch features float16 [N, h, w, D], targets [N, S, S]) of a dense source, in sharded batches."""
    feats, targets = [], []
    start, done = time.monotonic(), 0

    def images():  # streamed: the targets of each batch stay on the host
        ds = grain.MapDataset.source(source).batch(batch_size, drop_remainder=False)
        for batch in ds.to_iter_dataset(grain.ReadOptions(num_threads=8, prefetch_buffer_size=8)):
            targets.append(np.asarray(batch["target"]))
            yield (np.asarray(batch["image"], np.uint8),)

    key = jax.random.key(seed)
    for i, out in enumerate(ctx.batched(lambda b, x: ctx.predict.patch_features(x, jax.random.fold_in(key, b)),
                                        images())):
        feats.append(out.astype(np.float16))
        done += len(out)
        features_lib.log_progress(ctx, f"patch features of {source.key}", i, done, len(source), start)
    return np.concatenate(feats), np.concatenate(targets)


def channel_stats(features, chunk=256, eps=1e-5):
    """(mean, 1 / sqrt(var + eps)), float32 [D], over every patch of features [N, h, w, D], summed in float64
    chunks so that a large float16 split is never copied whole."""
    total, sq, count = 0.0, 0.0, 0
    for start in range(0, features.shape[0], chunk):
        x = features[start:start + chunk].reshape(-1, features.shape[-1]).astype(np.float64)
        total, sq, count = total + x.sum(0), sq + (x * x).sum(0), count + x.shape[0]
    mean = total / count
    var = np.maximum(sq / count - mean * mean, 0.0)
    return mean.astype(np.float32), (1.0 / np.sqrt(var + eps)).astype(np.float32)


def head_outputs(params, stats, features, size):
    """Standardised features [B, h, w, D] -> the linear layer's outputs upsampled bilinearly to [B, S, S, K]."""
    mean, inv_std = stats
    x = (features.astype(jnp.float32) - mean) * inv_std
    out = x @ params["w"] + params["b"]
    return jax.image.resize(out, (out.shape[0], size, size, out.shape[-1]), "bilinear")


def schedule(lr, steps):
    """Linear warmup over WARMUP_FRACTION of the steps, then linear decay to 0."""
    warmup = max(1, int(round(WARMUP_FRACTION * steps)))
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup),
                                 optax.linear_schedule(lr, 0.0, max(1, steps - warmup))], [warmup])


def train_head(features, targets, loss_fn, num_outputs, steps, batch_size, lr, weight_decay, seed=0, log=print):
    """The linear head (params {'w' [D, K], 'b' [K]}, channel stats) trained on features [N, h, w, D] and targets
    [N, S, S] to minimise loss_fn(outputs [B, S, S, K], targets [B, S, S], step)."""
    n, d, size = features.shape[0], features.shape[-1], targets.shape[1]
    stats = tuple(jnp.asarray(a) for a in channel_stats(features))
    key = jax.random.key(seed)
    # DINOv2 initialises its 1x1 convolution with N(0, 0.01); zero weights would sit on ReLU's kink in depth bins.
    params = {"w": 0.01 * jax.random.normal(key, (d, num_outputs)), "b": jnp.zeros((num_outputs,))}
    tx = optax.adamw(schedule(lr, steps), weight_decay=weight_decay)

    @jax.jit
    def step(params, opt, x, y, i):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(head_outputs(p, stats, x, size), y, i))(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    opt = tx.init(params)
    rng = np.random.default_rng(seed)
    batch_size = min(batch_size, n)
    for i in range(steps):
        idx = np.sort(rng.choice(n, batch_size, replace=False))
        params, opt, loss = step(params, opt, features[idx], targets[idx], i)
        if i % max(1, steps // 5) == 0 or i == steps - 1:
            log(f"dense head step {i + 1}/{steps}: loss {float(loss):.4f}")
    return params, stats


def predict(params, stats, features, size, batch_size, out_fn):
    """Yields out_fn(upsampled outputs [B, S, S, K]) as numpy, for consecutive batches of features [N, h, w, D]."""
    fn = jax.jit(lambda p, x: out_fn(head_outputs(p, stats, x, size)))
    for start in range(0, features.shape[0], batch_size):
        yield np.asarray(fn(params, features[start:start + batch_size]))


def fit_and_predict(ctx, s, train, test, loss_fn, num_outputs, out_fn):
    """Everything a dense probe does but its metric: (out_fn of the head's outputs on the test split, stacked
    [N, S, S], the test targets [N, S, S])."""
    train_x, train_y = extract(ctx, train, s.batch_size, s.seed)
    test_x, test_y = extract(ctx, test, s.batch_size, s.seed)
    params, stats = train_head(train_x, train_y, loss_fn, num_outputs, s.steps, s.train_batch_size, s.lr,
                               s.weight_decay, s.seed, ctx.log)
    return np.concatenate(list(predict(params, stats, test_x, test_y.shape[1], s.batch_size, out_fn))), test_y
