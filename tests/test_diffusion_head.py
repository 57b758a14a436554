"""models/diffusion_head.py's sampler: classifier-free guidance combines eps as MAR's forward_with_cfg does, and
guided sampling reduces to plain sampling where guidance cannot matter.

Dimension letters: N tokens, T token dim, D condition width.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.models import diffusion_head

N, T, D = 6, 4, 5


def _denoise(x_t, t, z):
    """A toy head whose eps and variance values depend on x_t, t and z differently."""
    eps = jnp.tanh(x_t + z[:, :T] + t[:, None] / 100.0)
    var = jnp.tanh(0.5 * x_t - z[:, 1:T + 1])
    return jnp.concatenate([eps, var], axis=-1)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, T)).astype(np.float32)
    t = rng.integers(0, 100, N).astype(np.int32)
    z, zu = rng.standard_normal((2, N, D)).astype(np.float32)
    return x, t, z, zu


def test_guidance_is_uncond_plus_scale_times_difference_with_the_cond_variance():
    x, t, z, zu = _inputs()
    out = np.asarray(diffusion_head.guided(_denoise, z, zu, 2.5)(x, t))
    cond, uncond = np.asarray(_denoise(x, t, z)), np.asarray(_denoise(x, t, zu))
    np.testing.assert_allclose(out[:, :T], uncond[:, :T] + 2.5 * (cond[:, :T] - uncond[:, :T]), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_array_equal(out[:, T:], cond[:, T:])


def test_unguided_is_the_head_on_the_condition():
    x, t, z, _ = _inputs(1)
    np.testing.assert_array_equal(diffusion_head.guided(_denoise, z)(x, t), _denoise(x, t, z))


def test_sampling_with_scale_one_equals_unguided_sampling():
    """eps_u + 1 (eps_c - eps_u) = eps_c: guidance at scale 1 leaves the chain unchanged; a scale of 3 changes it."""
    x, _, z, zu = _inputs(2)
    args = (x, jax.random.key(0), 1000, 10)
    plain = diffusion_head.sample(_denoise, z, *args)
    np.testing.assert_allclose(diffusion_head.sample(_denoise, z, *args, z_uncond=zu, scale=1.0), plain,
                               rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(diffusion_head.sample(_denoise, z, *args, z_uncond=zu, scale=3.0)) - plain).max() > 1e-2
