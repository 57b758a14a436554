"""DREAM training: train state, the jitted step, and the loop (`train_and_evaluate(config, workdir)`).

Sections follow big_vision's train.py: optimiser, state (shapes first with jax.eval_shape, then created directly
into its shardings), loss, update step (one jax.jit with in/out shardings and donation), and the loop (input,
restore, steps, metrics, NaN guard, checkpoints, preemption). Randomness: every random draw of step s comes
from fold_in(key(seed), s), so a resumed run repeats exactly the draws of an uninterrupted one.

Dimension letters: B global batch, L tokens, T token dim, G mask groups.
"""

import dataclasses
import functools
import logging
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from dream_jax import checkpoint as checkpoint_lib
from dream_jax import frontend, losses, masking, sharding
from dream_jax import summary as summary_lib
from dream_jax.state import (TrainState, abstract_state, create_state, learning_rate, make_optimizer,
                             state_shardings, total_steps)
from dream_jax.data import pipeline
from dream_jax.models import gaussian_diffusion
from dream_jax.models.dream import DREAM


# ---------------------------------------------------------------------------------------------------- loss
def step_rngs(config, step):
    names = ("ratios", "masks", "dropout", "diffusion", "caption_drop", "posterior")
    keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), step), len(names))
    return dict(zip(names, keys))


def prepare_inputs(config, frozen, batch, rngs, step):
    """Everything the model sees this step, with all randomness drawn: tokens, masks, cond features."""
    tokens = frontend.images_to_tokens(config, frozen, batch["image"], rngs["posterior"])
    ratios = masking.sample_mask_ratios(rngs["ratios"], step, config)
    mask = masking.random_masks(rngs["masks"], ratios, tokens.shape[0], tokens.shape[1])
    cond = frontend.cond_features(config, frozen, batch["cond_ids"], batch["cond_mask"])
    drop = jax.random.bernoulli(rngs["caption_drop"], config.loss.text_drop_prob, (cond.shape[0],))
    cond = jnp.where(drop[:, None, None], frozen["empty_cond"][None].astype(cond.dtype), cond)
    return tokens, mask, ratios, cond


def loss_fn(params, batch_stats, config, frozen, batch, step):
    """Total loss and metrics of one global batch; returns (loss, (metrics, new batch_stats))."""
    model = DREAM(config.model)
    rngs = step_rngs(config, step)
    tokens, mask, ratios, cond = prepare_inputs(config, frozen, batch, rngs, step)
    (img, txt, z, logit_scale), updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, tokens, mask, batch["clip_ids"], cond, train=True,
        rngs={"dropout": rngs["dropout"]}, mutable=["batch_stats"])
    visible = 1.0 - jnp.mean(mask.astype(jnp.float32), axis=-1)
    valid = visible >= config.loss.min_visible_for_clip
    clip_loss, clip_acc = losses.contrastive_loss(img, txt, logit_scale, valid)
    denoise = lambda x, t, c: model.apply({"params": params}, x, t, c, method=DREAM.denoise)  # noqa: E731
    constants = gaussian_diffusion.make_schedule(config.diffusion.num_steps).constants()
    gen_loss, gen_metrics = losses.diffusion_loss(
        denoise, constants, rngs["diffusion"], tokens, z, mask, config.masking.num_groups,
        config.diffusion.batch_mul, config.loss.min_masked_for_gen)
    total = config.loss.gen_weight * gen_loss + config.loss.clip_weight * clip_loss
    metrics = {
        "loss": total,
        "gen_loss": gen_loss,
        "clip_loss": clip_loss,
        "clip_acc": clip_acc,
        "clip_valid_frac": jnp.mean(valid.astype(jnp.float32)),
        "logit_scale": jnp.exp(logit_scale),
        "mask_ratio_mean": jnp.mean(ratios),
        "mask_ratio_min": jnp.min(ratios),
        "mask_ratio_max": jnp.max(ratios),
        **gen_metrics,
        **pipeline.skip_metrics(batch),
    }
    return total, (metrics, updates["batch_stats"])


