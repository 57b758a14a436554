"""Zero-shot classification with DREAM's two towers: class prompts -> text tower, full images -> encoder.

Class embeddings are the normalised mean over prompt templates of the normalised text embeddings (CLIP's
recipe); images are encoded fully visible (mask all False), mean-pooled over buffer + image tokens and projected
with the BN running statistics; the prediction is the class of highest cosine.

Dimension letters: N images, K classes, P prompts per class, E embedding dim.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax import batching

from dream_jax.data import eval_sources, synthetic
from dream_jax.evaluation import features as features_lib
from dream_jax.models import contrastive

# CLIP's prompt ensemble for zero-shot classification of natural images.
CLIP_TEMPLATES = ("a photo of a {}.", "itap of a {}.", "a bad photo of the {}.", "a origami {}.",
                  "a photo of the large {}.", "a {} in a video game.", "art of the {}.", "a photo of the small {}.")
# The word tokenizer of the tiny config only knows caption words, so the synthetic task uses the bare prompt.
SHAPE_COLOR_TEMPLATES = ("{}",)

# dataset 'shapes' (the embedded set's shape x colour classes) or a tfds name; num_images 0: the whole split.
DEFAULTS = dict(enabled=True, **eval_sources.SOURCE_DEFAULTS, split="validation", num_images=0,
                templates=CLIP_TEMPLATES)


def validate(config, name, s):
    """A tfds dataset must be prepared and have readable class names (ValueError / FileNotFoundError)."""
    if s.dataset != "shapes":
        eval_sources.evaluator_source(config, name, s, s.split, s.num_images).readable_class_names(
            f"config.evals.{name}")


def class_embeddings(predict, prompts_per_class):
    """[K, E] from a list (per class) of prompt lists: the normalised mean of each class's text embeddings."""
    out = []
    for prompts in prompts_per_class:
        emb = predict.text_embedding(jnp.asarray(predict.clip_ids(prompts)))
        out.append(contrastive.l2_normalize(jnp.mean(emb, axis=0)))
    return np.asarray(jnp.stack(out))


def accuracy(image_emb, class_emb, labels, k=1):
    """Top-k accuracy of cosine classification."""
    logits = np.asarray(image_emb @ class_emb.T)
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def image_embeddings(ctx, batches, rng_of_batch):
    """[N, E] of host image batches (tuples (images,)), the rng of batch b being rng_of_batch(b)."""
    return np.concatenate(list(ctx.batched(lambda b, x: ctx.predict.image_embedding(x, rng_of_batch(b)), batches)))


def shapes_task(ctx, split="heldout", num_images=512, batch_size=128, seed=0):
    """Zero-shot shape x colour accuracy (top-1, top-5) on the synthetic set (labels = the renderer's = oracle's)."""
    classes = synthetic.shape_color_classes()
    prompts = [[t.format(synthetic.shape_color_prompt(s, c)) for t in SHAPE_COLOR_TEMPLATES] for s, c in classes]
    class_emb = class_embeddings(ctx.predict, prompts)
    source = synthetic.CaptionedShapes(split, num_examples=num_images, seed=seed + 1000,
                                       image_size=ctx.config.tokenizer.image_size)
    items = [source[i] for i in range(num_images)]
    images = np.stack([it["image"] for it in items])
    lookup = {sc: i for i, sc in enumerate(classes)}
    labels = [lookup[(int(it["shape"]), int(it["color"]))] for it in items]
    image_emb = image_embeddings(ctx, batching.slices((images,), batch_size), lambda b: jax.random.key(b * batch_size))
    return {"top1": accuracy(image_emb, class_emb, labels, 1), "top5": accuracy(image_emb, class_emb, labels, 5),
            "chance": 1.0 / len(classes)}


def run(ctx, name, s):
    """{'top1', 'top5' (more than 5 classes), 'chance'} of the settings' dataset."""
    if s.dataset == "shapes":
        return shapes_task(ctx, eval_sources.shapes_split(s.split), s.num_images or 512, s.batch_size, s.seed)
    source = eval_sources.evaluator_source(ctx.config, name, s, s.split, s.num_images)
    names = source.readable_class_names(f"config.evals.{name}")
    with jax.set_mesh(ctx.mesh):
        class_emb = class_embeddings(ctx.predict, [[t.format(n) for t in s.templates] for n in names])
    labels = []

    def images():
        for x, y in features_lib.batches(source, s.batch_size):
            labels.append(y)
            yield (x,)

    emb = image_embeddings(ctx, images(), lambda b: jax.random.key(s.seed + b))
    labels = np.concatenate(labels)
    out = {"top1": accuracy(emb, class_emb, labels, 1), "chance": 1.0 / len(names)}
    if len(names) > 5:
        out["top5"] = accuracy(emb, class_emb, labels, 5)
    return out
