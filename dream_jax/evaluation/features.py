"""Frozen encoder features of fully visible images for the linear probe and few-shot evaluators.

As the authors' linear probe (PAPER.md §4): the encoder runs on unmasked images (tokens from the config's
tokenizer; the buffer filled with class_emb(0) as in training), its output is mean-pooled over the buffer tokens
("buffer", the paper's default), the image tokens ("image") or both ("all"), then `fc_norm`. The authors'
fc_norm is a LayerNorm that the DREAM checkpoint does not contain, so it stays at its init (weight 1, bias 0):
a LayerNorm without affine here (eps 1e-6, timm's). Features are extracted once per (checkpoint step, weights,
dataset, split, pooling) in jitted batches sharded over the mesh's batch axes, and cached as
WORKDIR/eval/features/step{S}_{ema|raw}/{source key}_{pooling}.npz (features float32 [N, D], labels int32 [N]).

Dimension letters: N images, B batch, P = buffer + L positions, D width.
"""

import functools
import logging
import os
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dream_jax import frontend, sharding, summary
from dream_jax.models.dream import DREAM

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


@functools.partial(jax.jit, static_argnames=("config", "pooling"))
def _pooled(config, pooling, variables, frozen, images, rng):
    tokens = frontend.images_to_tokens(config, frozen, images, rng)
    x, _ = DREAM(config.model).apply(variables, tokens, jnp.zeros(tokens.shape[:2], bool), method=DREAM.encode)
    return fc_norm(pool(x.astype(jnp.float32), config.model.buffer_size, pooling))


def pooled_features(config, variables, frozen, images, rng, pooling="buffer"):
    """fc_norm(pooled encoder output) [B, D] of fully visible uint8 images [B, H, W, 3]."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; expected one of {POOLINGS}")
    return _pooled(ml_collections.FrozenConfigDict(config), pooling, variables, frozen, images, rng)


def batches(source, batch_size, num_threads=8):
    """uint8 image batches [B, H, W, 3] and labels [B] of a labelled source, read in parallel threads."""
    ds = grain.MapDataset.source(source).batch(batch_size, drop_remainder=False)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads))
    for batch in it:
        yield np.asarray(batch["image"], np.uint8), np.asarray(batch["label"], np.int32)


def shard_batch(mesh, config, array):
    """Pads the leading axis to a multiple of the batch shards and places it sharded: (global array, n)."""
    n = array.shape[0]
    pad = (-n) % sharding.batch_divisor(mesh, config)
    if pad:
        array = np.concatenate([array, np.repeat(array[-1:], pad, axis=0)])
    target = sharding.batch_sharding(mesh, config, array.ndim)
    # Every process holds the same eval batch, so each fills its own shards from it.
    return jax.make_array_from_callback(array.shape, target, lambda idx: array[idx]), n


def fetch(array):
    """A (possibly multi-host) sharded array as one numpy array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def extract(config, variables, frozen, source, mesh, pooling="buffer", batch_size=256, seed=0, log=print):
    """(features float32 [N, D], labels int32 [N]) of a labelled source, in sharded jitted batches."""
    feats, labels = [], []
    start, done = time.monotonic(), 0
    for i, (images, y) in enumerate(batches(source, batch_size)):
        x, n = shard_batch(mesh, config, images)
        with jax.set_mesh(mesh):
            out = pooled_features(config, variables, frozen, x, jax.random.fold_in(jax.random.key(seed), i), pooling)
        feats.append(fetch(out)[:n])
        labels.append(y)
        done += n
        if i % 20 == 0 or done == len(source):
            elapsed = time.monotonic() - start
            log(f"features of {source.key}: {done}/{len(source)} images, ETA "
                f"{summary.format_seconds(elapsed / done * (len(source) - done))}")
    return np.concatenate(feats), np.concatenate(labels)


def cache_path(workdir, step, use_ema, source, pooling):
    name = f"step{step}_{'ema' if use_ema else 'raw'}"
    return os.path.join(workdir, "eval", "features", name, f"{source.key}_{pooling}.npz")


def cached_extract(config, variables, frozen, source, mesh, workdir, step, use_ema, pooling="buffer",
                   batch_size=256, log=print):
    """`extract`, read from / written to the feature cache (process 0 writes; a file is written atomically)."""
    path = cache_path(workdir, step, use_ema, source, pooling)
    if os.path.exists(path):
        with np.load(path) as f:
            if f["features"].shape[0] == len(source):
                log(f"features of {source.key} ({pooling}) from the cache {path}")
                return f["features"], f["labels"]
        logging.warning("feature cache %s does not match %d images; extracting again", path, len(source))
    features, labels = extract(config, variables, frozen, source, mesh, pooling, batch_size, log=log)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, features=features, labels=labels)
        os.replace(tmp, path)
    return features, labels
