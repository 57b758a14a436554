"""The linear probe's "mae" protocol: MAE's main_linprobe.py recipe (PAPER.md §4), the setting of DREAM's 72.7.

Each step the frozen encoder (interface.Predict.encoder, no gradient) runs on a fresh RandomResizedCrop + flip of
the batch (augment.py); its pooled output goes through fc_norm (features.fc_norm: the checkpoint has no fc_norm, as
in the fast protocol), BatchNorm1d(affine=False, eps 1e-6) (batch statistics in training; running statistics at
test, torch's momentum 0.1 and unbiased running variance) and a linear head (trunc_normal std 0.01, bias 0). The
head is trained with LARS (momentum 0.9, trust coefficient 0.001; weight decay and the trust ratio only on the
2-D kernel, as MAE's LARS skips parameters <= 1-D), lr = base_lr * batch / 256 with a per-step linear warmup and a
cosine to 0, softmax cross-entropy. Test images are the source's center crop; top-1 / top-5.

The LARS is optax's pieces (add_decayed_weights, scale_by_trust_ratio, trace) in torch's order: optax.lars
applies the learning rate before the momentum, MAE after it, which differs while the lr moves. The BatchNorm's
statistics are over the global batch (SyncBN); MAE's per-GPU BatchNorm1d sees its 1/32 of the 16384. The
crop comes from the source's center crop at the model's resolution, as in finetune.py. Resumable (trainer.py).

Dimension letters: B batch, D width, K classes.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from dream_jax.data import eval_sources
from dream_jax.evaluation import augment, trainer
from dream_jax.evaluation import features as features_lib

# MAE's values (main_linprobe.py: 90 epochs, 10 warmup, blr 0.1, batch 16384, weight decay 0); stop_after > 0
# stops, checkpointed, after that many steps overall (a rerun resumes).
SETTINGS = dict(epochs=90, warmup_epochs=10.0, base_lr=0.1, mae_batch_size=16384, weight_decay=0.0,
                interpolation="bicubic", crop_min_scale=0.08, checkpoint_every=1000, stop_after=0)

BN_MOMENTUM = 0.1
BN_EPS = 1e-6
HEAD_STD = 0.01


def validate(name, s):
    """The mae protocol's settings in range (ValueError naming the setting)."""
    what = f"config.evals.{name}"
    trainer.check_settings(what, s)
    if s.mae_batch_size < 2:
        raise ValueError(f"{what}.mae_batch_size={s.mae_batch_size}; expected >= 2 (BatchNorm needs a batch)")
    if s.weight_decay < 0:
        raise ValueError(f"{what}.weight_decay={s.weight_decay}; expected >= 0")


def lars(learning_rate, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001):
    """MAE's LARS (util/lars.py): g + wd * p and the trust ratio coefficient * |p| / |g + wd * p| on parameters
    > 1-D only, momentum on the result, then the learning rate."""
    matrices = lambda params: jax.tree.map(lambda p: jnp.ndim(p) > 1, params)  # noqa: E731
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=matrices),
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient), matrices),
        optax.trace(decay=momentum),
        optax.scale_by_learning_rate(learning_rate))


def batch_norm_train(x, stats):
    """BatchNorm1d(affine=False) in training: x [B, D] normalised by the batch statistics; the running statistics
    updated as torch (momentum 0.1, unbiased variance)."""
    mean, var = jnp.mean(x, axis=0), jnp.var(x, axis=0)
    n = x.shape[0]
    new = {"mean": (1 - BN_MOMENTUM) * stats["mean"] + BN_MOMENTUM * mean,
           "var": (1 - BN_MOMENTUM) * stats["var"] + BN_MOMENTUM * var * n / (n - 1)}
    return (x - mean) * jax.lax.rsqrt(var + BN_EPS), new


def batch_norm_test(x, stats):
    return (x - stats["mean"]) * jax.lax.rsqrt(stats["var"] + BN_EPS)


def _features(encode, params, frozen, images, rng, pooling):
    return features_lib.fc_norm(encode(params, frozen, images, rng, False, 0.0, pooling))


def make_train_step(encoder, tx, s, image_size):
    """jit(state, images uint8 [B, H, W, 3], labels [B]) -> (state, loss); the step's rng is fold_in(seed, step)."""
    key = jax.random.key(s.seed)

    @functools.partial(jax.jit, donate_argnums=(2,))
    def step(params, frozen, state, images, labels):
        k_crop, k_model = jax.random.split(jax.random.fold_in(key, state["step"]))
        x = augment.random_resized_crop_flip(k_crop, images, image_size, s.interpolation, (s.crop_min_scale, 1.0))
        x, bn = batch_norm_train(_features(encoder.encode, params, frozen, x, k_model, s.pooling), state["bn"])

        def loss_fn(head):
            return optax.softmax_cross_entropy_with_integer_labels(x @ head["kernel"] + head["bias"], labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state, "bn": bn,
                "step": state["step"] + 1}, loss

    return functools.partial(step, encoder.params, encoder.frozen)


def run(ctx, name, s):
    """Trains (or resumes) the probe on the train split: (test logits [N, K] or None when stopped by stop_after,
    test labels [N], number of classes, {'epochs', 'steps'})."""
    setting = f"config.evals.{name}.mae_batch_size"
    train_source = eval_sources.evaluator_source(ctx.config, name, s, s.train_split, s.num_train)
    test_source = eval_sources.evaluator_source(ctx.config, name, s, s.test_split, s.num_test)
    num_classes, width = len(train_source.class_names), ctx.config.model.width
    trainer.check_batch(ctx.mesh, ctx.config, s.mae_batch_size, setting)
    per_epoch = trainer.steps_per_epoch(len(train_source), s.mae_batch_size, setting)
    total = max(1, int(round(s.epochs * per_epoch)))
    schedule = trainer.warmup_cosine(s.base_lr * s.mae_batch_size / 256, int(round(s.warmup_epochs * per_epoch)),
                                     total)
    tx = lars(schedule, s.weight_decay)
    head = trainer.linear_head(jax.random.key(s.seed), width, num_classes, HEAD_STD)
    state = {"params": head, "opt_state": tx.init(head), "step": jnp.zeros((), jnp.int32),
             "bn": {"mean": jnp.zeros((width,)), "var": jnp.ones((width,))}}
    encoder = ctx.predict.encoder
    state, progress, finished = trainer.fit_source(
        ctx, name, s, state, make_train_step(encoder, tx, s, ctx.config.tokenizer.image_size), train_source,
        s.mae_batch_size, total)
    if not finished:
        return None, None, num_classes, progress
    test_logits, labels = trainer.predict_source(ctx, test_source, functools.partial(
        _test_logits, encoder.encode, s.pooling, encoder.params, encoder.frozen, state["params"], state["bn"]),
        s.batch_size)
    return test_logits, labels, num_classes, progress


@functools.partial(jax.jit, static_argnums=(0, 1))
def _test_logits(encode, pooling, params, frozen, head, bn, index, images):
    rng = jax.random.fold_in(jax.random.key(0), index)  # the VAE tokenizer's posterior draw
    x = batch_norm_test(_features(encode, params, frozen, images, rng, pooling), bn)
    return x @ head["kernel"] + head["bias"]
