"""The resumable training loop of evaluators that train (finetune, the linear probe's "mae" protocol).

An evaluator hands in its train state (a pytree whose "step" is an int32 scalar), a jitted step and a batch
reader; `fit` places the state replicated over the mesh and each global batch sharded over its batch axes (every
process reads the whole global batch, as ctx.batched does), and checkpoints the state with checkpoint.Manager under
WORKDIR/eval/<name>/step<S>_<ema|raw>_<settings digest>/checkpoints every `checkpoint_every` steps, when stopped early and at the end.
The data order is a seeded permutation per epoch, so the position in the data is the step: a rerun restores the
newest checkpoint and continues bit-exactly, and a finished run only restores. Progress lines carry an ETA.

Dimension letters: N examples, B batch.
"""

import concurrent.futures
import hashlib
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dream_jax import batching, checkpoint, sharding, summary
from dream_jax.evaluation import augment, features

_KEEP = ml_collections.ConfigDict(dict(keep_checkpoints=2))


# Settings that say how far or how often a run goes, not what it computes: changing them resumes the same run.
_RUN_CONTROL = ("enabled", "checkpoint_every", "stop_after")


def run_dir(ctx, name, s):
    """WORKDIR/eval/<name>/step<S>_<ema|raw>_<settings digest>: one evaluator's training of one checkpoint's
    weights with one set of settings, so a rerun with other settings starts its own run instead of resuming this."""
    settings = {k: v for k, v in s.to_dict().items() if k not in _RUN_CONTROL}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]
    return os.path.join(ctx.workdir, "eval", name, f"step{ctx.step}_{'ema' if ctx.use_ema else 'raw'}_{digest}")


