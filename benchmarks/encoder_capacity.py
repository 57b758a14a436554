"""What the encoder's capacity plans save over a training run, and how many train steps they compile.

    python benchmarks/encoder_capacity.py [--config=configs/dream_b.py] [--samples=2000]

Draws the mask ratios of `--samples` steps spread evenly over the run (train.mask_ratios: the run's own draws) and,
for each (model.encoder_classes K, model.encoder_buckets) setting, the capacity plan of every sampled step
(capacity.plan, one batch shard as on one host; more shards only lower K where a class would not spread). It
prints the encoder's training FLOPs as a ratio against the key-masked encoder on all positions (the reference, in
the same process), the ideal (every example on exactly its visible tokens), and the number of distinct plans, i.e.
compiled train steps. FLOPs are flops.encoder_forward_flops' (matmuls and attention; the backward is 2x the forward
in both, so the ratio is the training ratio).

Dimension letters: G mask groups, L image tokens, K encoder classes.
"""

import argparse
import importlib
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dream_jax import flops, state  # noqa: E402
from dream_jax.training import capacity, train  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dream_b.py")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--classes", default="1,2,4,8")
    parser.add_argument("--buckets", default="4,8,16")
    args = parser.parse_args()
    module = args.config.replace("/", ".").removesuffix(".py")
    config = importlib.import_module(module).get_config()
    length = config.model.seq_len
    steps = np.linspace(0, state.total_steps(config) - 1, args.samples).astype(np.int64)
    draw = train.host_mask_ratios(config)
    ratios = [draw(s) for s in steps]
    full = flops.encoder_forward_flops(config, length)
    ideal = np.mean([np.mean([flops.encoder_forward_flops(config, v)
                              for v in capacity.visible_counts(r, length)]) for r in ratios]) / full
    print(f"{config.model.scale}: L {length}, buffer {config.model.buffer_size}, {config.masking.num_groups} mask "
          f"groups, batch {config.batch_size}, {args.samples} steps of {state.total_steps(config)} "
          f"({config.masking.kind} masking); device {jax.devices()[0].device_kind}")
    print(f"encoder FLOPs vs the key-masked encoder (1.000): ideal per-example gather {ideal:.3f}\n")
    print("| encoder_classes K | encoder_buckets (capacity step) | encoder FLOPs vs key-masked | compiled steps |")
    print("|---|---|---|---|")
    for classes in map(int, args.classes.split(",")):
        for buckets in map(int, args.buckets.split(",")):
            config.model.encoder_classes, config.model.encoder_buckets = classes, buckets
            plans = [capacity.plan(config, r, 1) for r in ratios]
            cost = np.mean([np.mean([flops.encoder_forward_flops(config, c) for c in (p or (length,))])
                            for p in plans]) / full
            print(f"| {classes} | {buckets} ({-(-length // buckets)} tokens) | {cost:.3f} | {len(set(plans))} |")


if __name__ == "__main__":
    main()
