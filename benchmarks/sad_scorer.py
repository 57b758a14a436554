"""What SAD's critic sees: does DREAM's own image-text score prefer the right attribute, on real and generated images?

    python benchmarks/sad_scorer.py --workdirs=workdir/bench_tiny/seed0,workdir/bench_tiny/seed1 [--num=128] [--k=5]

SAD keeps the candidate whose partly decoded image DREAM's encoder scores highest against the prompt, so it can
only improve an attribute the score distinguishes on generated images. Per tiny workdir (EMA weights), for each
attribute (shape, colour, position, size):
  real       on `num` held-out rendered images: how often the true caption outscores the same caption with that
             one attribute changed (the next value), and the mean score margin;
  generated  `k` plain-decoded samples of each of `num` held-out prompts, read by the oracle: over the prompts
             whose samples disagree on the attribute, the mean score of the right samples minus the wrong ones;
             and the match rate of the first sample, of the sample the score ranks best (best-of-k on finished
             images, SAD's upper bound with this critic), and of the best sample the oracle could pick.
Prints one table per workdir and a JSON line of everything.

Dimension letters: P prompts, K samples per prompt.
"""

import argparse
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import dream_tiny  # noqa: E402
from dream_jax import runtime  # noqa: E402
from dream_jax.data import oracle, synthetic  # noqa: E402
from dream_jax.evaluation import alignment, interface  # noqa: E402
from dream_jax.evaluation import prompts as eval_prompts  # noqa: E402
from dream_jax.generation import generate  # noqa: E402

SIZES = {"shape": len(synthetic.SHAPES), "color": len(synthetic.COLORS), "position": len(synthetic.POSITIONS),
         "size": len(synthetic.SIZES)}


def real_margins(score, num):
    """{attribute: (fraction true > changed, mean margin)} on held-out rendered images."""
    items = [synthetic.CaptionedShapes("heldout", num_examples=num, seed=2000)[i] for i in range(num)]
    images = np.stack([it["image"] for it in items])
    attrs = [{a: int(it[a]) for a in synthetic.ATTRIBUTES} for it in items]
    true = score(images, [synthetic.caption(**a, template=0) for a in attrs])
    out = {}
    for name, n in SIZES.items():
        changed = score(images, [synthetic.caption(**dict(a, **{name: (a[name] + 1) % n}), template=0)
                                 for a in attrs])
        out[name] = (float(np.mean(true > changed)), float(np.mean(true - changed)))
    return out


def generated_margins(ctx, score, num, k):
    """{attribute: (prompts with disagreeing samples, mean margin right - wrong, first, best-of-k, oracle-best)}."""
    prompts, targets = eval_prompts.shapes_prompts(num)
    images, _, _ = ctx.predict.sample(prompts, k, 0, generate.mode_options(ctx.config, "plain"), log=ctx.log)
    flat = images.reshape((-1,) + images.shape[2:])
    scores = score(flat, [p for p in prompts for _ in range(k)]).reshape(num, k)
    read = oracle.read_attributes(flat)
    best = scores.argmax(axis=1)
    out = {}
    for name in SIZES:
        hit = read[name].reshape(num, k) == targets[name][:, None]
        mixed = hit.any(axis=1) & ~hit.all(axis=1)
        margins = [scores[i][hit[i]].mean() - scores[i][~hit[i]].mean() for i in np.flatnonzero(mixed)]
        out[name] = (int(mixed.sum()), float(np.mean(margins)) if margins else float("nan"),
                     float(hit[:, 0].mean()), float(hit[np.arange(num), best].mean()), float(hit.any(axis=1).mean()))
    return out


def measure(workdir, num, k):
    config = dream_tiny.get_config()
    rt = runtime.create(config)
    variables, step = runtime.restore_variables(rt, workdir, config.sampling.use_ema)
    ctx = interface.make_context(rt, workdir, variables, step, True, lambda *a: None)

    def score(images, prompts):
        return alignment.own_scores(ctx, images, prompts)

    return step, real_margins(score, num), generated_margins(ctx, score, num, k)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdirs", required=True, help="comma-separated trained tiny workdirs")
    parser.add_argument("--num", type=int, default=128)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    results = {}
    for workdir in args.workdirs.split(","):
        step, real, generated = measure(workdir, args.num, args.k)
        results[workdir] = {"step": step, "real": real, "generated": generated}
        print(f"\n{workdir} (step {step}, {args.num} prompts, k={args.k})")
        print("| attribute | real: true caption wins | real: margin | generated: mixed prompts | generated: margin "
              "right - wrong | first sample | best-of-k by score | best-of-k by oracle |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in SIZES:
            (wins, margin), (mixed, gap, first, ranked, ceiling) = real[name], generated[name]
            print(f"| {name} | {wins:.3f} | {margin:+.3f} | {mixed} | {gap:+.4f} | {first:.3f} | {ranked:.3f} | "
                  f"{ceiling:.3f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
