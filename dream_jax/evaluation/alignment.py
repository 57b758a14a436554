"""Text-image alignment of generated samples, with and without Semantically Aligned Decoding (SAD).

Two measures:
  oracle (synthetic task only): prompts are held-out captions of the captioned-shapes set, whose attributes are
    known; the oracle (dream_jax/data/oracle.py) reads shape, colour, position and size back from each generated
    image and the exact match rates are reported per attribute, for shape and colour together and for all four;
  own score (any model): the cosine between DREAM's own image embedding of the finished image (encoded fully
    visible, as zero-shot) and its text-tower embedding of the prompt: the SAD critic applied to the final
    image, averaged over samples. The paper's CLIP Score uses an external CLIP whose version is not published
    (PAPER.md §4), so this is the model's self-consistency, not that number.
Generation is dream_jax/sample.py's batched sampler with the config's settings; "plain" decoding is the same with
one candidate (num_candidates=1, sad_step=0).

Dimension letters: P prompts, S samples per prompt, N = P S images, E embedding dim.
"""

import functools

import jax
import ml_collections
import numpy as np

from dream_jax import generate, losses, sample
from dream_jax.data import oracle, synthetic
from dream_jax.evaluation import features as features_lib
from dream_jax.evaluation import zero_shot
from dream_jax.models.dream import DREAM

# "rerank": best-of-K reranking of finished plain samples by the same score SAD uses (K = sampling.num_candidates).
MODES = ("sad", "plain", "rerank")


def shapes_prompts(num_prompts, seed=0):
    """Held-out captions of the synthetic set and their attributes ({attribute: int [P]})."""
    source = synthetic.CaptionedShapes("heldout", num_examples=num_prompts, seed=seed + 2000)
    items = [source[i] for i in range(num_prompts)]
    targets = {a: np.array([int(it[a]) for it in items], np.int32) for a in synthetic.ATTRIBUTES}
    return [it["caption"] for it in items], targets


def read_prompts(path, num_prompts, what):
    """The first `num_prompts` prompts of a file (one per line), cycled when the file has fewer."""
    if not path:
        raise FileNotFoundError(f"{what} is not set; provide a text file with one prompt per line")
    prompts = sample.read_prompts(path, None)
    return [prompts[i % len(prompts)] for i in range(num_prompts)]


@functools.partial(jax.jit, static_argnames=("config",))
def _text_embeddings(config, variables, ids):
    return losses.l2_normalize(DREAM(config.model).apply(variables, ids, method=DREAM.text_embedding))


def own_scores(config, variables, frozen, tokenizers, images, prompts, mesh, batch_size=256, seed=0):
    """Cosine [N] of the model's image embedding of each uint8 image [N, H, W, 3] with its prompt's."""
    frozen_config = ml_collections.FrozenConfigDict(config)
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = np.asarray(tokenizers.clip_ids(prompts[i:i + batch_size]))
        imgs, n = features_lib.shard_batch(mesh, config, np.asarray(images[i:i + batch_size]))
        ids, _ = features_lib.shard_batch(mesh, config, ids)
        with jax.set_mesh(mesh):
            img = zero_shot.image_embeddings(config, variables, frozen, imgs, jax.random.key(seed + i))
            txt = _text_embeddings(frozen_config, variables, ids)
        out.append(np.sum(features_lib.fetch(img) * features_lib.fetch(txt), axis=-1)[:n])
    return np.concatenate(out)


def options(config, mode):
    """Sampling options of a mode: 'sad' (the config's candidates and T_c), 'plain' or 'rerank' (one candidate;
    rerank draws sampling.num_candidates of them per sample)."""
    if mode in ("sad", "rerank") and config.sampling.num_candidates < 2:
        raise ValueError(f"alignment mode {mode!r} needs sampling.num_candidates >= 2, got "
                         f"{config.sampling.num_candidates}")
    if mode == "sad":
        opts = generate.options_from_config(config)
    elif mode in ("plain", "rerank"):
        opts = generate.options_from_config(config, num_candidates=1, sad_step=0)
    else:
        raise ValueError(f"alignment mode {mode!r}; expected one of {MODES}")
    opts.validate(config.model.seq_len)
    return opts


def evaluate(config, variables, frozen, tokenizers, mesh, prompts, samples_per_prompt, mode, targets=None, seed=0,
             log=print):
    """{'own_score', and with `targets` the oracle's match rates and the KL of each attribute's prompted histogram
    to its read-back one ('kl_<attribute>', nats)} of samples generated in `mode`."""
    if mode == "rerank":
        images = best_of_k(config, variables, frozen, tokenizers, mesh, prompts, samples_per_prompt, seed, log)
    else:
        images, _, _ = sample.sample_images(config, variables, frozen, tokenizers, prompts, samples_per_prompt, seed,
                                            options(config, mode), mesh, log=log)
    flat = images.reshape((-1,) + images.shape[2:])
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    metrics = {"own_score": float(np.mean(own_scores(config, variables, frozen, tokenizers, flat, repeated, mesh)))}
    if targets is not None:
        repeated_targets = {k: np.repeat(v, samples_per_prompt) for k, v in targets.items()}
        read = oracle.read_attributes(flat)
        metrics.update({f"oracle_{k}": v for k, v in oracle.match_rates(read, repeated_targets).items()})
        metrics.update({f"kl_{k}": v for k, v in oracle.attribute_kl(read, repeated_targets).items()})
    return metrics, images


def best_of_k(config, variables, frozen, tokenizers, mesh, prompts, samples_per_prompt, seed=0, log=print):
    """uint8 [P, S, H, W, 3]: each of the S samples of a prompt is the best of K = sampling.num_candidates finished
    plain samples by the model's own score (best-of-K reranking: K full decodes where SAD runs K partial ones)."""
    k = config.sampling.num_candidates
    images, _, _ = sample.sample_images(config, variables, frozen, tokenizers, prompts, samples_per_prompt * k, seed,
                                        options(config, "rerank"), mesh, log=log)
    flat = images.reshape((-1,) + images.shape[2:])
    repeated = [p for p in prompts for _ in range(samples_per_prompt * k)]
    scores = own_scores(config, variables, frozen, tokenizers, flat, repeated, mesh).reshape(len(prompts),
                                                                                             samples_per_prompt, k)
    grouped = images.reshape((len(prompts), samples_per_prompt, k) + images.shape[2:])
    best = scores.argmax(axis=-1)[:, :, None, None, None, None]
    return np.take_along_axis(grouped, best, axis=2)[:, :, 0]
