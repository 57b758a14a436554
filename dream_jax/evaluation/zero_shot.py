"""Zero-shot classification with DREAM's two towers: class prompts -> text tower, full images -> encoder.

Class embeddings are the normalised mean over prompt templates of the normalised text embeddings (CLIP's
recipe); images are encoded fully visible (mask all False), mean-pooled over buffer + image tokens and projected
with the BN running statistics; the prediction is the class of highest cosine.

Dimension letters: N images, K classes, P prompts per class, E embedding dim.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dream_jax import frontend, losses
from dream_jax.data import synthetic
from dream_jax.models.dream import DREAM


@functools.partial(jax.jit, static_argnames=("config",))
def _text_embeddings(config, variables, ids):
    return losses.l2_normalize(DREAM(config.model).apply(variables, ids, method=DREAM.text_embedding))


def image_embeddings(config, variables, frozen, images, rng):
    """Normalised embeddings [N, E] of fully visible uint8 images [N, H, W, 3]."""
    return _image_embeddings(ml_collections.FrozenConfigDict(config), variables, frozen, images, rng)


@functools.partial(jax.jit, static_argnames=("config",))
def _image_embeddings(config, variables, frozen, images, rng):
    model = DREAM(config.model)
    tokens = frontend.images_to_tokens(config, frozen, images, rng)
    mask = jnp.zeros(tokens.shape[:2], bool)
    x, keep = model.apply(variables, tokens, mask, method=DREAM.encode)
    return losses.l2_normalize(model.apply(variables, x, keep, method=DREAM.image_embedding))


def class_embeddings(config, variables, tokenizers, prompts_per_class):
    """[K, E] from a list (per class) of prompt lists."""
    out = []
    for prompts in prompts_per_class:
        emb = _text_embeddings(ml_collections.FrozenConfigDict(config), variables, jnp.asarray(tokenizers.clip_ids(prompts)))
        out.append(losses.l2_normalize(jnp.mean(emb, axis=0)))
    return jnp.stack(out)


def accuracy(image_emb, class_emb, labels, k=1):
    """Top-k accuracy of cosine classification."""
    logits = np.asarray(image_emb @ class_emb.T)
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


# The word tokenizer of the tiny config only knows caption words, so the synthetic task uses the bare prompt.
SHAPE_COLOR_TEMPLATES = ("{}",)


def shapes_task(config, variables, frozen, tokenizers, split="heldout", num_images=512, batch_size=128, seed=0):
    """Zero-shot shape x colour accuracy (top-1, top-5) on the synthetic set (labels = the renderer's = oracle's)."""
    classes = synthetic.shape_color_classes()
    prompts = [[t.format(synthetic.shape_color_prompt(s, c)) for t in SHAPE_COLOR_TEMPLATES] for s, c in classes]
    class_emb = class_embeddings(config, variables, tokenizers, prompts)
    source = synthetic.CaptionedShapes(split, num_examples=num_images, seed=seed + 1000,
                                       image_size=config.tokenizer.image_size)
    lookup = {sc: i for i, sc in enumerate(classes)}
    embs, labels = [], []
    for start in range(0, num_images, batch_size):
        items = [source[i] for i in range(start, min(num_images, start + batch_size))]
        images = jnp.asarray(np.stack([it["image"] for it in items]))
        embs.append(image_embeddings(config, variables, frozen, images, jax.random.key(start)))
        labels += [lookup[(int(it["shape"]), int(it["color"]))] for it in items]
    image_emb = jnp.concatenate(embs)
    return {"zero_shot_top1": accuracy(image_emb, class_emb, labels, 1),
            "zero_shot_top5": accuracy(image_emb, class_emb, labels, 5),
            "chance_top1": 1.0 / len(classes)}

