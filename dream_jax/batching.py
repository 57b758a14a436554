"""The one host-batch loop of every inference job (evaluators, sampling): pad, shard over the mesh, run, fetch, trim.

Every process holds the same host batch (inference reads the same prompts and images everywhere), so each fills
its own shards from it; outputs come back whole on every process. A batch is padded by repeating its last row to
a multiple of the mesh's batch shards (and, where the caller asks, to a fixed row count, so that a job's short last
batch runs the program compiled for the full ones), and the padding is cut from the outputs.

Dimension letters: B batch, N items.
"""

import jax
import numpy as np

from dream_jax import sharding


def shard(mesh, config, array, rows=0):
    """Pads the leading axis to at least `rows`, then to a multiple of the batch shards, and places it sharded:
    (global array, n)."""
    n = array.shape[0]
    padded = max(n, rows)
    pad = padded - n + (-padded) % sharding.batch_divisor(mesh, config)
    if pad:
        array = np.concatenate([array, np.repeat(array[-1:], pad, axis=0)])
    target = sharding.batch_sharding(mesh, config, array.ndim)
    return jax.make_array_from_callback(array.shape, target, lambda idx: array[idx]), n


def fetch(array):
    """A (possibly multi-host) sharded array as one numpy array on every process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def run(mesh, config, fn, batches, rows=0):
    """Yields, per host batch (a tuple of numpy arrays [B, ...] with one B), `fn(index, *sharded arrays)` run under
    the mesh on the batch padded to at least `rows`, fetched and trimmed to B rows: one array, or a tuple when `fn`
    returns one."""
    for index, arrays in enumerate(batches):
        placed = [shard(mesh, config, np.asarray(a), rows) for a in arrays]
        n = placed[0][1]
        with jax.set_mesh(mesh):
            out = fn(index, *[p[0] for p in placed])
        if isinstance(out, tuple):
            yield tuple(fetch(o)[:n] for o in out)
        else:
            yield fetch(out)[:n]


def slices(arrays, batch_size):
    """Host batches (tuples) of consecutive rows of equal-length arrays, the last one short."""
    total = len(arrays[0])
    for start in range(0, total, batch_size):
        yield tuple(a[start:start + batch_size] for a in arrays)