# --------------------------------------------------------------------------------------------- update step
def train_step(config, state, frozen, batch):
    """One optimiser step: grads, AdamW, EMA; returns (new state, metrics)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, config, frozen, batch, state.step)
    tx = make_optimizer(config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rate = config.optim.ema_rate
    ema = jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, state.ema_params, params)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(params)
    metrics["lr"] = learning_rate(config)(state.step)
    return TrainState(state.step + 1, params, batch_stats, opt_state, ema), metrics


def compile_step(config, mesh, frozen, example_batch):
    """The jitted step with explicit in/out shardings; the state buffer is donated."""
    state_sh = state_shardings(config, mesh)
    frozen_sh = jax.tree.map(lambda _: sharding.replicated(mesh), frozen)
    batch_sh = jax.tree.map(lambda x: sharding.batch_sharding(mesh, config, np.ndim(x)), example_batch)
    step = jax.jit(functools.partial(train_step, config), in_shardings=(state_sh, frozen_sh, batch_sh),
                   out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))

    def run(state, frozen, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
            return step(state, frozen, batch)

    return run


# ---------------------------------------------------------------------------------------------------- loop
class NonFiniteError(RuntimeError):
    """Raised by the NaN guard; the last good checkpoint is left in place."""


@dataclasses.dataclass
class _Preemption:
    """Turns SIGTERM into a flag the loop polls, so it can checkpoint and exit cleanly.

    With several processes only some may receive the signal, so they agree (an all-gather of the flag) every
    `check_every` steps and all stop at the same step.
    """

    multiprocess: bool = False
    check_every: int = 1
    requested: bool = False

    def __call__(self, signum, frame):
        del frame
        logging.warning("signal %d received: checkpointing and stopping", signum)
        self.requested = True

    def should_stop(self, step):
        if not self.multiprocess:
            return self.requested
        if step % self.check_every:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def validate_config(config):
    """One clear ValueError for inconsistent settings, before anything is built."""
    masking.validate(config.masking)
    m = config.model
    if m.width % m.num_heads:
        raise ValueError(f"model.width={m.width} is not divisible by model.num_heads={m.num_heads}")
    if m.text_tower.width % m.text_tower.num_heads:
        raise ValueError(f"model.text_tower.width={m.text_tower.width} is not divisible by its num_heads")
    if config.batch_size % config.masking.num_groups:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by masking.num_groups="
                         f"{config.masking.num_groups}")
    if config.tokenizer.kind not in ("vae", "pixels"):
        raise ValueError(f"tokenizer.kind={config.tokenizer.kind!r}; expected 'vae' or 'pixels'")
    image, patch = config.tokenizer.image_size, config.tokenizer.patch_size
    stride = patch * (8 if config.tokenizer.kind == "vae" else 1)
    channels = 4 if config.tokenizer.kind == "vae" else 3
    if image % stride or (image // stride) ** 2 != m.seq_len or channels * patch * patch != m.token_dim:
        raise ValueError(f"tokenizer ({config.tokenizer.kind}, image {image}, patch {patch}) gives "
                         f"{(image // stride) ** 2} tokens of dim {channels * patch * patch}, but model.seq_len="
                         f"{m.seq_len} and model.token_dim={m.token_dim}")
    learning_rate(config)


def train_and_evaluate(config, workdir):
    """Trains (resuming from `workdir` if it has a checkpoint) until total_steps; returns the final state."""
    validate_config(config)
    frontend.check_files(config)
    mesh = sharding.make_mesh(config)
    if config.batch_size % sharding.batch_divisor(mesh, config):
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the {sharding.batch_divisor(mesh, config)}"
                         " batch shards of mesh.shape")
    tokenizers = frontend.make_tokenizers(config)
    frozen = jax.device_put(frontend.load_frozen(config, tokenizers), sharding.replicated(mesh))
    data = iter(pipeline.make_dataset(config, tokenizers))

    manager = checkpoint_lib.Manager(workdir, config)
    state, restored_step = manager.restore_latest(abstract_state(config, mesh), data)
    if state is None:
        state = create_state(config, mesh)
        logging.info("initialised a new model in %s", workdir)
    else:
        logging.info("resumed from step %d in %s", restored_step, workdir)
    start = int(state.step)
    writer = summary_lib.Writer(workdir, enabled=jax.process_index() == 0, resume_step=start)
    writer.write_config(config)
    num_steps = total_steps(config)
    first = sharding.global_batch(next(data), mesh, config)
    step_fn = compile_step(config, mesh, frozen, first)

    preemption = _Preemption(multiprocess=jax.process_count() > 1, check_every=config.log_every)
    previous = signal.signal(signal.SIGTERM, preemption)
    progress = summary_lib.Progress(start, num_steps, config.batch_size)
    pending = []
    batch = first
    try:
        for step in range(start + 1, num_steps + 1):
            state, metrics = step_fn(state, frozen, batch)
            pending.append(metrics)
            last = step == num_steps
            stop = preemption.should_stop(step)
            if last or step % config.log_every == 0 or step % config.checkpoint_every == 0 or stop:
                _flush(pending, step, writer, progress)
                pending = []
            if last or step % config.checkpoint_every == 0 or stop:
                manager.save(step, state, data)
            if stop:
                break
            if not last:
                batch = sharding.global_batch(next(data), mesh, config)
    finally:
        signal.signal(signal.SIGTERM, previous)
        manager.close()
        writer.close()
    return state


def _flush(pending, step, writer, progress):
    """Fetches the pending step metrics, checks them (NaN guard) and writes their mean."""
    fetched = jax.device_get(pending)
    for offset, m in enumerate(fetched):
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            raise NonFiniteError(f"non-finite loss {m['loss']} / grad norm {m['grad_norm']} at step "
                                 f"{step - len(fetched) + offset + 1}; stopping without saving. The last good "
                                 "checkpoint is kept in the workdir.")
    collection = clu_metrics.Collection.create(**{k: clu_metrics.Average.from_output(k) for k in fetched[0]})
    merged = functools.reduce(lambda a, b: a.merge(b), [collection.single_from_model_output(**m) for m in fetched])
    means = {k: float(v) for k, v in merged.compute().items()}
    means.update(progress.update(step))
    writer.scalars(step, means)
    if writer.enabled:
        print(progress.line(step, means), flush=True)
