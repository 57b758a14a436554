"""End-to-end fine-tuning of the image encoder with a linear head: MAE's recipe (main_finetune.py, PAPER.md §4).

The encoder (interface.Predict.encoder: its parameter subtree only, so the decoder, text towers and head of the
generator hold no optimiser state) gets MAE's fc_norm (a trainable LayerNorm after pooling) and a linear head
(trunc_normal std 2e-5), and is trained with AdamW (0.9, 0.999), weight decay on matrices only (not on biases,
norms, position embeddings or the buffer tokens' class_emb: MAE's no_weight_decay list), layer-wise lr decay
(layer 0 = z_proj / position embedding / buffer tokens, i + 1 = encoder block i, depth + 1 = encoder_norm,
fc_norm and head; scale layer_decay^(depth + 1 - layer), MAE's param_groups_lrd), lr = base_lr * batch / 256
with a per-step linear warmup and a cosine to min_lr, label smoothing, drop path (linear over depth), and Mixup /
CutMix (alpha 0 = off). Train images get RandomResizedCrop + flip (augment.py); test images are the source's
center crop at the model's size; top-1 (and top-5 with more than 5 classes) on the test split.

Deviations from MAE: RandAugment(9, 0.5) and random erasing (0.25) are not applied; the crop is taken from the
source's center crop at the model's resolution (eval_sources), not from the full-size image, and the test crop
is that center crop (MAE: resize to 256/224 of the size, center crop); `crop_min_scale` (MAE's 0.08) bounds the
crop's area. The train step keeps the encoder, its gradients and Adam moments replicated on every device with the
batch sharded over the mesh (data parallel; no FSDP of the encoder). A run is checkpointed and resumable
(trainer.py).

Dimension letters: B batch, H W image size, D width, K classes, N blocks.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from dream_jax import state as state_lib
from dream_jax.data import eval_sources
from dream_jax.evaluation import augment, linear_probe, trainer
from dream_jax.evaluation import features as features_lib

# MAE's fine-tune settings per ViT size (B: 100 epochs, layer decay 0.65, drop path 0.1; L and H: 50 epochs, 0.75,
# 0.2 / 0.3); G, which MAE has no recipe for, takes H's.
MAE_RECIPES = {"B": dict(epochs=100, layer_decay=0.65, drop_path=0.1),
               "L": dict(epochs=50, layer_decay=0.75, drop_path=0.2),
               "H": dict(epochs=50, layer_decay=0.75, drop_path=0.3),
               "G": dict(epochs=50, layer_decay=0.75, drop_path=0.3)}

# MAE's ViT-B recipe at batch 1024 (base_lr is per 256 examples). pooling "image": MAE's global_pool over the
# image tokens ("buffer" / "all" as the probes). stop_after > 0: stop, checkpointed, after that many steps overall
# (a long run split over jobs; the next run resumes). num_train / num_test 0: the whole split.
DEFAULTS = dict(enabled=True, **{**eval_sources.SOURCE_DEFAULTS, "batch_size": 1024}, train_split="train",
                test_split="validation", num_train=0, num_test=0, **MAE_RECIPES["B"], base_lr=5e-4, min_lr=1e-6,
                weight_decay=0.05, warmup_epochs=5.0, label_smoothing=0.1, mixup=0.8, cutmix=1.0,
                pooling="image", interpolation="bicubic", crop_min_scale=0.08, checkpoint_every=1000, stop_after=0)

# The settings the train step depends on (make_training's cache key leaves the others out, e.g. stop_after).
STEP_SETTINGS = ("seed", "batch_size", "base_lr", "min_lr", "weight_decay", "layer_decay", "label_smoothing",
                 "drop_path", "mixup", "cutmix", "pooling", "interpolation", "crop_min_scale")

# Parameters MAE excludes from weight decay besides 1-D ones (its pos_embed and cls_token).
NO_DECAY = ("encoder_pos_embed_learned", "class_emb", "fake_latent")


def validate(config, name, s):
    """Settings in range and both splits readable (ValueError / FileNotFoundError naming the setting)."""
    what = f"config.evals.{name}"
    if s.pooling not in features_lib.POOLINGS:
        raise ValueError(f"{what}.pooling={s.pooling!r}; expected one of {features_lib.POOLINGS}")
    trainer.check_settings(what, s)
    for key, low, high in (("layer_decay", 0.0, 1.0), ("label_smoothing", 0.0, 0.999), ("drop_path", 0.0, 0.999)):
        if not low <= s[key] <= high:
            raise ValueError(f"{what}.{key}={s[key]}; expected a value in [{low}, {high}]")
    for key in ("mixup", "cutmix", "weight_decay", "min_lr"):
        if s[key] < 0:
            raise ValueError(f"{what}.{key}={s[key]}; expected >= 0 (0 = off)")
    eval_sources.evaluator_source(config, name, s, s.train_split, s.num_train)
    eval_sources.evaluator_source(config, name, s, s.test_split, s.num_test)


def layer_id(names, depth):
    """MAE's get_layer_id_for_vit on our parameter path: 0 embedding, i + 1 block i, depth + 1 the rest;
    None for the scanned stack (one layer per entry of its leading axis)."""
    if names[0] != "encoder":
        return depth + 1  # fc_norm and head
    if names[1] == "encoder_blocks":
        return None
    if names[1].startswith("encoder_blocks_"):
        return int(names[1].rsplit("_", 1)[1]) + 1
    return depth + 1 if names[1] == "encoder_norm" else 0


def _names(path):
    return [str(getattr(k, "key", k)) for k in path]


def layer_scales(params, depth, decay):
    """The lr scale of every parameter, decay^(depth + 1 - layer id): a scalar, or [N, 1, ...] along a scanned
    stack's leading axis."""
    def scale(path, leaf):
        layer = layer_id(_names(path), depth)
        if layer is None:
            per_block = decay ** (depth - np.arange(depth, dtype=np.float64))
            return jnp.asarray(per_block, jnp.float32).reshape((depth,) + (1,) * (jnp.ndim(leaf) - 1))
        return jnp.float32(decay ** (depth + 1 - layer))

    return jax.tree_util.tree_map_with_path(scale, params)


