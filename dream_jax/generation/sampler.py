"""Prompts -> images with the trained model: the batched host sampler that `--mode=sample`, the end-of-training
report, the generation evaluators and the benchmarks share, and the prompt files they read.

The prompts are encoded on the host, repeated per sample, cut into chunks of `sampling.batch_size` (a short
last one padded, so that a job compiles one program) and run through generate.generate over the mesh
(dream_jax/batching.py), then decoded to pixels by a second jitted function on the same device arrays (no host
round trip between the two).

Dimension letters: P prompts, S samples per prompt, K candidates, H W image size.
"""

import time

import jax
import numpy as np

from dream_jax import batching, summary, tokens
from dream_jax.data import synthetic, text_lines
from dream_jax.generation import generate

DEFAULT_PROMPTS = {
    "shapes": [synthetic.caption(0, 0, 0, 1, 0), synthetic.caption(1, 2, 4, 1, 0), synthetic.caption(2, 3, 3, 0, 1),
               synthetic.caption(3, 5, 1, 1, 2)],
    "default": ["a photo of a cat sitting on a sofa", "a red sports car on a mountain road",
                "a bowl of fresh fruit on a wooden table", "a lighthouse at sunset"],
}


def read_prompts(path, config):
    """Prompts from a file (one per line, blank lines ignored) or the config's defaults; ValueError when empty."""
    if path is None:
        return DEFAULT_PROMPTS["shapes" if config.data.source == "shapes" else "default"]
    return text_lines.read(path, f"prompt file {path}", "prompt")


def encode_prompts(tokenizers, prompts):
    """CLIP ids (a prompt longer than the text context is an error) and cond ids/mask."""
    clip_ids = tokenizers.clip_ids(prompts, truncate=False)
    cond_ids, cond_mask = tokenizers.cond_ids(prompts)
    return clip_ids, cond_ids, cond_mask


_decode = jax.jit(tokens.tokens_to_images, static_argnums=0)  # VAE decode (or PCA) of a chunk, compiled once


def sample_images(rt, variables, prompts, num_samples, seed, opts, log=print, pad=False):
    """uint8 images [P, S, H, W, 3], SAD scores [P, S, K] and choices [P, S] of `prompts` on runtime `rt`.

    `pad`: run even a job of one short chunk on sampling.batch_size rows, the program of a longer job with the same
    options (the end-of-training report's grid, so that its alignment evaluator does not compile SAD again). A row's
    samples do not depend on the padding."""
    config = rt.config
    clip_ids, cond_ids, cond_mask = encode_prompts(rt.tokenizers, prompts)
    flat = lambda a: np.repeat(a, num_samples, axis=0)  # noqa: E731
    clip_ids, cond_ids, cond_mask = flat(clip_ids), flat(cond_ids), flat(cond_mask)
    total, chunk = len(clip_ids), config.sampling.batch_size
    frozen_config = generate.freeze(config)

    def decode(index, *batch):
        out, sc, best = generate.generate(frozen_config, opts, variables, rt.frozen, *batch,
                                          jax.random.fold_in(jax.random.key(seed), index))
        return _decode(frozen_config, rt.frozen, out), sc, best

    images, scores, chosen = [], [], []
    start = time.monotonic()
    # A job of several chunks pads its short last one to the chunk size: compiling the whole decoding program again
    # for it would cost more than the padded rows (minutes for a large model on a pod).
    rows = chunk if total > chunk or pad else 0
    for pixels, sc, best in batching.run(rt.mesh, config, decode,
                                         batching.slices((clip_ids, cond_ids, cond_mask), chunk), rows):
        images.append(pixels)
        scores.append(sc)
        chosen.append(best)
        done, elapsed = sum(len(x) for x in images), time.monotonic() - start
        log(f"sampled {done}/{total} images, {elapsed:.1f}s elapsed, ETA "
            f"{summary.format_seconds(elapsed / done * (total - done))}")
    shape = (len(prompts), num_samples)
    return (np.concatenate(images).reshape(shape + images[0].shape[1:]),
            np.concatenate(scores).reshape(shape + (-1,)), np.concatenate(chosen).reshape(shape))
