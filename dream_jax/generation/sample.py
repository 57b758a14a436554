"""`--mode=sample`: restore the newest checkpoint, generate images for prompts, write PNG grids and a JSON.

Output in WORKDIR/samples/: `grid_step{S}_seed{R}.png` (one row per prompt, one column per sample) and
`samples_step{S}_seed{R}.json` with the prompts, seed, settings, SAD scores and chosen candidate per image.
"""

import json
import os

from dream_jax import imaging, runtime
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.generation import generate, sampler


def sample_to_workdir(config, workdir, prompts_path, num_samples, seed):
    """The `--mode=sample` job; returns the paths written."""
    if num_samples < 1:
        raise ValueError(f"--num_samples={num_samples} must be >= 1")
    prompts = sampler.read_prompts(prompts_path, config)
    tokenizers = tokenizers_lib.make_tokenizers(config)
    sampler.encode_prompts(tokenizers, prompts)  # fail fast on a prompt that does not fit, before loading
    rt = runtime.create(config, tokenizers=tokenizers)
    variables, step = runtime.restore_variables(rt, workdir, config.sampling.use_ema)
    return write_samples(rt, workdir, variables, step, prompts, num_samples, seed)


def write_samples(rt, workdir, variables, step, prompts, num_samples, seed, pad=False):
    """Samples `prompts` with the config's sampler into WORKDIR/samples (PNG grid + JSON); returns both paths.
    `pad`: as sampler.sample_images'."""
    config = rt.config
    opts = generate.options_from_config(config)
    opts.validate(config.model.seq_len)
    images, scores, chosen = sampler.sample_images(rt, variables, prompts, num_samples, seed, opts, pad=pad)
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
