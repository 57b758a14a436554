"""Cost and benefit of Semantically Aligned Decoding on a trained tiny model, on one device in one run.

    python benchmarks/sampling.py --workdir=workdir/bench_tiny   # a workdir trained by benchmarks/train_tiny.py
    python benchmarks/sampling.py --flops_only                   # the FLOP ratios alone, no checkpoint

Wall time (compiled, warm) of plain decoding vs SAD (K=5, T_c=21 and 32 of 64 steps) -> ratios, also with the
encoder over all positions at every step (`encoder_buckets=1`: what the decoded-token encoder saves), beside the
matmul FLOP ratios of the same settings (flops.generation_flops) for this model and for DREAM-B; and, on
prompts of held-out attribute combinations and templates, the oracle's match rate of each attribute (shape,
colour, position, size, and shape & colour together) for plain decoding, SAD, and best-of-K reranking of
finished images with the same scorer, over 3 seeds. Prints one JSON line (also written to
WORKDIR/sampling_benchmark.json).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# configs/ is not installed: the repository root holds it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import dream_b, dream_tiny  # noqa: E402
from dream_jax import flops, runtime, sharding  # noqa: E402
from dream_jax import tokens as tokens_lib  # noqa: E402
from dream_jax.data import oracle, synthetic  # noqa: E402
from dream_jax.generation import generate, sampler  # noqa: E402
from dream_jax.models.dream import DREAM  # noqa: E402


def _prompts(num, seed):
    source = synthetic.CaptionedShapes("heldout", num_examples=num, seed=seed)
    items = [source[i] for i in range(num)]
    return [it["caption"] for it in items], {k: np.array([it[k] for it in items]) for k in synthetic.ATTRIBUTES}


def _timed(fn, *args):
    jax.block_until_ready(fn(*args))  # compile + warm
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def _settings(config, num_iter, k):
    """The compared decodings by name (the config's sampling and head settings, `num_iter` steps)."""
    base = generate.options_from_config(config, num_candidates=1, sad_step=0, num_iter=num_iter)
    settings = {
        "plain": base,
        "sad_k5_tc21": dataclasses.replace(base, num_candidates=k, sad_step=round(21 * num_iter / 64)),
        "sad_k5_tc32": dataclasses.replace(base, num_candidates=k, sad_step=num_iter // 2),
    }
    # The same decoding with the encoder over all L positions (key-masked) at every step: what gathering the
    # decoded tokens into capacity buckets (Options.encoder_buckets, the default) saves.
    settings["plain_all_positions"] = dataclasses.replace(base, encoder_buckets=1)
    settings["sad_k5_tc21_all_positions"] = dataclasses.replace(settings["sad_k5_tc21"], encoder_buckets=1)
    return settings


def flop_ratios(settings):
    """Each setting's matmul FLOPs (flops.generation_flops) over plain decoding's, for the tiny model and for
    DREAM-B (256 tokens, 100 head steps): on a device kept busy by the batch, time ratios cannot fall below these."""
    result = {}
    for label, config in (("", dream_tiny.get_config()), ("dream_b_", dream_b.get_config())):
        parts = {name: flops.generation_flops(config, dataclasses.replace(
            o, sampling_steps=config.diffusion.sampling_steps)) for name, o in settings.items()}
        cost = {name: sum(p.values()) for name, p in parts.items()}
        result[f"plain_{label}gflop_per_image"] = round(cost["plain"] / 1e9, 1)
        result[f"plain_{label}share"] = {part: round(v / cost["plain"], 3)
                                         for part, v in parts["plain"].items() if v}
        for name in settings:
            result[f"{name}_{label}flops_ratio_vs_plain"] = round(cost[name] / cost["plain"], 3)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="workdir/bench_tiny")
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--num_iter", type=int, default=64)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--flops_only", action="store_true", help="print the FLOP ratios only (no checkpoint)")
    args = parser.parse_args()
    config = dream_tiny.get_config()
    k = args.candidates
    settings = _settings(config, args.num_iter, k)
    if args.flops_only:
        print(json.dumps({"num_iter": args.num_iter, "candidates": k, **flop_ratios(settings)}))
        return
    rt = runtime.create(config, sharding.make_mesh(config, jax.devices()[:1]))
    variables, step = runtime.restore_variables(rt, args.workdir, config.sampling.use_ema)
    tokenizers, frozen = rt.tokenizers, rt.frozen
    fc = generate.freeze(config)
    base = settings["plain"]
    result = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})", "checkpoint_step": step,
              "num_iter": args.num_iter, "candidates": k, "num_prompts": args.num_prompts, "seeds": 3}
    for name, opts in settings.items():
        if opts.sad_step:
            result[f"{name}_decoded_fraction"] = generate.decoded_fraction(config.model.seq_len, opts.num_iter,
                                                                           opts.sad_step)
    match = {name: [] for name in list(settings) + ["rerank_k5_finished"]}
    for seed in range(3):
        prompts, targets = _prompts(args.num_prompts, seed)
        clip_ids, cond_ids, cond_mask = map(jnp.asarray, sampler.encode_prompts(tokenizers, prompts))
        rng = jax.random.key(seed)
        for name, opts in settings.items():
            (tokens, _, _), seconds = _timed(generate.generate, fc, opts, variables, frozen, clip_ids, cond_ids,
                                             cond_mask, rng)
            result.setdefault(f"{name}_seconds", []).append(round(seconds, 3))
            images = np.asarray(tokens_lib.tokens_to_images(config, frozen, tokens))
            match[name].append(oracle.alignment(images, targets))
        # Best-of-K reranking: finish K plain candidates, score the finished tokens with the same scorer.
        rep = lambda a: jnp.repeat(a, k, axis=0)  # noqa: E731
        (tokens, _, _), seconds = _timed(generate.generate, fc, base, variables, frozen, rep(clip_ids),
                                         rep(cond_ids), rep(cond_mask), rng)
        result.setdefault("rerank_k5_finished_seconds", []).append(round(seconds, 3))
        text_emb = rep(DREAM(config.model).apply(variables, clip_ids, method=DREAM.text_embedding))
        scores = generate.sad_scores(fc, variables, tokens, jnp.zeros(tokens.shape[:2], bool), text_emb)
        best = np.asarray(scores).reshape(-1, k).argmax(1)
        chosen = np.asarray(tokens).reshape((-1, k) + tokens.shape[1:])[np.arange(len(prompts)), best]
        images = np.asarray(tokens_lib.tokens_to_images(config, frozen, jnp.asarray(chosen)))
        match["rerank_k5_finished"].append(oracle.alignment(images, targets))
    plain_time = np.mean(result["plain_seconds"])
    for name in list(settings) + ["rerank_k5_finished"]:
        result[f"{name}_time_ratio_vs_plain"] = round(float(np.mean(result[f"{name}_seconds"]) / plain_time), 3)
        for attribute in ("shape_color",) + synthetic.ATTRIBUTES:
            rates = [m[attribute] for m in match[name]]
            result[f"{name}_{attribute}_match"] = [round(r, 4) for r in rates]
            result[f"{name}_{attribute}_match_mean"] = round(float(np.mean(rates)), 4)
    result.update(flop_ratios(settings))
    result["chance"] = {"shape_color": round(1 / (len(synthetic.SHAPES) * len(synthetic.COLORS)), 4),
                        "shape": 1 / len(synthetic.SHAPES), "color": round(1 / len(synthetic.COLORS), 4),
                        "position": 1 / len(synthetic.POSITIONS), "size": 1 / len(synthetic.SIZES)}
    with open(os.path.join(args.workdir, "sampling_benchmark.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
