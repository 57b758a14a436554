"""Masking Warmup: ratio distributions (Kolmogorov-Smirnov vs scipy.stats.truncnorm), exact masked counts,
per-group sharing, and one compilation for every step.

The ratios of many groups (masking.num_groups = 50000) form an i.i.d. sample of one step's distribution.

Dimension letters: G mask groups, B batch, L tokens.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dream_jax import base_config
from dream_jax.training import masking

N = 50_000
STEPS_PER_EPOCH = 100


def _config(kind="warmup", groups=N, **overrides):
    config = base_config.get_base_config("B")
    config.steps_per_epoch = STEPS_PER_EPOCH
    config.masking.kind = kind
    config.masking.num_groups = groups
    config.masking.update(overrides)
    return config


def _ratios(config, epoch, seed=0):
    step = round(epoch * STEPS_PER_EPOCH)
    r = masking.sample_mask_ratios(jax.random.key(seed), jnp.int32(step), config)
    assert r.shape == (config.masking.num_groups,) and r.dtype == jnp.float32
    return np.asarray(r, np.float64)


def _truncnorm(mu, std, low, high):
    return stats.truncnorm((low - mu) / std, (high - mu) / std, loc=mu, scale=std)


def _paper_mu(epoch):
    return min(max(epoch / 36.0, 0.0), 1.0)


@pytest.mark.parametrize("epoch", [0, 6.5, 12, 36, 47])
def test_warmup_matches_truncnorm(epoch):
    r = _ratios(_config(), epoch, seed=0)
    assert r.min() >= 0.0 and r.max() <= 1.0
    p = stats.kstest(r, _truncnorm(_paper_mu(epoch), 0.45, 0.0, 1.0).cdf).pvalue
    assert p > 0.01, (epoch, p)


@pytest.mark.parametrize("epoch, wrong_mu", [(0, 0.05), (12, 12 / 36 + 0.05), (47, 0.9)])
def test_warmup_ks_rejects_wrong_mean(epoch, wrong_mu):
    # Negative control: the same sample against a distribution with a slightly shifted mean is rejected,
    # so the passing test above has the power to catch such a schedule error.
    r = _ratios(_config(), epoch, seed=1)
    assert stats.kstest(r, _truncnorm(wrong_mu, 0.45, 0.0, 1.0).cdf).pvalue < 1e-6


def test_warmup_ks_rejects_wrong_std():
    r = _ratios(_config(), 12, seed=2)
    assert stats.kstest(r, _truncnorm(12 / 36, 0.40, 0.0, 1.0).cdf).pvalue < 1e-6


def test_warmup_mean_schedule():
    m = _config().masking
    epochs = jnp.array([0.0, 1.0, 9.0, 18.0, 35.5, 36.0, 40.0, 48.0])
    np.testing.assert_allclose(masking.warmup_mean(epochs, m), [_paper_mu(float(e)) for e in epochs], atol=1e-7)


def test_mar_matches_truncnorm():
    r = _ratios(_config("mar"), 20, seed=0)
    assert r.min() >= 0.7 and r.max() <= 1.0
    assert stats.kstest(r, _truncnorm(1.0, 0.25, 0.7, 1.0).cdf).pvalue > 0.01
    # The MAR option ignores the warmup epoch: the same seed gives the same draw at any step.
    np.testing.assert_array_equal(r, _ratios(_config("mar"), 0, seed=0))
    assert stats.kstest(r, _truncnorm(0.95, 0.25, 0.7, 1.0).cdf).pvalue < 1e-6


def test_fixed_kind():
    r = _ratios(_config("fixed", groups=7, fixed_ratio=0.3), 5)
    np.testing.assert_array_equal(r, np.full(7, np.float32(0.3)))


def test_uniform_kind():
    r = _ratios(_config("uniform", min_ratio=0.2, max_ratio=0.9), 5, seed=0)
    assert r.min() >= 0.2 and r.max() <= 0.9
    assert stats.kstest(r, stats.uniform(0.2, 0.7).cdf).pvalue > 0.01
    assert stats.kstest(r, stats.uniform(0.2, 0.75).cdf).pvalue < 1e-6


def test_masked_counts_exact_and_shared_per_group():
    length, groups, per_group = 256, 8, 6
    ratios = jnp.array([0.0, 1.0, 0.5, 1 / 256, 0.001, 0.3337, 0.75, 0.999], jnp.float32)
    mask = np.asarray(masking.random_masks(jax.random.key(0), ratios, groups * per_group, length))
    assert mask.shape == (groups * per_group, length) and mask.dtype == bool
    expected = [math.ceil(length * float(r)) for r in np.asarray(ratios, np.float64)]
    assert expected[:5] == [0, 256, 128, 1, 1]
    counts = mask.sum(axis=1).reshape(groups, per_group)
    np.testing.assert_array_equal(counts, np.repeat(np.array(expected)[:, None], per_group, axis=1))


def test_masked_counts_random_ratios():
    config = _config(groups=16)
    ratios = masking.sample_mask_ratios(jax.random.key(5), jnp.int32(1000), config)
    mask = np.asarray(masking.random_masks(jax.random.key(6), ratios, 64, 256))
    expected = np.ceil(256 * np.asarray(ratios, np.float64)).astype(int)
    np.testing.assert_array_equal(mask.sum(axis=1), np.repeat(expected, 4))  # each group's ratio, realised


def test_masks_differ_between_samples():
    ratios = jnp.array([0.5, 0.5], jnp.float32)
    mask = np.asarray(masking.random_masks(jax.random.key(1), ratios, 32, 256))
    assert len({row.tobytes() for row in mask}) == 32
    # Every position is masked in some sample: the permutation is not a fixed order.
    assert mask.any(axis=0).all()
    # A different key gives different masks.
    other = np.asarray(masking.random_masks(jax.random.key(2), ratios, 32, 256))
    assert (mask != other).any()


def test_batch_not_divisible_by_groups():
    with pytest.raises(ValueError, match="not divisible"):
        masking.random_masks(jax.random.key(0), jnp.full((3,), 0.5), 8, 16)


def test_compiles_once_for_all_steps():
    config = _config(groups=4)
    traces = []

    def sample(rng, step):
        traces.append(step)  # runs once per trace, never per call
        return masking.sample_mask_ratios(rng, step, config)

    fn = jax.jit(sample)
    draws = [np.asarray(fn(jax.random.key(0), jnp.int32(s))) for s in range(0, 48 * STEPS_PER_EPOCH, 97)]
    assert len(traces) == 1
    assert fn._cache_size() == 1
    # The traced step really moves the distribution: same key, later step, larger ratios (same uniform draw
    # pushed through a larger mean).
    assert draws[-1].mean() > draws[0].mean()
