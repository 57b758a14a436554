"""When does the tiny generator start to follow the prompt? Train once, then probe every saved step.

    python benchmarks/generation_onset.py --steps=700 --every=100 --workdir=workdir/onset

Trains the embedded default for --steps (the 48-epoch masking warmup compressed into the run, as
benchmarks/train_tiny.py and tests/test_learning.py do; --steps_per_epoch=50 keeps the config's own pace, so mu
stays low), keeping a checkpoint every --every steps. For each saved step (EMA weights) it reports:

- `match`: the oracle's match rate of shape, colour and position for plain decoding (64 steps, CFG 3.0) of
  --num_prompts held-out prompts, one seed; `match_sample_mode` the same for the config's own sampler (what
  `--mode=sample` draws: SAD, 16 steps);
- `z_gap`: how much the decoder's z says about the image: the diffusion loss of held-out images at mask ratio 0.5
  with each image's own z, against the same loss (same t and noise) with the z of another image of the batch.
  Near zero, the head ignores the visible tokens and the text, and samples are independent per-token draws
  from the marginal: alignment then stays at chance.

Prints one JSON line per step and writes WORKDIR/onset.json.
"""

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

# configs/ is not installed: the repository root holds it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import dream_tiny  # noqa: E402
from dream_jax import base_config, checkpoint, runtime, state  # noqa: E402
from dream_jax import frozen as frozen_lib  # noqa: E402
from dream_jax import tokens as tokens_lib  # noqa: E402
from dream_jax.data import oracle, synthetic  # noqa: E402
from dream_jax.generation import generate, sampler  # noqa: E402
from dream_jax.models import diffusion_head  # noqa: E402
from dream_jax.models.dream import DREAM  # noqa: E402
from dream_jax.training import masking, train  # noqa: E402


def _config(steps, every, steps_per_epoch, overrides=()):
    c = dream_tiny.get_config()
    for assignment in overrides:
        base_config.apply_override(c, assignment)
    c.total_steps = steps
    c.steps_per_epoch = steps_per_epoch or steps // c.num_epochs + 1
    c.checkpoint_every = every
    c.keep_checkpoints = steps // every + 1
    c.log_every = max(10, steps // 20)
    c.mesh.num_devices = 1
    for evaluator in c.evals.values():
        evaluator.enabled = False
    return c


def z_gap(config, variables, frozen, tokenizers, images, captions, ratio=0.5):
    """(loss with own z, loss with another image's z): the diffusion loss of `images` at mask `ratio`."""
    model = DREAM(config.model)
    tokens = tokens_lib.images_to_tokens(config, frozen, images, jax.random.key(0))
    cond_ids, cond_mask = map(jnp.asarray, tokenizers.cond_ids(captions))
    text = model.apply(variables, frozen_lib.cond_features(config, frozen, cond_ids, cond_mask),
                       method=DREAM.align_text)
    groups = config.masking.num_groups
    mask = masking.random_masks(jax.random.key(1), jnp.full((groups,), ratio), tokens.shape[0], tokens.shape[1])
    x, _ = model.apply(variables, tokens, mask, method=DREAM.encode)
    z = model.apply(variables, x, mask, text, method=DREAM.decode)

    def loss(zz):
        def denoise(x_t, t, c):
            return model.apply(variables, x_t, t, c, method=DREAM.denoise)
        value, _ = diffusion_head.loss(denoise, jax.random.key(2), tokens, zz, mask, config.diffusion.num_steps,
                                       groups, config.diffusion.batch_mul, 0.0)
        return float(value)

    return loss(z), loss(jnp.roll(z, 1, axis=0))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--steps_per_epoch", type=int, default=0, help="0: compress 48 epochs into --steps")
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--workdir", default="workdir/onset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. --set masking.kind='mar' (repeatable)")
    args = parser.parse_args()
    config = _config(args.steps, args.every, args.steps_per_epoch, args.set)
    train.train_and_evaluate(config, args.workdir)
    rt = runtime.create(config)
    mesh, tokenizers, frozen = rt.mesh, rt.tokenizers, rt.frozen
    source = synthetic.CaptionedShapes("heldout", num_examples=args.num_prompts, seed=0)
    items = [source[i] for i in range(args.num_prompts)]
    captions = [it["caption"] for it in items]
    targets = {k: np.array([it[k] for it in items]) for k in ("shape", "color", "position")}
    images = jnp.asarray(np.stack([it["image"] for it in items]))
    prompt_ids = [jnp.asarray(a) for a in sampler.encode_prompts(tokenizers, captions)]
    samplers = {"match": generate.options_from_config(config, num_candidates=1, sad_step=0, num_iter=64),
                "match_sample_mode": generate.options_from_config(config)}
    manager = checkpoint.Manager(args.workdir, config, read_only=True)
    abstract = state.abstract_state(config, mesh)
    rows = []
    for step in manager.steps():
        restored = manager.restore(step, abstract)
        variables = {"params": restored.ema_params, "batch_stats": restored.batch_stats}
        row = {"step": step}
        for name, opts in samplers.items():
            tokens, _, _ = generate.generate(generate.freeze(config), opts, variables, frozen, *prompt_ids,
                                             jax.random.key(0))
            samples = np.asarray(tokens_lib.tokens_to_images(config, frozen, tokens))
            row[name] = {k: round(v, 3) for k, v in oracle.alignment(samples, targets).items() if k in targets}
        own, other = z_gap(config, variables, frozen, tokenizers, images, captions)
        row.update(loss_own_z=round(own, 5), loss_other_z=round(other, 5), z_gap=round(other - own, 5))
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})", "steps": args.steps,
              "steps_per_epoch": config.steps_per_epoch, "num_prompts": args.num_prompts,
              "chance": {"shape": 1 / len(synthetic.SHAPES), "color": round(1 / len(synthetic.COLORS), 4),
                         "position": 1 / len(synthetic.POSITIONS)}, "rows": rows}
    with open(os.path.join(args.workdir, "onset.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
