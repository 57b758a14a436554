"""`--mode=sample`: restore the newest checkpoint, generate images for prompts, write PNG grids and a JSON.

Output in WORKDIR/samples/: `grid_step{S}_seed{R}.png` (one row per prompt, one column per sample) and
`samples_step{S}_seed{R}.json` with the prompts, seed, settings, SAD scores and chosen candidate per image.
"""

import json
import os
import time

import jax
import numpy as np

from dream_jax import checkpoint as checkpoint_lib
from dream_jax import batching, frontend, generate, imaging, sharding, summary
from dream_jax import state as state_lib
from dream_jax.data import synthetic

DEFAULT_PROMPTS = {
    "shapes": [synthetic.caption(0, 0, 0, 1, 0), synthetic.caption(1, 2, 4, 1, 0), synthetic.caption(2, 3, 3, 0, 1),
               synthetic.caption(3, 5, 1, 1, 2)],
    "default": ["a photo of a cat sitting on a sofa", "a red sports car on a mountain road",
                "a bowl of fresh fruit on a wooden table", "a lighthouse at sunset"],
}


def read_prompts(path, config):
    """Prompts from a file (one per line, blank lines ignored) or the defaults; ValueError when empty."""
    if path is None:
        return DEFAULT_PROMPTS["shapes" if config.data.source == "shapes" else "default"]
    if not os.path.exists(path):
        raise FileNotFoundError(f"prompt file {path} does not exist")
    with open(path) as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts (one per line expected)")
    return prompts


def encode_prompts(tokenizers, prompts):
    """CLIP ids (a prompt longer than the text context is an error) and cond ids/mask."""
    clip_ids = tokenizers.clip_ids(prompts, truncate=False)
    cond_ids, cond_mask = tokenizers.cond_ids(prompts)
    return clip_ids, cond_ids, cond_mask


def restore_variables(config, workdir, mesh):
    """{'params', 'batch_stats'} of the newest checkpoint (EMA params if config.sampling.use_ema) and its step."""
    abstract = state_lib.abstract_state(config, mesh)
    params, batch_stats, step = checkpoint_lib.restore_params(workdir, config, abstract, config.sampling.use_ema)
    return {"params": params, "batch_stats": batch_stats}, step


def restore_for_inference(config, workdir):
    """(mesh, tokenizers, variables, step, frozen) of a workdir's newest checkpoint, as the inference jobs
    (evaluation, benchmarks) use them: EMA params if config.sampling.use_ema, the frozen components replicated."""
    mesh = sharding.make_mesh(config)
    tokenizers = frontend.make_tokenizers(config)
    variables, step = restore_variables(config, workdir, mesh)
    frozen = jax.device_put(frontend.load_frozen(config, tokenizers), sharding.replicated(mesh))
    return mesh, tokenizers, variables, step, frozen


def sample_images(config, variables, frozen, tokenizers, prompts, num_samples, seed, opts, mesh, log=print):
    """uint8 images [P, num_samples, H, W, 3], SAD scores [P, num_samples, K] and choices [P, num_samples]."""
    clip_ids, cond_ids, cond_mask = encode_prompts(tokenizers, prompts)
    flat = lambda a: np.repeat(a, num_samples, axis=0)  # noqa: E731
    clip_ids, cond_ids, cond_mask = flat(clip_ids), flat(cond_ids), flat(cond_mask)
    total, chunk = len(clip_ids), config.sampling.batch_size
    frozen_config = generate.freeze(config)

    def decode(index, *batch):
        tokens, sc, best = generate.generate(frozen_config, opts, variables, frozen, *batch,
                                             jax.random.fold_in(jax.random.key(seed), index))
        return frontend.tokens_to_images(config, frozen, tokens), sc, best

    images, scores, chosen = [], [], []
    start = time.monotonic()
    for pixels, sc, best in batching.run(mesh, config, decode, batching.slices((clip_ids, cond_ids, cond_mask), chunk)):
        images.append(pixels)
        scores.append(sc)
        chosen.append(best)
        done, elapsed = sum(len(x) for x in images), time.monotonic() - start
        log(f"sampled {done}/{total} images, {elapsed:.1f}s elapsed, ETA "
            f"{summary.format_seconds(elapsed / done * (total - done))}")
    shape = (len(prompts), num_samples)
    return (np.concatenate(images).reshape(shape + images[0].shape[1:]),
            np.concatenate(scores).reshape(shape + (-1,)), np.concatenate(chosen).reshape(shape))


def sample_to_workdir(config, workdir, prompts_path, num_samples, seed):
    """The `--mode=sample` job; returns the paths written."""
    if num_samples < 1:
        raise ValueError(f"--num_samples={num_samples} must be >= 1")
    prompts = read_prompts(prompts_path, config)
    mesh = sharding.make_mesh(config)
    tokenizers = frontend.make_tokenizers(config)
    encode_prompts(tokenizers, prompts)  # fail fast on a prompt that does not fit, before restoring
    variables, step = restore_variables(config, workdir, mesh)
    frozen = jax.device_put(frontend.load_frozen(config, tokenizers), sharding.replicated(mesh))
    return write_samples(config, workdir, variables, step, frozen, tokenizers, mesh, prompts, num_samples, seed)


def write_samples(config, workdir, variables, step, frozen, tokenizers, mesh, prompts, num_samples, seed):
    """Samples `prompts` with the config's sampler into WORKDIR/samples (PNG grid + JSON); returns both paths."""
    opts = generate.options_from_config(config)
    opts.validate(config.model.seq_len)
    images, scores, chosen = sample_images(config, variables, frozen, tokenizers, prompts, num_samples, seed, opts,
                                           mesh)
    out = os.path.join(workdir, "samples")
    upscale = max(1, 128 // images.shape[2])
    png = imaging.save_png(imaging.grid(images, upscale=upscale), os.path.join(out, f"grid_step{step}_seed{seed}.png"))
    record = {
        "step": step, "seed": seed, "prompts": prompts, "num_samples": num_samples,
        "options": opts.__dict__, "decoded_fraction_at_sad_step": generate.decoded_fraction(
            config.model.seq_len, opts.num_iter, opts.sad_step) if opts.num_candidates > 1 else None,
        "images": [{"prompt": p, "sample": j, "sad_scores": scores[i, j].tolist(), "chosen": int(chosen[i, j])}
                   for i, p in enumerate(prompts) for j in range(num_samples)],
    }
    path = os.path.join(out, f"samples_step{step}_seed{seed}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {png} and {path}")
    return png, path
