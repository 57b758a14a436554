"""What every evaluator receives: a Context with the model's predict functions (big_vision's predict_fn) and
where its outputs go.

Evaluators never apply the model themselves. `make_context` binds the restored variables and a runtime's frozen
components and tokenizers (dream_jax/runtime.py) into `Predict`'s functions (one jitted function per kind of output), and an evaluator runs them over its
host batches with `ctx.batched` (dream_jax/batching.py: pad, shard over the mesh, run, fetch). An evaluator kind
is a module of dream_jax/evaluation with `DEFAULTS` (its settings), `validate(config, name, settings)` (a missing
file or a bad setting raises, naming it, before anything is restored) and `run(ctx, name, settings)` (its metrics);
evaluation/registry.py lists the kinds.

Dimension letters: B batch, H W image size, T text context, E embedding dim, D width, P prompts, S samples per
prompt, K candidates.
"""

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections

from dream_jax import batching, tokens
from dream_jax.generation import generate, sampler

from dream_jax.evaluation import features as features_lib
from dream_jax.models import contrastive
from dream_jax.models.dream import DREAM


@dataclasses.dataclass(frozen=True)
class EncoderAccess:
    """The image encoder for evaluators that train it (finetune): `params` is its parameter subtree (nothing else
    of the model needs optimiser state), `frozen` the tokenizer's frozen components, and
      encode(params, frozen, images uint8 [B, H, W, 3], rng, train, drop_path, pooling) -> [B, D] float32
    is pure and jittable: the encoder on fully visible images, pooled (features.pool) but not normalised (the
    caller owns fc_norm). `train` turns on drop path (`drop_path` at the last block, linear over depth, as MAE);
    the pre-training dropouts stay off, as MAE's fine-tuned ViT has none."""

    params: Any
    frozen: Any
    encode: Callable


@dataclasses.dataclass(frozen=True)
class Predict:
    """The model as evaluators see it. Images are uint8 [B, H, W, 3], encoded fully visible; embeddings are
    L2-normalised.
      image_embedding(images, rng) -> [B, E]    (the contrastive image embedding, EMA BN statistics)
      text_embedding(clip_ids [B, T]) -> [B, E] (the CLIP text tower)
      features(images, rng, pooling) -> [B, D]  (fc_norm of the pooled encoder output; features.POOLINGS)
      patch_features(images, rng) -> [B, h, w, D] (the encoder's final normalised image tokens on the patch grid)
      encoder: EncoderAccess, the encoder as trainable parameters and a pure function of them (fine-tuning)
      sample(prompts, num_samples, seed, opts, log) -> (images [P, S, H, W, 3], SAD scores [P, S, K], choices)
      clip_ids(prompts) -> int32 [P, T]         (the text tower's tokenizer)"""

    image_embedding: Callable
    text_embedding: Callable
    features: Callable
    patch_features: Callable
    sample: Callable
    clip_ids: Callable
    encoder: Any = None


@dataclasses.dataclass(frozen=True)
class Context:
    """One evaluation: the config (data and sampling settings), where outputs go (workdir, step, EMA or raw), the
    mesh, the predict functions, and a log function for progress lines."""

    config: Any
    workdir: str
    mesh: Any
    step: int
    use_ema: bool
    predict: Predict
    log: Callable = print

    def batched(self, fn, batches):
        """batching.run on this context's mesh: fn(index, *sharded batch) per host batch, fetched and trimmed."""
        return batching.run(self.mesh, self.config, fn, batches)


@functools.partial(jax.jit, static_argnames=("config",))
def _image_embedding(config, variables, frozen, images, rng):
    model = DREAM(config.model)
    x_tokens = tokens.images_to_tokens(config, frozen, images, rng)
    x, keep = model.apply(variables, x_tokens, jnp.zeros(x_tokens.shape[:2], bool), method=DREAM.encode)
    return contrastive.l2_normalize(model.apply(variables, x, keep, method=DREAM.image_embedding))


@functools.partial(jax.jit, static_argnames=("config",))
def _text_embedding(config, variables, ids):
    return contrastive.l2_normalize(DREAM(config.model).apply(variables, ids, method=DREAM.text_embedding))


def _encode_visible(config, variables, frozen, images, rng):
    """The encoder output [B, P, D] of fully visible images, float32."""
    x_tokens = tokens.images_to_tokens(config, frozen, images, rng)
    x, _ = DREAM(config.model).apply(variables, x_tokens, jnp.zeros(x_tokens.shape[:2], bool), method=DREAM.encode)
    return x.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("config", "pooling"))
def _features(config, pooling, variables, frozen, images, rng):
    x = _encode_visible(config, variables, frozen, images, rng)
    return features_lib.fc_norm(features_lib.pool(x, config.model.buffer_size, pooling))


@functools.partial(jax.jit, static_argnames=("config",))
def _patch_features(config, variables, frozen, images, rng):
    x = _encode_visible(config, variables, frozen, images, rng)[:, config.model.buffer_size:]
    side = int(round(x.shape[1] ** 0.5))  # image tokens run row-major over a square grid (patchify.py)
    return x.reshape(x.shape[0], side, side, x.shape[-1])


def _encode(config, logit_scale, params, frozen, images, rng, train=False, drop_path=0.0, pooling="image"):
    """EncoderAccess.encode; `logit_scale` only completes what DREAM.setup creates."""
    model = ml_collections.ConfigDict(config.model)
    model.update(dict(attn_dropout=0.0, proj_dropout=0.0, drop_path=float(drop_path)))
    k_tokens, k_drop = jax.random.split(rng)
    x_tokens = tokens.images_to_tokens(config, frozen, images, k_tokens)
    x, _ = DREAM(model).apply({"params": {"encoder": params, "logit_scale": logit_scale}}, x_tokens,
                              jnp.zeros(x_tokens.shape[:2], bool), not train, method=DREAM.encode,
                              rngs={"dropout": k_drop})
    return features_lib.pool(x.astype(jnp.float32), config.model.buffer_size, pooling)


def make_predict(rt, variables):
    """Predict's functions bound to one model's variables and a runtime's frozen components and tokenizers."""
    frozen_config, frozen = generate.freeze(rt.config), rt.frozen

    def features(images, rng, pooling="buffer"):
        if pooling not in features_lib.POOLINGS:
            raise ValueError(f"pooling={pooling!r}; expected one of {features_lib.POOLINGS}")
        return _features(frozen_config, pooling, variables, frozen, images, rng)

    def sample_fn(prompts, num_samples, seed, opts, log=print):
        return sampler.sample_images(rt, variables, prompts, num_samples, seed, opts, log=log)

    return Predict(
        image_embedding=functools.partial(_image_embedding, frozen_config, variables, frozen),
        text_embedding=functools.partial(_text_embedding, frozen_config, variables),
        features=features, patch_features=functools.partial(_patch_features, frozen_config, variables, frozen),
        encoder=EncoderAccess(variables["params"]["encoder"], frozen,
                              functools.partial(_encode, frozen_config, variables["params"]["logit_scale"])),
        sample=sample_fn, clip_ids=rt.tokenizers.clip_ids)


def make_context(rt, workdir, variables, step, use_ema, log=print):
    """The Context of evaluating one model's variables on runtime `rt` (its config and mesh)."""
    return Context(rt.config, workdir, rt.mesh, int(step), bool(use_ema), make_predict(rt, variables), log)

