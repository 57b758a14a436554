"""Semantically Aligned Decoding vs best-of-K reranking: alignment against cost, K x T_c, on one trained workdir.

    python benchmarks/sad_sweep.py --workdir=WORKDIR/study/dream/seed1 --seed=1 [--ks=1,2,5,10] [--tcs=1,2,4,5]
        [--num_prompts=256] [--out=docs/results/sad_sweep_seed1.json]

On the tiny config (the study's DREAM arm, `--seed` its training seed), for the held-out prompts of the alignment
evaluator: plain decoding (K = 1), SAD for every K > 1 and T_c of `--tcs` (sampling steps before the candidates
are scored; with 16 tokens and 8 cosine steps T_c = 1, 2, 4, 5 decode 6.25%, 12.5%, 31% and 50% of the tokens:
one token is 6.25%, so the issue's 3% is not reachable), and best-of-K reranking of K finished plain samples by
the same score. Per setting: the oracle's match rate per attribute, generation wall seconds in this process
(compilation excluded: each setting first runs once on `--warmup` prompts, which compiles every batch shape the
timed run uses), and forward matmul FLOPs per image (dream_jax.flops.generation_flops; reranking adds K finished
images' scoring). Writes one JSON (`--out`) and prints a table.

Dimension letters: P prompts, K candidates.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import dream_tiny  # noqa: E402
from dream_jax import flops, runtime  # noqa: E402
from dream_jax.data import oracle  # noqa: E402
from dream_jax.evaluation import alignment, interface  # noqa: E402
from dream_jax.evaluation import prompts as eval_prompts  # noqa: E402
from dream_jax.generation import generate  # noqa: E402

ATTRIBUTES = ("shape", "color", "position", "size", "shape_color")


def settings(ks, tcs):
    """[(method, K, T_c)]: plain once, SAD at every K > 1 and T_c, reranking at every K > 1."""
    out = [("plain", 1, 0)]
    for k in ks:
        if k > 1:
            out += [("sad", k, tc) for tc in tcs] + [("rerank", k, 0)]
    return out


def with_sampling(config, k, tc):
    c = config.copy_and_resolve_references()
    c.sampling.num_candidates, c.sampling.sad_step = max(k, 2), tc or 1  # plain/rerank read K only (mode_options)
    return c


def images_per_prompt(method, ctx, prompts, seed):
    """uint8 [P, H, W, 3]: one image per prompt by `method`, with ctx's config."""
    if method == "rerank":
        return alignment.best_of_k(ctx, prompts, 1, seed)[:, 0]
    images, _, _ = ctx.predict.sample(prompts, 1, seed, generate.mode_options(ctx.config, method), log=ctx.log)
    return images[:, 0]


def cost_flops(method, config, k):
    """Forward matmul FLOPs of one image: SAD and plain from generation_flops; reranking K plain decodes plus the
    encoder and projections on each finished image."""
    opts = generate.mode_options(config, "sad" if method == "sad" else "plain")
    per = sum(flops.generation_flops(config, opts).values())
    if method != "rerank":
        return per
    score = flops.encoder_forward_flops(config, config.model.seq_len) + flops.forward_flops(config, 0.0)["projections"]
    return k * (per + score)


def measure(config, workdir, ks, tcs, num_prompts, warmup, seed=0, log=print):
    """[{method, k, tc, decoded, seconds, flops, oracle_<attribute>}] of every setting."""
    rt = runtime.create(config)
    variables, step = runtime.restore_variables(rt, workdir, config.sampling.use_ema)
    prompts, targets = eval_prompts.shapes_prompts(num_prompts, seed)
    quiet = lambda *a: None  # noqa: E731
    rows = []
    for method, k, tc in settings(ks, tcs):
        c = with_sampling(config, k, tc)
        ctx = interface.make_context(dataclasses.replace(rt, config=c), workdir, variables, step, True, quiet)
        images_per_prompt(method, ctx, prompts[:warmup], seed)  # compiles every shape of the timed run
        start = time.monotonic()
        images = images_per_prompt(method, ctx, prompts, seed)
        seconds = time.monotonic() - start
        rates = oracle.match_rates(oracle.read_attributes(images), targets)
        row = {"method": method, "k": k, "tc": tc, "seconds": seconds, "flops": cost_flops(method, c, k),
               "decoded": float(generate.decoded_fraction(c.model.seq_len, c.sampling.num_iter, tc)),
               **{f"oracle_{a}": float(rates[a]) for a in ATTRIBUTES}}
        rows.append(row)
        log(format_row(row))
    return step, rows


def format_row(r):
    cells = [r["method"], str(r["k"]), f"{r['decoded']:.3f}" if r["method"] == "sad" else "",
             f"{r['seconds']:.2f}", f"{r['flops'] / 1e9:.3f}"] + [f"{r[f'oracle_{a}']:.3f}" for a in ATTRIBUTES]
    return "| " + " | ".join(cells) + " |"


HEADER = ("| method | K | decoded at T_c | seconds | GFLOPs / image | " + " | ".join(ATTRIBUTES) + " |\n"
          + "| --- " * (5 + len(ATTRIBUTES)) + "|")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a trained tiny workdir (e.g. the study's dream/seed1)")
    parser.add_argument("--seed", type=int, default=0, help="its training seed (config.seed)")
    parser.add_argument("--ks", default="1,2,5,10")
    parser.add_argument("--tcs", default="1,2,4,5")
    parser.add_argument("--num_prompts", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=128, help="prompts of each setting's untimed first run")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if not os.path.isdir(args.workdir):
        raise SystemExit(f"error: --workdir={args.workdir!r} does not exist; train one first (benchmarks/study.py)")
    config = dream_tiny.get_config()
    config.seed, config.data.shuffle_seed = args.seed, args.seed
    chunk = config.sampling.batch_size
    if args.warmup < 128 or args.warmup % chunk or args.num_prompts % chunk:
        raise SystemExit(f"error: --warmup={args.warmup} and --num_prompts={args.num_prompts} must be multiples of "
                         f"sampling.batch_size={chunk}, --warmup >= 128, so the warm-up compiles every batch shape")
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}, {os.cpu_count()} cores)"
    print(f"device: {device}\n{HEADER}", flush=True)
    step, rows = measure(config, args.workdir, [int(k) for k in args.ks.split(",")],
                         [int(t) for t in args.tcs.split(",")], args.num_prompts, args.warmup,
                         log=lambda line: print(line, flush=True))
    if args.out:
        with open(f"{args.out}.tmp", "w") as f:
            json.dump({"workdir": os.path.abspath(args.workdir), "seed": args.seed, "step": step,
                       "num_prompts": args.num_prompts, "device": device, "rows": rows}, f, indent=1)
        os.replace(f"{args.out}.tmp", args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
