"""Frozen encoder features of fully visible images for the linear probe and few-shot evaluators.

As the authors' linear probe (PAPER.md §4; the model side is interface.Predict.features): the encoder runs on
unmasked images (tokens from the config's tokenizer; the buffer filled with class_emb(0) as in training), its
output is mean-pooled over the buffer tokens ("buffer", the paper's default), the image tokens ("image") or both
("all"), then `fc_norm`. The authors' fc_norm is a LayerNorm that the DREAM checkpoint does not contain, so it
stays at its init (weight 1, bias 0): a LayerNorm without affine here (eps 1e-6, timm's). Features are extracted
once per (checkpoint step, weights, dataset, split, pooling) in jitted batches sharded over the mesh's batch axes,
and cached as WORKDIR/eval/features/step{S}_{ema|raw}/{source key}_{pooling}.npz (features float32 [N, D],
labels int32 [N]).

Dimension letters: N images, B batch, P = buffer + L positions, D width.
"""

import logging
import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np

from dream_jax import summary
from dream_jax.data import eval_sources

POOLINGS = ("buffer", "image", "all")


def pool(x, buffer_size, pooling):
    """Encoder output [B, P, D] -> [B, D]: mean over the buffer, the image tokens, or all positions."""
    if pooling == "buffer":
        return jnp.mean(x[:, :buffer_size], axis=1)
    if pooling == "image":
        return jnp.mean(x[:, buffer_size:], axis=1)
    if pooling == "all":
        return jnp.mean(x, axis=1)
    raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")


def fc_norm(x, eps=1e-6):
    """LayerNorm without affine (the authors' fc_norm at its init)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def batches(source, batch_size, num_threads=8):
    """uint8 image batches [B, H, W, 3] and labels [B] of a labelled source, read in parallel threads."""
    ds = grain.MapDataset.source(source).batch(batch_size, drop_remainder=False)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads))
    for batch in it:
        yield np.asarray(batch["image"], np.uint8), np.asarray(batch["label"], np.int32)


def extract(ctx, source, pooling="buffer", batch_size=256, seed=0):
    """(features float32 [N, D], labels int32 [N]) of a labelled source: ctx.predict.features in sharded batches."""
    feats, labels = [], []
    start, done = time.monotonic(), 0

    def images():  # streamed: the labels of each batch stay on the host
        for x, y in batches(source, batch_size):
            labels.append(y)
            yield (x,)

    key = jax.random.key(seed)
    for i, out in enumerate(ctx.batched(lambda b, x: ctx.predict.features(x, jax.random.fold_in(key, b), pooling),
                                        images())):
        feats.append(out)
        done += len(out)
        log_progress(ctx, f"features of {source.key}", i, done, len(source), start)
    return np.concatenate(feats), np.concatenate(labels)


def log_progress(ctx, what, batch, done, total, start):
    """A progress line with ETA after every 20th batch and the last, of an extraction begun at `start`."""
    if batch % 20 == 0 or done == total:
        elapsed = time.monotonic() - start
        ctx.log(f"{what}: {done}/{total} images, ETA {summary.format_seconds(elapsed / done * (total - done))}")


def cache_path(workdir, step, use_ema, source, pooling):
    name = f"step{step}_{'ema' if use_ema else 'raw'}"
    return os.path.join(workdir, "eval", "features", name, f"{source.key}_{pooling}.npz")


def cached_extract(ctx, source, pooling="buffer", batch_size=256):
    """`extract`, read from / written to the feature cache of ctx's workdir, step and weights (process 0 writes;
    a file is written atomically)."""
    path = cache_path(ctx.workdir, ctx.step, ctx.use_ema, source, pooling)
    if os.path.exists(path):
        with np.load(path) as f:
            if f["features"].shape[0] == len(source):
                ctx.log(f"features of {source.key} ({pooling}) from the cache {path}")
                return f["features"], f["labels"]
        logging.warning("feature cache %s does not match %d images; extracting again", path, len(source))
    features, labels = extract(ctx, source, pooling, batch_size)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, features=features, labels=labels)
        os.replace(tmp, path)
    return features, labels


def of_split(ctx, name, s, split, num):
    """(features, labels, number of classes) of one split of evaluator `name`'s dataset, through the cache."""
    source = eval_sources.evaluator_source(ctx.config, name, s, split, num)
    x, y = cached_extract(ctx, source, s.pooling, s.batch_size)
    return x, y, len(source.class_names)
