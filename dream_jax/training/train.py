"""DREAM training: train state, the jitted step, and the loop (`train_and_evaluate(config, workdir)`).

Sections follow big_vision's train.py: optimiser, state (shapes first with jax.eval_shape, then created directly
into its shardings), loss, update step (one jax.jit with in/out shardings and donation), and the loop (input,
restore, steps, metrics, NaN guard, checkpoints, preemption and Ctrl-C). Randomness: every random draw of step s
comes from fold_in(key(seed), s), so a resumed run repeats exactly the draws of an uninterrupted one.

Dimension letters: B global batch, L tokens, T token dim, G mask groups.
"""

import dataclasses
import functools
import logging
import os
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from dream_jax import preflight, runtime, sharding
from dream_jax import checkpoint as checkpoint_lib
from dream_jax import frozen as frozen_lib
from dream_jax import summary as summary_lib
from dream_jax import tokens as tokens_lib
from dream_jax.data import pipeline
from dream_jax.evaluation import report
from dream_jax.evaluation import run as eval_run
from dream_jax.models import contrastive, diffusion_head, precision, transformer
from dream_jax.models.dream import DREAM, mean_pool
from dream_jax.state import (TrainState, abstract_state, create_state, global_norm, learning_rate,
                             make_optimizer, state_shardings, total_steps)
from dream_jax.training import capacity, masking, profiler


# ---------------------------------------------------------------------------------------------------- loss
def step_rngs(config, step):
    names = ("ratios", "masks", "dropout", "diffusion", "caption_drop", "posterior")
    keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), step), len(names))
    return dict(zip(names, keys))


def mask_ratios(config, step):
    """float32 [G]: the step's group ratios (from step_rngs' "ratios" key), ascending.

    Which group gets which of a step's ratios is free (a batch's examples are exchangeable); ascending, contiguous
    groups have similar ratios, so the encoder's classes of contiguous groups (training/capacity.py) each run at
    a capacity close to their own visible counts. The train loop draws them before the step (host_mask_ratios) to
    choose the step's capacity plan and hands them in; a caller without them (tests) gets the same draw in the step.
    """
    return jnp.sort(masking.sample_mask_ratios(step_rngs(config, step)["ratios"], step, config))


def host_mask_ratios(config):
    """step -> numpy [G] mask_ratios, computed on the host's CPU device when there is one, so that drawing them
    does not queue behind the train step running on the accelerator."""
    draw = jax.jit(functools.partial(mask_ratios, config))
    try:  # this process's own device: with several processes, device 0 may belong to another one
        device = jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without cpu
        device = jax.local_devices()[0]

    def host(step):
        with jax.default_device(device):
            return np.asarray(draw(np.int32(step)))

    return host


def prepare_inputs(config, frozen, batch, rngs, step, ratios=None):
    """Everything the model sees this step, with all randomness drawn: tokens, masks, cond features.

    `ratios`: the step's mask_ratios when drawn beforehand (the train loop); None draws them here.
    """
    tokens = tokens_lib.images_to_tokens(config, frozen, batch["image"], rngs["posterior"])
    ratios = mask_ratios(config, step) if ratios is None else ratios
    mask = masking.random_masks(rngs["masks"], ratios, tokens.shape[0], tokens.shape[1])
    cond = frozen_lib.cond_features(config, frozen, batch["cond_ids"], batch["cond_mask"])
    drop = jax.random.bernoulli(rngs["caption_drop"], config.loss.text_drop_prob, (cond.shape[0],))
    cond = jnp.where(drop[:, None, None], frozen.empty_cond[None].astype(cond.dtype), cond)
    return tokens, mask, ratios, cond


