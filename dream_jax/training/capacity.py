"""Encoder capacity plans: how many image-token slots the encoder computes, per class of a step's batch.

MAR and DREAM owe their efficiency to an encoder that runs on the visible tokens only, but jit needs static
shapes, and Masking Warmup gives every mask group its own ratio. A step's ratios are drawn before the step (from
the same rng, train.mask_ratios, so a resumed run repeats them) and given to the groups in ascending order; every
(micro)batch is then cut into K contiguous classes of whole groups of similar ratios, and class c runs the encoder
on the buffer + `plan[c]` gathered slots: the largest visible count among its groups, rounded up to a multiple
of L / model.encoder_buckets. The plan (a tuple of K capacities) is the static key of a compiled train step, so a
run compiles a few steps, not one per visible count; () means the key-masked step over all positions (every class
would be at full capacity), the worst case that --mode=compile reports. docs/SCALING.md has the measured trade-off
between K, bucket width, expected encoder FLOPs and the number of compiled steps.

Host-side (numpy) functions of already drawn ratios; no jax.

Dimension letters: G mask groups, L image tokens, K encoder classes, k microbatches (grad_accum_steps).
"""

import numpy as np


def num_classes(config, shards):
    """The largest K <= model.encoder_classes that cuts each microbatch into K classes of whole mask groups, every
    class spread evenly over the `shards` batch shards (else a class would sit on some chips only)."""
    k = config.grad_accum_steps
    groups, batch = config.masking.num_groups // k, config.batch_size // k
    for classes in range(max(config.model.encoder_classes, 1), 1, -1):
        if groups % classes == 0 and batch % (classes * shards) == 0:
            return classes
    return 1


def visible_counts(ratios, length):
    """[G] ratios -> [G] visible tokens per example, L - ceil(L r) computed in float32 as masking.num_masked."""
    masked = np.ceil(np.asarray(ratios, np.float32) * np.float32(length)).astype(np.int64)
    return length - masked


def plan(config, ratios, shards):
    """The static capacities (one per class) that hold every example's visible tokens; () if all would be L.

    `ratios` [G] are the step's ratios in group order (train.mask_ratios); class c of microbatch j holds groups
    j G/k + c G/(k K) ... and the plan covers every microbatch, as all run the same compiled encoder (with
    grad_accum_steps > 1 the first microbatch, of the lowest ratios, sets it).
    """
    length, k = config.model.seq_len, config.grad_accum_steps
    classes = num_classes(config, shards)
    visible = visible_counts(ratios, length).reshape(k, classes, -1).max(axis=(0, 2))
    width = -(-length // config.model.encoder_buckets)
    capacities = tuple(int(min(length, -(-v // width) * width)) for v in visible)
    return () if all(c == length for c in capacities) else capacities