def decay_mask(params):
    """True where weight decay applies: state.decay_mask's rule (no biases or per-block 1-D tensors), and none on
    NO_DECAY."""
    def decayed(path, leaf, base):
        del leaf
        return bool(base) and not set(_names(path)) & set(NO_DECAY)

    return jax.tree_util.tree_map_with_path(decayed, params, state_lib.decay_mask(params))


def optimizer(s, depth, total_steps, warmup_steps):
    """AdamW with MAE's schedule, weight-decay groups and layer-wise lr decay (scaling each update, as MAE scales
    each group's lr, weight-decay term included)."""
    peak = s.base_lr * s.batch_size / 256
    return optax.chain(
        optax.adamw(trainer.warmup_cosine(peak, warmup_steps, total_steps, s.min_lr), b1=0.9, b2=0.999,
                    weight_decay=s.weight_decay, mask=decay_mask),
        optax.stateless(lambda updates, params: jax.tree.map(jnp.multiply, updates,
                                                             layer_scales(params, depth, s.layer_decay))))


def init_head(rng, width, num_classes):
    """MAE's fc_norm (LayerNorm, weight 1, bias 0) and head (trunc_normal std 2e-5)."""
    return {"fc_norm": {"scale": jnp.ones((width,)), "bias": jnp.zeros((width,))},
            "head": trainer.linear_head(rng, width, num_classes, 2e-5)}


def logits(params, pooled):
    """Pooled encoder output [B, D] -> class logits [B, K] through fc_norm and the head."""
    x = features_lib.fc_norm(pooled) * params["fc_norm"]["scale"] + params["fc_norm"]["bias"]
    return x @ params["head"]["kernel"] + params["head"]["bias"]


@functools.lru_cache(maxsize=4)
def make_training(encode, s, image_size, num_classes, depth, total_steps, warmup_steps):
    """(optimizer, jit(frozen, state, images uint8 [B, H, W, 3], labels [B]) -> (state, loss)) of the frozen
    STEP_SETTINGS `s`; the step's rng is fold_in(seed, step). Cached, so a rerun in one process with the same model
    (a stopped run resumed) compiles once."""
    key = jax.random.key(s.seed)
    tx = optimizer(s, depth, total_steps, warmup_steps)

    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(frozen, state, images, labels):
        k_crop, k_mix, k_model = jax.random.split(jax.random.fold_in(key, state["step"]), 3)
        x = augment.random_resized_crop_flip(k_crop, images, image_size, s.interpolation, (s.crop_min_scale, 1.0))
        x, targets, _ = augment.mix(k_mix, x, labels, num_classes, s.mixup, s.cutmix, s.label_smoothing)

        def loss_fn(params):
            pooled = encode(params["encoder"], frozen, x, k_model, True, s.drop_path, s.pooling)
            return optax.softmax_cross_entropy(logits(params, pooled), targets).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
                "step": state["step"] + 1}, loss

    return tx, step


def run(ctx, name, s):
    """Fine-tunes (or resumes) on the train split, then {'top1', 'top5', 'chance', 'epochs', 'steps'} on the test
    split; a run stopped by stop_after reports only its progress ('epochs', 'steps')."""
    what = f"config.evals.{name}"
    train_source = eval_sources.evaluator_source(ctx.config, name, s, s.train_split, s.num_train)
    test_source = eval_sources.evaluator_source(ctx.config, name, s, s.test_split, s.num_test)
    num_classes, m = len(train_source.class_names), ctx.config.model
    trainer.check_batch(ctx.mesh, ctx.config, s.batch_size, f"{what}.batch_size")
    per_epoch = trainer.steps_per_epoch(len(train_source), s.batch_size, f"{what}.batch_size")
    total = max(1, int(round(s.epochs * per_epoch)))
    encoder = ctx.predict.encoder
    params = {"encoder": encoder.params, **init_head(jax.random.key(s.seed), m.width, num_classes)}
    tx, train_step = make_training(encoder.encode, ml_collections.FrozenConfigDict({k: s[k] for k in STEP_SETTINGS}),
                                   ctx.config.tokenizer.image_size, num_classes, m.encoder_depth, total,
                                   int(round(s.warmup_epochs * per_epoch)))
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    state, progress, finished = trainer.fit_source(ctx, name, s, state, functools.partial(train_step, encoder.frozen),
                                                   train_source, s.batch_size, total)
    if not finished:
        return progress
    test_logits, labels = trainer.predict_source(ctx, test_source, functools.partial(
        _test_logits, encoder.encode, s.pooling, state["params"], encoder.frozen), s.batch_size)
    return {**linear_probe.accuracy(test_logits, labels, num_classes), **progress}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _test_logits(encode, pooling, params, frozen, index, images):
    rng = jax.random.fold_in(jax.random.key(0), index)  # the VAE tokenizer's posterior draw
    return logits(params, encode(params["encoder"], frozen, images, rng, False, 0.0, pooling))