def loss_fn(params, batch_stats, config, frozen, batch, step, ratios=None, plan=()):
    """Total loss and metrics of one global batch; returns (loss, (metrics, new batch_stats)). `plan`: the
    encoder's capacity plan (dream_jax/training/capacity.py; () = all positions)."""
    model = DREAM(config.model, capacity=plan)
    rngs = step_rngs(config, step)
    tokens, mask, ratios, cond = prepare_inputs(config, frozen, batch, rngs, step, ratios)
    (img, txt, z, logit_scale), updates = model.apply(
        {"params": params, "batch_stats": batch_stats}, tokens, mask, batch["clip_ids"], cond, train=True,
        rngs={"dropout": rngs["dropout"]}, mutable=["batch_stats"])
    visible = 1.0 - jnp.mean(mask.astype(jnp.float32), axis=-1)
    valid = visible >= config.loss.min_visible_for_clip
    clip_loss, clip_acc = contrastive.loss(img, txt, logit_scale, valid)
    gen_loss, gen_metrics = diffusion_head.loss(
        functools.partial(_head, model, params), rngs["diffusion"], tokens, z, mask, config.diffusion.num_steps,
        config.masking.num_groups, config.diffusion.batch_mul, config.loss.min_masked_for_gen)
    total = config.loss.gen_weight * gen_loss + config.loss.clip_weight * clip_loss
    metrics = _metrics(total, gen_loss, gen_metrics, clip_loss, clip_acc, valid, logit_scale, ratios, batch)
    return total, (metrics, updates["batch_stats"])


def _head(model, params, x_t, t, z):
    """The diffusion head of `params` (diffusion_head.loss's `denoise`)."""
    return model.apply({"params": params}, x_t, t, z, method=DREAM.denoise)