def warmup_cosine(peak, warmup_steps, total_steps, min_lr=0.0):
    """MAE's per-iteration schedule (util/lr_sched.py): linear from 0 over warmup_steps, then a half cosine from
    peak to min_lr at total_steps."""
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup_steps, 1)
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        cosine = min_lr + (peak - min_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def check_settings(what, s):
    """The settings of every trained evaluator: epochs, base_lr, warmup_epochs, checkpoint_every, stop_after,
    interpolation and crop_min_scale (ValueError naming the setting)."""
    for key in ("epochs", "base_lr", "checkpoint_every"):
        if s[key] <= 0:
            raise ValueError(f"{what}.{key}={s[key]}; expected > 0")
    if not 0 <= s.warmup_epochs <= s.epochs:
        raise ValueError(f"{what}.warmup_epochs={s.warmup_epochs}; expected a value in [0, epochs={s.epochs}]")
    if s.stop_after < 0:
        raise ValueError(f"{what}.stop_after={s.stop_after}; expected >= 0 (0 = run to the end)")
    if s.interpolation not in augment.METHODS:
        raise ValueError(f"{what}.interpolation={s.interpolation!r}; expected one of {tuple(augment.METHODS)}")
    if not 0 < s.crop_min_scale <= 1:
        raise ValueError(f"{what}.crop_min_scale={s.crop_min_scale}; expected an area fraction in (0, 1]")


def steps_per_epoch(num_examples, batch_size, setting):
    """Full batches per epoch (the remainder of each epoch's permutation is dropped, as drop_last); `setting`
    names the batch size."""
    if num_examples < batch_size:
        raise ValueError(f"{setting}={batch_size} is larger than the {num_examples} training examples; lower it or "
                         "use more examples")
    return num_examples // batch_size


def batch_indices(num_examples, batch_size, seed, step):
    """The example indices [B] of global step `step`: the step's slice of epoch step // steps_per_epoch's seeded
    permutation."""
    epoch, position = divmod(step, num_examples // batch_size)
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    return order[position * batch_size:(position + 1) * batch_size]


class Reader:
    """Reads batches of a labelled source by index in threads: (images uint8 [B, H, W, 3], labels int32 [B])."""

    def __init__(self, source, num_threads=8):
        self.source = source
        self._pool = concurrent.futures.ThreadPoolExecutor(num_threads)

    def __call__(self, indices):
        items = list(self._pool.map(self.source.__getitem__, [int(i) for i in indices]))
        return (np.stack([it["image"] for it in items]).astype(np.uint8),
                np.asarray([it["label"] for it in items], np.int32))

    def close(self):
        self._pool.shutdown()


def replicate(mesh, tree):
    """The tree's arrays copied whole onto every device of the mesh: always copies, as the train step donates its
    state and the model's own variables (the encoder's initial parameters) must survive it."""
    return jax.device_put(tree, sharding.replicated(mesh), may_alias=False)


def check_batch(mesh, config, batch_size, setting):
    """ValueError naming `setting` unless the training batch splits evenly over the mesh's batch shards (no padded
    rows in a gradient)."""
    divisor = sharding.batch_divisor(mesh, config)
    if batch_size % divisor:
        raise ValueError(f"{setting}={batch_size} does not split over the mesh's {divisor} batch shards; use a "
                         f"multiple of {divisor}")


def fit(ctx, name, s, state, train_step, read_batch, total_steps, log_every=0):
    """Runs train_step(state, *sharded batch) -> (state, loss) from the newest checkpoint of this evaluator (or
    `state`, replicated) to total_steps, reading read_batch(step) -> host arrays; returns (state, steps done).

    The settings `s` name the run (run_dir) and give checkpoint_every and stop_after: > 0 stops (checkpointed) once
    that many steps are done overall, a long run split over jobs.
    """
    checkpoint_every, stop_after = s.checkpoint_every, s.stop_after
    directory = run_dir(ctx, name, s)
    state = replicate(ctx.mesh, state)
    manager = checkpoint.Manager(directory, _KEEP)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, start = manager.restore_latest(abstract)
    if restored is not None:
        state = restored
        ctx.log(f"{name}: resumed at step {start}/{total_steps} from {manager.directory}")
    start = start or 0
    end = min(total_steps, stop_after) if stop_after else total_steps
    log_every = log_every or max(1, total_steps // 20)
    began, step = time.monotonic(), start
    try:
        for step in range(start, end):
            placed = [batching.shard(ctx.mesh, ctx.config, a)[0] for a in read_batch(step)]
            with jax.set_mesh(ctx.mesh):
                state, loss = train_step(state, *placed)
            done = step + 1
            if done % checkpoint_every == 0 or done == end:
                manager.save(done, state)
            if done % log_every == 0 or done == end:
                rate = (time.monotonic() - began) / (done - start)
                ctx.log(f"{name}: step {done}/{total_steps}, loss {float(loss):.4f}, ETA "
                        f"{summary.format_seconds(rate * (total_steps - done))}")
        step = max(start, end)
    finally:
        manager.close()
    return state, step


def fit_source(ctx, name, s, state, train_step, source, batch_size, total_steps):
    """`fit` on seeded batches of a labelled source (batch_indices, read by a Reader): (state, progress
    {'epochs', 'steps'}, finished); a run that stop_after ended early says how to continue."""
    reader = Reader(source)
    try:
        state, done = fit(ctx, name, s, state, train_step,
                          lambda step: reader(batch_indices(len(source), batch_size, s.seed, step)), total_steps)
    finally:
        reader.close()
    if done < total_steps:
        ctx.log(f"{name}: stopped after {done} of {total_steps} steps (config.evals.{name}.stop_after); rerun to "
                "continue")
    return state, {"epochs": done / (len(source) // batch_size), "steps": float(done)}, done == total_steps


def linear_head(rng, width, num_classes, std):
    """A linear classifier {"kernel" [D, K], "bias" [K]}: torch's trunc_normal_(std) weight (cut at +-2, absolute,
    as timm's default) and a zero bias (MAE's heads)."""
    kernel = jax.random.truncated_normal(rng, -2.0 / std, 2.0 / std, (width, num_classes), jnp.float32) * std
    return {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}


def predict_source(ctx, source, fn, batch_size):
    """(outputs [N, ...], labels int32 [N]) of fn(batch index, sharded images uint8 [B, H, W, 3]) over a labelled
    source in order, through ctx.batched."""
    labels = []

    def images():  # the labels of each batch stay on the host
        for x, y in features.batches(source, batch_size):
            labels.append(y)
            yield (x,)

    outputs = np.concatenate(list(ctx.batched(fn, images())))
    return outputs, np.concatenate(labels)
