"""Masking Warmup and the other masking-ratio schedules, and the per-sample random masks.

DREAM draws one masking ratio per group (a contiguous slice of the global batch, the authors' one ratio per
GPU) from TruncNormal(mu(e), 0.45, [0, 1]) with mu(e) = clip(e / 36, 0, 1) and e the fractional epoch, so low
and high ratios coexist in every step. Each sample then masks exactly ceil(L * r) tokens chosen by its own
random permutation. All functions are jittable with static shapes; the step is a traced value, so one
compilation serves every step.

Dimension letters: G mask groups, B batch, L tokens.
"""

import jax
import jax.numpy as jnp

KINDS = ("warmup", "mar", "fixed", "uniform")


def validate(masking):
    """Raises ValueError on an unusable masking config (called once, at config load)."""
    if masking.kind not in KINDS:
        raise ValueError(f"masking.kind={masking.kind!r}; expected one of {KINDS}")
    for name in ("min_ratio", "max_ratio", "fixed_ratio", "mu_start", "mu_end"):
        if not 0.0 <= masking[name] <= 1.0:
            raise ValueError(f"masking.{name}={masking[name]} is outside [0, 1]")
    if masking.min_ratio > masking.max_ratio:
        raise ValueError(f"masking.min_ratio={masking.min_ratio} > max_ratio={masking.max_ratio}")
    if masking.std <= 0:
        raise ValueError(f"masking.std={masking.std} must be > 0")
    if masking.warmup_end_epoch <= masking.warmup_start_epoch:
        raise ValueError("masking.warmup_end_epoch must be after warmup_start_epoch")
    if masking.num_groups < 1:
        raise ValueError(f"masking.num_groups={masking.num_groups} must be >= 1")


def warmup_mean(epoch, masking):
    """mu(e): linear from mu_start to mu_end between the warmup epochs, clipped to [min_ratio, max_ratio]."""
    frac = (epoch - masking.warmup_start_epoch) / (masking.warmup_end_epoch - masking.warmup_start_epoch)
    mu = masking.mu_start + (masking.mu_end - masking.mu_start) * jnp.clip(frac, 0.0, 1.0)
    return jnp.clip(mu, masking.min_ratio, masking.max_ratio)


def _trunc_normal(rng, mu, std, low, high, shape):
    unit = jax.random.truncated_normal(rng, (low - mu) / std, (high - mu) / std, shape, jnp.float32)
    return jnp.clip(mu + std * unit, low, high)


def sample_mask_ratios(rng, step, config):
    """float32 [G] masking ratios for training step `step` (a traced int is fine)."""
    m = config.masking
    shape = (m.num_groups,)
    if m.kind == "warmup":
        epoch = jnp.asarray(step, jnp.float32) / config.steps_per_epoch
        return _trunc_normal(rng, warmup_mean(epoch, m), m.std, m.min_ratio, m.max_ratio, shape)
    if m.kind == "mar":
        # MAR / FLUID: TruncNormal(1.0, 0.25) on [0.7, 1.0].
        return _trunc_normal(rng, 1.0, 0.25, 0.7, 1.0, shape)
    if m.kind == "fixed":
        return jnp.full(shape, m.fixed_ratio, jnp.float32)
    if m.kind == "uniform":
        return jax.random.uniform(rng, shape, jnp.float32, m.min_ratio, m.max_ratio)
    raise ValueError(f"masking.kind={m.kind!r}; expected one of {KINDS}")


def num_masked(ratios, length):
    """ceil(L * r) as int32, the authors' count of masked tokens."""
    return jnp.ceil(ratios * length).astype(jnp.int32)


def random_masks(rng, ratios, batch_size, length):
    """bool [B, L], True = masked: sample b of group g = b // (B / G) masks ceil(L r_g) random tokens."""
    groups = ratios.shape[0]
    if batch_size % groups:
        raise ValueError(f"batch size {batch_size} is not divisible by masking.num_groups {groups}")
    counts = jnp.repeat(num_masked(ratios, length), batch_size // groups)
    order = jnp.argsort(jax.random.uniform(rng, (batch_size, length)), axis=-1)
    ranks = jnp.argsort(order, axis=-1)
    return ranks < counts[:, None]
