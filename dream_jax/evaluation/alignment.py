"""Text-image alignment of generated samples, with and without Semantically Aligned Decoding (SAD).

Two measures:
  oracle (synthetic task only): prompts are held-out captions of the captioned-shapes set, whose attributes are
    known; the oracle (dream_jax/data/oracle.py) reads shape, colour, position and size back from each generated
    image and the exact match rates are reported per attribute, for shape and colour together and for all four;
  own score (any model): the cosine between DREAM's own image embedding of the finished image (encoded fully
    visible, as zero-shot) and its text-tower embedding of the prompt: the SAD critic applied to the final
    image, averaged over samples: the model's self-consistency. The paper's CLIP Score, with an external CLIP, is
    the clip_score evaluator (clip_score.py).
Generation is generation/sampler.py's batched sampler with the config's settings; "plain" decoding is the same with
one candidate (num_candidates=1, sad_step=0). With oracle targets, every other mode is compared with plain decoding
sample by sample ('<mode>_vs_plain/<attribute>_{gained,lost,p}', McNemar's exact test, paired.py): every mode
samples the same prompts from the same seed, and SAD's candidate 0 draws plain decoding's noise, so a discordant
pair is one SAD changed.

Dimension letters: P prompts, S samples per prompt, N = P S images, E embedding dim.
"""

import jax
import numpy as np

from dream_jax import batching
from dream_jax.data import oracle, paths
from dream_jax.evaluation import paired, prompts, shape_classifier
from dream_jax.generation import generate

# prompts: 'shapes' (held-out captions, read back by the oracle) or a text file; num_prompts (cycled) x
# samples_per_prompt images per mode. classifier: a file path ('' = off; 'shapes' prompts only) adds each mode's
# Fréchet distance to num_reference real held-out renders in a small classifier's features, the classifier trained
# and cached there when the file is missing (shape_classifier.py).
DEFAULTS = dict(enabled=True, prompts="", num_prompts=64, samples_per_prompt=1, modes=("sad", "plain"),
                classifier="", num_reference=2048, seed=0)


def own_scores(ctx, images, prompts, batch_size=256, seed=0):
    """Cosine [N] of the model's image embedding of each uint8 image [N, H, W, 3] with its prompt's."""
    ids = np.asarray(ctx.predict.clip_ids(prompts))

    def embed(b, imgs, txt):
        return ctx.predict.image_embedding(imgs, jax.random.key(seed + b * batch_size)), ctx.predict.text_embedding(txt)

    pairs = ctx.batched(embed, batching.slices((np.asarray(images), ids), batch_size))
    return np.concatenate([np.sum(img * txt, axis=-1) for img, txt in pairs])


def evaluate(ctx, prompts, samples_per_prompt, mode, targets=None, seed=0):
    """({'own_score', and with `targets` the oracle's match rates and the KL of each attribute's prompted histogram
    to its read-back one ('kl_<attribute>', nats)}, images [P, S, H, W, 3], with `targets` the per-sample hits
    {attribute: bool [N]} (oracle.matches) else None) of samples generated in `mode`."""
    if mode == "rerank":
        images = best_of_k(ctx, prompts, samples_per_prompt, seed)
    else:
        images, _, _ = ctx.predict.sample(prompts, samples_per_prompt, seed, generate.mode_options(ctx.config, mode), log=ctx.log)
    flat = images.reshape((-1,) + images.shape[2:])
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    metrics = {"own_score": float(np.mean(own_scores(ctx, flat, repeated)))}
    if targets is None:
        return metrics, images, None
    repeated_targets = {k: np.repeat(v, samples_per_prompt) for k, v in targets.items()}
    read = oracle.read_attributes(flat)
    hits = oracle.matches(read, repeated_targets)
    metrics.update({f"oracle_{k}": float(v.mean()) for k, v in hits.items()})
    metrics.update({f"kl_{k}": v for k, v in oracle.attribute_kl(read, repeated_targets).items()})
    return metrics, images, hits


def against_plain(hits):
    """'<mode>_vs_plain/<attribute>_{gained,lost,p}' of every mode but plain (paired.compare), from {mode: hits};
    empty without plain decoding."""
    if "plain" not in hits:
        return {}
    return {f"{mode}_vs_plain/{attribute}_{k}": v
            for mode in hits if mode != "plain"
            for attribute in hits[mode]
            for k, v in paired.compare(hits[mode][attribute], hits["plain"][attribute]).items()}


def best_of_k(ctx, prompts, samples_per_prompt, seed=0):
    """uint8 [P, S, H, W, 3]: each of the S samples of a prompt is the best of K = sampling.num_candidates finished
    plain samples by the model's own score (best-of-K reranking: K full decodes where SAD runs K partial ones)."""
    k = ctx.config.sampling.num_candidates
    images, _, _ = ctx.predict.sample(prompts, samples_per_prompt * k, seed, generate.mode_options(ctx.config, "rerank"),
                                      log=ctx.log)
    flat = images.reshape((-1,) + images.shape[2:])
    repeated = [p for p in prompts for _ in range(samples_per_prompt * k)]
    scores = own_scores(ctx, flat, repeated).reshape(len(prompts), samples_per_prompt, k)
    grouped = images.reshape((len(prompts), samples_per_prompt, k) + images.shape[2:])
    best = scores.argmax(axis=-1)[:, :, None, None, None, None]
    return np.take_along_axis(grouped, best, axis=2)[:, :, 0]


def validate(config, name, s):
    """Known modes the config can sample, and a prompt file that exists (FileNotFoundError / ValueError)."""
    what = f"config.evals.{name}"
    for mode in s.modes:
        generate.mode_options(config, mode)
    if s.prompts != "shapes":
        paths.check_file(s.prompts, f"{what}.prompts", prompts.HINT)
        if s.classifier:
            raise ValueError(f"{what}.classifier is set but {what}.prompts={s.prompts!r}; the shape classifier's "
                             "Fréchet distance measures the 'shapes' prompts only")


def run(ctx, name, s):
    """'<mode>/<metric>' of every mode: `evaluate`'s, plus 'frechet' with a classifier; with oracle targets,
    `against_plain`'s paired comparisons."""
    texts, targets = prompts.of_settings(s, s.num_prompts, f"config.evals.{name}.prompts")
    if s.classifier:  # validate() allows it only with the 'shapes' prompts
        size = ctx.config.tokenizer.image_size
        classifier = shape_classifier.load_or_train(s.classifier, size, log=ctx.log)
        reference = shape_classifier.statistics(classifier,
                                                shape_classifier.reference_images(s.num_reference, size, s.seed))
    out, hits = {}, {}
    for mode in s.modes:
        metrics, images, hits[mode] = evaluate(ctx, texts, s.samples_per_prompt, mode, targets, s.seed)
        if s.classifier:
            metrics["frechet"] = shape_classifier.frechet(classifier, images.reshape((-1,) + images.shape[2:]),
                                                          reference)
        out.update({f"{mode}/{k}": v for k, v in metrics.items()})
    if targets is not None:
        out.update(against_plain(hits))
    return out