def _metrics(total, gen_loss, gen_metrics, clip_loss, clip_acc, valid, logit_scale, ratios, batch):
    return {
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


# ------------------------------------------------------------------------------------ gradient accumulation
def _features(module, tokens, mask, clip_ids):
    """Encoder output [b, P, D], its mean over kept positions [b, D] and the text embedding [b, E] of a slice."""
    x, keep = module.encode(tokens, mask, deterministic=False)
    return x, mean_pool(x, keep), module.text_embedding(clip_ids)


def _pooled_and_text(module, tokens, mask, clip_ids):
    return _features(module, tokens, mask, clip_ids)[1:]


def _pooled_text_and_z(module, tokens, mask, clip_ids, cond):
    x, pooled, txt = _features(module, tokens, mask, clip_ids)  # first, as in the first pass: same dropout draws
    return pooled, txt, module.decode(x, mask, module.align_text(cond, False), False)


def _slices(x, k, axis=0):
    """[.., B, ..] -> [k, .., B/k, ..]: k contiguous slices of the batch axis, each spread over the batch shards."""
    x = jnp.moveaxis(x.reshape(x.shape[:axis] + (k, x.shape[axis] // k) + x.shape[axis + 1:]), axis, 0)
    names = [None] * x.ndim
    names[axis + 1] = "batch"
    return nn.with_logical_constraint(x, tuple(names))


def accumulated_grads(params, batch_stats, config, frozen, batch, step, ratios=None, plan=()):
    """`jax.value_and_grad(loss_fn, has_aux=True)(...)`, computed over `config.grad_accum_steps` microbatches.

    Inputs and every random draw (masks, caption drop, posterior, diffusion t and noise) are made once for the
    whole batch, as loss_fn makes them, then cut into k contiguous slices of whole mask groups, so the diffusion
    loss (a mean over groups) is the mean of the slices' losses. The contrastive loss couples the whole batch
    (global negatives, BatchNorm statistics), so it runs GradCache-style: a first pass without gradients pools
    each slice's encoder output and embeds its captions; projection, BatchNorm and InfoNCE then run on the whole
    batch and give d loss / d features; the second pass backpropagates slice by slice through
    features . stop_gradient(d loss / d features) beside the diffusion loss. The result is the big batch's up to
    float rounding, except that dropout masks are drawn per slice (the same in both passes). Costs one more
    forward of the encoder and text tower; activation memory is that of one slice.
    """
    k, c = config.grad_accum_steps, config.loss
    model = DREAM(config.model, capacity=plan)
    rngs = step_rngs(config, step)
    tokens, mask, ratios, cond = prepare_inputs(config, frozen, batch, rngs, step, ratios)
    size, length = mask.shape
    copies, groups = config.diffusion.batch_mul, config.masking.num_groups // k
    t, noise = diffusion_head.draws(rngs["diffusion"], copies * size * length, tokens.shape[-1],
                                    config.diffusion.num_steps)
    t = _slices(t.reshape(copies, size, length), k, axis=1)
    noise = _slices(noise.reshape(copies, size, length, -1), k, axis=1)
    inputs = tuple(_slices(x, k) for x in (tokens, mask, batch["clip_ids"], cond))
    dropout = jax.vmap(lambda j: jax.random.fold_in(rngs["dropout"], j))(jnp.arange(k))
    variables = {"params": params, "batch_stats": batch_stats}

    def first_pass(_, xs):
        rng, tok, msk, ids, _ = xs
        return None, model.apply(variables, tok, msk, ids, method=_pooled_and_text, rngs={"dropout": rng})

    _, (pooled, txt) = jax.lax.scan(first_pass, None, (dropout, *inputs))
    pooled, txt = pooled.reshape(size, -1), txt.reshape(size, -1)  # contiguous slices: the batch's order
    valid = 1.0 - jnp.mean(mask.astype(jnp.float32), axis=-1) >= c.min_visible_for_clip

    def clip_objective(params, pooled, txt):
        img, updates = model.apply({"params": params, "batch_stats": batch_stats}, pooled, True,
                                   method=lambda m, h, train: m.image_projection(h, train), mutable=["batch_stats"])
        loss, acc = contrastive.loss(img, txt, params["logit_scale"], valid)
        return loss, (acc, updates["batch_stats"])

    (clip_loss, (clip_acc, new_stats)), (clip_grads, d_pooled, d_txt) = jax.value_and_grad(
        clip_objective, argnums=(0, 1, 2), has_aux=True)(params, pooled, txt)

    def slice_loss(params, rng, tok, msk, ids, cnd, dp, dt, tt, nz):
        pooled, txt, z = model.apply({"params": params, "batch_stats": batch_stats}, tok, msk, ids, cnd,
                                     method=_pooled_text_and_z, rngs={"dropout": rng})
        drawn = (tt.reshape(-1), nz.reshape(-1, nz.shape[-1]))
        gen, gen_metrics = diffusion_head.loss(functools.partial(_head, model, params), None, tok, z, msk,
                                               config.diffusion.num_steps, groups, copies, c.min_masked_for_gen,
                                               drawn=drawn)
        surrogate = jnp.sum(pooled * dp) + jnp.sum(txt.astype(jnp.float32) * dt)
        return c.gen_weight * gen / k + c.clip_weight * surrogate, (gen, gen_metrics)

    def second_pass(total, xs):
        (_, aux), grads = jax.value_and_grad(slice_loss, has_aux=True)(params, *xs)
        return jax.tree.map(jnp.add, total, grads), aux

    grads, (gen, gen_metrics) = jax.lax.scan(
        second_pass, jax.tree.map(jnp.zeros_like, params),
        (dropout, *inputs, _slices(d_pooled, k), _slices(d_txt, k), t, noise))
    grads = jax.tree.map(lambda g, cg: g + c.clip_weight * cg, grads, clip_grads)
    active = gen_metrics["gen_active_frac"] * groups  # active groups per slice
    gen_metrics = {
        "gen_loss_active": jnp.sum(gen_metrics["gen_loss_active"] * jnp.maximum(active, 1.0))
        / jnp.maximum(jnp.sum(active), 1.0),
        "gen_active_frac": jnp.mean(gen_metrics["gen_active_frac"]),
    }
    gen_loss = jnp.mean(gen)
    total = c.gen_weight * gen_loss + c.clip_weight * clip_loss
    metrics = _metrics(total, gen_loss, gen_metrics, clip_loss, clip_acc, valid, params["logit_scale"], ratios,
                       batch)
    return (total, (metrics, new_stats)), grads


# --------------------------------------------------------------------------------------------- update step
def train_step(config, plan, state, frozen, batch, ratios):
    """One optimiser step: grads, AdamW, EMA; returns (new state, metrics). `plan`: the encoder's capacity plan,
    `ratios`: mask_ratios of the step."""
    grads, batch_stats, metrics = step_grads(config, plan, state, frozen, batch, ratios)
    return apply_grads(config, state, grads, batch_stats, metrics)


def step_grads(config, plan, state, frozen, batch, ratios):
    """train_step's first half, the model's: (grads, new batch_stats, metrics) of the step's loss."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True) if config.grad_accum_steps == 1 else accumulated_grads
    (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, config, frozen, batch, state.step,
                                                 ratios=ratios, plan=plan)
    return grads, batch_stats, metrics


def apply_grads(config, state, grads, batch_stats, metrics):
    """train_step's second half, the optimiser's: clip and AdamW (make_optimizer), the EMA, and the norms and lr
    added to `metrics`; returns (new state, metrics)."""
    tx = make_optimizer(config)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rate = config.optim.ema_rate
    ema = jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, state.ema_params, params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), param_norm=global_norm(config, params),
                   lr=learning_rate(config)(state.step))
    return TrainState(state.step + 1, params, batch_stats, opt_state, ema), metrics


def jit_step(config, mesh, frozen, example_batch, plan=()):
    """train_step(state, frozen, batch, ratios [G]) under jax.jit with explicit in/out shardings (the state buffer
    donated); not yet traced. Its encoder runs at the capacity plan `plan` (dream_jax/training/capacity.py; () = all
    positions).

    `frozen` and `example_batch` may be arrays or ShapeDtypeStructs (--mode=compile lowers it without weights).
    Call or lower it inside `jax.set_mesh(mesh)` and the config's logical-axis rules.
    """
    state_sh = state_shardings(config, mesh)
    frozen_sh = sharding.frozen_shardings(frozen, mesh)
    batch_sh = jax.tree.map(lambda x: sharding.batch_sharding(mesh, config, np.ndim(x)), example_batch)
    return jax.jit(functools.partial(train_step, config, tuple(plan)),
                   in_shardings=(state_sh, frozen_sh, batch_sh, sharding.replicated(mesh)),
                   out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))


def compile_step(config, mesh, frozen, example_batch):
    """run(state, frozen, batch, step=None): one train step, its encoder at the capacity plan of the step's ratios.

    The ratios are drawn on the host first (host_mask_ratios; `step` = state.step, read from the state when not
    given, which waits for the previous step), the plan chosen (capacity.plan) and the step compiled for that plan
    (jit_step, cached: a run meets a few plans), then called inside the mesh and the logical-axis rules.
    `run.compile_seconds` adds up the wall time of the calls that compiled a new plan (each waited for), so that
    the progress line's steps/s and ETA leave compilation out.
    """
    ratios_of = host_mask_ratios(config)
    shards = sharding.batch_divisor(mesh, config)
    steps = {}

    def run(state, frozen, batch, step=None):
        ratios = ratios_of(int(state.step) if step is None else step)
        plan = capacity.plan(config, ratios, shards)
        new = plan not in steps
        if new:
            jax.block_until_ready(state)  # the previous steps' time is theirs, not this compilation's
            start = time.monotonic()
            steps[plan] = jit_step(config, mesh, frozen, example_batch, plan)
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
            out = steps[plan](state, frozen, batch, ratios)
        if new:
            jax.block_until_ready(out)
            run.compile_seconds += time.monotonic() - start
        return out

    run.compile_seconds = 0.0
    return run


# ---------------------------------------------------------------------------------------------------- loop
class NonFiniteError(RuntimeError):
    """Raised by the NaN guard; the last good checkpoint is left in place."""


class Interrupted(RuntimeError):
    """Raised after a Ctrl-C stopped the loop and its checkpoint was written (main exits with 130, as a shell's
    Ctrl-C does, so that `train && eval` does not go on)."""


@dataclasses.dataclass
class _StopSignals:
    """Turns SIGTERM (a preemption) and the first SIGINT (Ctrl-C) into a flag the loop polls, so that it checkpoints
    the step it is on and exits cleanly; a second Ctrl-C aborts at once (KeyboardInterrupt) without saving.

    With several processes only some may receive the signal, so they agree (an all-gather of the flag) every
    `check_every` steps and all stop at the same step.
    """

    multiprocess: bool = False
    check_every: int = 1
    requested: bool = False
    interrupted: bool = False  # by SIGINT on this process (the exit code says so)

    def __call__(self, signum, frame):
        del frame
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            logging.warning("Ctrl-C: checkpointing at the end of this step, then stopping (Ctrl-C again aborts "
                            "without saving)")
        else:
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
    if config.grad_accum_steps < 1 or config.masking.num_groups % config.grad_accum_steps:
        raise ValueError(f"grad_accum_steps={config.grad_accum_steps} must be >= 1 and divide masking.num_groups="
                         f"{config.masking.num_groups} (each microbatch holds whole mask groups)")
    if config.batch_size % config.masking.num_groups:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by masking.num_groups="
                         f"{config.masking.num_groups}")
    if config.tokenizer.kind not in ("vae", "pixels"):
        raise ValueError(f"tokenizer.kind={config.tokenizer.kind!r}; expected 'vae' or 'pixels'")
    image, patch = config.tokenizer.image_size, config.tokenizer.patch_size
    stride = patch * (8 if config.tokenizer.kind == "vae" else 1)
    channels = 4 if config.tokenizer.kind == "vae" else 3
    dim = config.tokenizer.pca_dim or channels * patch * patch
    if config.tokenizer.pca_dim and (config.tokenizer.kind != "pixels" or config.data.source != "shapes"):
        raise ValueError(f"tokenizer.pca_dim={config.tokenizer.pca_dim} is fitted on the embedded shapes: it needs "
                         f"tokenizer.kind='pixels' and data.source='shapes', not {config.tokenizer.kind!r} / "
                         f"{config.data.source!r}")
    if image % stride:
        raise ValueError(f"tokenizer ({config.tokenizer.kind}, image {image}, patch {patch}): the image size is not "
                         f"a multiple of the token stride {stride}")
    if (image // stride) ** 2 != m.seq_len or dim != m.token_dim:
        raise ValueError(f"tokenizer ({config.tokenizer.kind}, image {image}, patch {patch}) gives "
                         f"{(image // stride) ** 2} tokens of dim {dim}, but model.seq_len="
                         f"{m.seq_len} and model.token_dim={m.token_dim}")
    transformer.remat_policy(m.remat)
    precision.compute_dtype(m.precision)
    transformer.check_choice("model.attention", m.attention, transformer.ATTENTION_IMPLEMENTATIONS)
    _check_schedule(config)
    profiler.parse(config.profile_steps, total_steps(config))
    learning_rate(config)


def _check_schedule(config):
    """The optimiser's and the loop's numbers: each range as a ValueError naming the setting."""
    o = config.optim
    ranges = [("optim.base_lr", o.base_lr, o.base_lr > 0, "> 0"),
              ("optim.weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
              ("optim.b1", o.b1, 0 <= o.b1 < 1, "in [0, 1)"),
              ("optim.b2", o.b2, 0 <= o.b2 < 1, "in [0, 1)"),
              ("optim.grad_clip", o.grad_clip, o.grad_clip > 0, "> 0"),
              ("optim.warmup_epochs", o.warmup_epochs, o.warmup_epochs >= 0, ">= 0"),
              ("optim.ema_rate", o.ema_rate, 0 <= o.ema_rate < 1, "in [0, 1)"),
              ("total_steps", config.total_steps, config.total_steps == -1 or config.total_steps >= 1,
               ">= 1, or -1 for num_epochs x steps_per_epoch"),
              ("steps_per_epoch", config.steps_per_epoch, config.steps_per_epoch >= 1, ">= 1"),
              ("num_epochs", config.num_epochs, config.total_steps != -1 or config.num_epochs > 0,
               "> 0 (total_steps=-1 takes the length from it)"),
              ("log_every", config.log_every, config.log_every >= 1, ">= 1"),
              ("checkpoint_every", config.checkpoint_every, config.checkpoint_every >= 1, ">= 1"),
              ("keep_checkpoints", config.keep_checkpoints, config.keep_checkpoints >= 1, ">= 1")]
    for name, value, ok, expected in ranges:
        if not ok:
            raise ValueError(f"{name}={value} must be {expected}")


def check_batch(config, mesh):
    """ValueError unless every microbatch (the batch / grad_accum_steps) splits evenly over the batch shards."""
    shards, k = sharding.batch_divisor(mesh, config), config.grad_accum_steps
    if config.batch_size % (shards * k):
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the {shards} batch shards of mesh.shape"
                         + (f" x grad_accum_steps={k}" if k > 1 else ""))


def train_and_evaluate(config, workdir):
    """Trains (resuming from `workdir` if it has a checkpoint) until total_steps, then writes the final report
    (evaluation/report.py) if this call ran the last step; returns the final state."""
    started = time.monotonic()
    validate_config(config)
    preflight.check_files(config)
    if config.get("eval_every", 0):
        eval_run.validate(config)  # a missing eval dataset or weights file fails now, not hours in
    report.validate(config)
    mesh = sharding.make_mesh(config)
    check_batch(config, mesh)
    rt = runtime.create(config, mesh)
    data = iter(pipeline.make_dataset(config, rt.tokenizers))

    manager = checkpoint_lib.Manager(workdir, config)
    try:  # closing releases the workdir's lock, also after a failed restore or compile (a notebook may rerun)
        state, finished = _train_steps(config, workdir, rt, mesh, data, manager)
    finally:
        manager.close()
    if finished:
        report.run(rt, workdir, runtime.state_variables(state, config.sampling.use_ema), total_steps(config),
                   time.monotonic() - started)
    return state


def _train_steps(config, workdir, rt, mesh, data, manager):
    """The loop of train_and_evaluate from restore to the last step: (final state, whether it ran the last step)."""
    frozen = rt.frozen
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

    stop_signals = _StopSignals(multiprocess=jax.process_count() > 1, check_every=config.log_every)
    previous = {signum: signal.signal(signum, stop_signals) for signum in (signal.SIGTERM, signal.SIGINT)}
    progress = summary_lib.Progress(start, num_steps, config.batch_size)
    trace = profiler.StepTrace(profiler.parse(config.profile_steps, num_steps), os.path.join(workdir, "tensorboard"),
                               start)
    pending = []
    batch = first
    compiled = 0.0  # step_fn.compile_seconds already handed to progress.pause
    finished = False
    try:
        for step in range(start + 1, num_steps + 1):
            trace.before(step)
            state, metrics = step_fn(state, frozen, batch, step - 1)
            trace.after(step, (state, metrics))
            pending.append(metrics)
            last = step == num_steps
            stop = stop_signals.should_stop(step)
            if last or step % config.log_every == 0 or step % config.checkpoint_every == 0 or stop:
                progress.pause(step_fn.compile_seconds - compiled)
                compiled = step_fn.compile_seconds
                _flush(pending, step, writer, progress)
                pending = []
            if last or step % config.checkpoint_every == 0 or stop:
                manager.save(step, state, data)
            finished = last
            if stop:
                if stop_signals.interrupted:
                    raise Interrupted(f"interrupted at step {step}, its checkpoint saved: rerun the same command "
                                      "to resume")
                break
            start_eval = time.monotonic()
            if eval_run.maybe_evaluate(rt, workdir, step, state) is not None:
                progress.pause(time.monotonic() - start_eval)
            if not last:
                batch = sharding.global_batch(next(data), mesh, config)
    finally:
        trace.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        writer.close()
    return state, finished


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
