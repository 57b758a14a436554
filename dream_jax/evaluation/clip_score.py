"""CLIP Score of generated samples with an external CLIP, as the field computes it.

Per image, 100 * max(cos(image embedding, prompt embedding), 0) under a pretrained CLIP (Hessel et al. 2021's
CLIP-S without its 2.5 weight, as torchmetrics' CLIPScore), averaged over the samples. The paper reports CLIP
Score without naming the CLIP model (PAPER.md §4); the default here is OpenAI's ViT-L/14 (`model`, any
models/clip.py ARCHITECTURES name), the weights read from the user's local file (interop/clip_weights.py) and the
prompts tokenised with OpenCLIP's tokenizer (data/clip_tokenizer.py, context 77) from the local bpe vocabulary.
Images go through CLIP's transform (bicubic resize of the shorter side to the CLIP resolution, centre crop,
CLIP's mean / std; models/clip.py's preprocess). Generation is fid.py's: one chunk of prompts at a time, seed
`seed + start` of the chunk, SAD decoding unless sad=False, so with the same prompts, seed and chunk the images
are the ones FID scores.

Dimension letters: N images, P prompts, S samples per prompt, E embedding dim, T text context.
"""

import functools

import jax
import numpy as np

from dream_jax import batching, sharding
from dream_jax.data import clip_tokenizer, paths
from dream_jax.evaluation import prompts
from dream_jax.generation import generate
from dream_jax.interop import clip_weights
from dream_jax.models import clip as clip_lib
from dream_jax.models import transformer

# weights: the CLIP file (clip_weights.HINT); model / activation: its architecture (quick_gelu for OpenAI's weights,
# gelu for OpenCLIP's own trainings); bpe_vocab: OpenCLIP's bpe_simple_vocab_16e6.txt.gz ('' = the config's
# text.clip_vocab_path). num_prompts prompts ('shapes' or a text file, cycled) x samples_per_prompt images, generated
# `chunk` prompts at a time and embedded batch_size at a time.
DEFAULTS = dict(enabled=True, weights="", model="ViT-L-14", activation="quick_gelu", bpe_vocab="", prompts="",
                num_prompts=50_000, samples_per_prompt=1, sad=True, batch_size=64, chunk=1024, seed=0)


def clip_score(image_emb, text_emb):
    """float64 [N]: 100 * max(cos, 0) of each row pair of image_emb [N, E] and text_emb [N, E] (unnormalised)."""
    a, b = np.asarray(image_emb, np.float64), np.asarray(text_emb, np.float64)
    cos = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return 100.0 * np.maximum(cos, 0.0)


@functools.partial(jax.jit, static_argnames=("config",))
def image_embeddings(config, params, images):
    """uint8 [N, H, W, 3] -> [N, E] (CLIP's transform, then the image tower)."""
    pixels = clip_lib.preprocess(images, config.image_size)
    return clip_lib.CLIP(config).apply({"params": params}, pixels, method=clip_lib.CLIP.encode_image)


@functools.partial(jax.jit, static_argnames=("config",))
def text_embeddings(config, params, ids):
    """int32 [P, T] -> [P, E]."""
    return clip_lib.CLIP(config).apply({"params": params}, ids, method=clip_lib.CLIP.encode_text)


def _bpe_path(config, s):
    return s.bpe_vocab or config.text.get("clip_vocab_path", "")


def validate(config, name, s):
    """The weights, bpe vocabulary and prompt file exist; model, activation and decoding mode are known."""
    what = f"config.evals.{name}"
    transformer.check_choice(f"{what}.model", s.model, tuple(clip_lib.ARCHITECTURES))
    transformer.check_choice(f"{what}.activation", s.activation, tuple(transformer.ACTIVATIONS))
    paths.check_file(s.weights, f"{what}.weights", clip_weights.HINT)
    paths.check_file(_bpe_path(config, s), f"{what}.bpe_vocab", "bpe_simple_vocab_16e6.txt.gz (or set "
                     "config.text.clip_vocab_path). " + clip_tokenizer.SOURCE)
    if s.prompts != "shapes":
        paths.check_file(s.prompts, f"{what}.prompts", prompts.HINT)
    generate.mode_options(config, "sad" if s.sad else "plain")


def _embed(ctx, fn, array, batch_size):
    return np.concatenate(list(ctx.batched(lambda b, x: fn(x), batching.slices((array,), batch_size))))


def run(ctx, name, s):
    """{'clip_score' (mean), 'clip_score_std' (over images), 'num_samples'} of the generated images."""
    what = f"config.evals.{name}"
    config, params = clip_weights.load(s.weights, s.model, s.activation, f"{what}.weights")
    params = jax.device_put(params, sharding.replicated(ctx.mesh))
    tokenizer = clip_tokenizer.ClipTokenizer(_bpe_path(ctx.config, s), config.context_length)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{what}.bpe_vocab has {tokenizer.vocab_size} tokens, more than the {config.vocab_size} "
                         f"of CLIP {s.model}; expected the vocabulary the weights were trained with")
    texts, _ = prompts.of_settings(s, s.num_prompts, f"{what}.prompts")
    opts = generate.mode_options(ctx.config, "sad" if s.sad else "plain")
    scores = []
    for start in range(0, len(texts), s.chunk):
        chunk = texts[start:start + s.chunk]
        images, _, _ = ctx.predict.sample(chunk, s.samples_per_prompt, s.seed + start, opts, log=ctx.log)
        image_emb = _embed(ctx, functools.partial(image_embeddings, config, params),
                           images.reshape((-1,) + images.shape[2:]), s.batch_size)
        text_emb = _embed(ctx, functools.partial(text_embeddings, config, params), tokenizer.encode(chunk),
                          s.batch_size)
        scores.append(clip_score(image_emb, np.repeat(text_emb, s.samples_per_prompt, axis=0)))
        ctx.log(f"CLIP Score: {sum(len(x) for x in scores)}/{len(texts) * s.samples_per_prompt} images scored")
    scores = np.concatenate(scores)
    return {"clip_score": float(scores.mean()), "clip_score_std": float(scores.std()),
            "num_samples": float(len(scores))}
