"""The Gaussian diffusion of MAR's DiffLoss (IDDPM / DiT `create_diffusion`), as pure functions.

1000 steps with the cosine beta schedule, eps prediction with LEARNED_RANGE variance; the training loss is
MSE(eps) plus the variational bound on a stop-gradient mean (loss type MSE, so the VB term is not rescaled);
sampling uses a respaced schedule (100 steps) with the injected noise multiplied by a temperature.
Constants are computed in float64 numpy once and stored as float32 arrays.

Dimension letters: N tokens, T token dim, S diffusion steps of a schedule.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


def cosine_betas(num_steps, max_beta=0.999):
    """IDDPM's cosine schedule: beta_t = 1 - abar(t+1)/abar(t) with abar(t) = cos^2((t/S + 0.008)/1.008 pi/2)."""
    abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array(
        [min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)],
        dtype=np.float64,
    )


def respaced_timesteps(num_steps, num_sampling_steps):
    """The kept timesteps of IDDPM's `space_timesteps(num_steps, str(num_sampling_steps))` (one section)."""
    # One step has no posterior variance to clip (IDDPM's log variance reads step 1): at least 2.
    if num_sampling_steps > num_steps or num_sampling_steps < 2:
        raise ValueError(f"diffusion.sampling_steps={num_sampling_steps} must be in [2, diffusion.num_steps="
                         f"{num_steps}]")
    stride = (num_steps - 1) / (num_sampling_steps - 1)
    return np.array(sorted({round(i * stride) for i in range(num_sampling_steps)}))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Per-step constants of a (possibly respaced) diffusion; `timestep_map` gives the model's t input."""

    betas: np.ndarray
    timestep_map: np.ndarray

    def _arrays(self):
        b = self.betas
        alphas_cumprod = np.cumprod(1.0 - b)
        prev = np.append(1.0, alphas_cumprod[:-1])
        post_var = b * (1.0 - prev) / (1.0 - alphas_cumprod)
        return {
            "timestep_map": self.timestep_map,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
            "posterior_mean_coef1": b * np.sqrt(prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - prev) * np.sqrt(1.0 - b) / (1.0 - alphas_cumprod),
            "log_betas": np.log(b),
        }

    def constants(self):
        """The float32 jnp constants used by the functions below."""
        return {k: jnp.asarray(v, jnp.float32 if k != "timestep_map" else jnp.int32) for k, v in self._arrays().items()}

    @property
    def num_steps(self):
        return len(self.betas)


def make_schedule(num_steps=1000, num_sampling_steps=None):
    """The training schedule (all steps) or its respaced version for sampling."""
    betas = cosine_betas(num_steps)
    if num_sampling_steps is None:
        return Schedule(betas, np.arange(num_steps))
    keep = respaced_timesteps(num_steps, num_sampling_steps)
    alphas_cumprod = np.cumprod(1.0 - betas)[keep]
    new_betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
    return Schedule(new_betas, keep)


def _at(c, name, t):
    return c[name][t][:, None]


def q_sample(c, x0, t, noise):
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
    return _at(c, "sqrt_alphas_cumprod", t) * x0 + _at(c, "sqrt_one_minus_alphas_cumprod", t) * noise


def p_mean_logvar(c, x_t, t, eps, var_values, clip_denoised=False, denoised_fn=None):
    """Model mean and log variance from an eps prediction and LEARNED_RANGE variance values in [-1, 1].

    `denoised_fn` maps the implied x0 [N, T] onto the data's support, and `clip_denoised` then clips it to
    [-1, 1] (IDDPM's two options; MAR samples latents with neither, but they are valid and stabilising for data
    of known range, e.g. the tiny config's pixels: tokens.x0_constraint).
    """
    frac = (var_values + 1) / 2
    logvar = frac * _at(c, "log_betas", t) + (1 - frac) * _at(c, "posterior_log_variance_clipped", t)
    x0 = _at(c, "sqrt_recip_alphas_cumprod", t) * x_t - _at(c, "sqrt_recipm1_alphas_cumprod", t) * eps
    if denoised_fn is not None:
        x0 = denoised_fn(x0)
    if clip_denoised:
        x0 = jnp.clip(x0, -1.0, 1.0)
    mean = _at(c, "posterior_mean_coef1", t) * x0 + _at(c, "posterior_mean_coef2", t) * x_t
    return mean, logvar


def _normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _discretized_gaussian_log_likelihood(x, mean, log_scale):
    """IDDPM's decoder likelihood of data in [-1, 1] on 256 bins (used by MAR as is for latents)."""
    centered = x - mean
    inv_stdv = jnp.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
    log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
    log_cdf_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
    return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def training_loss(c, x0, x_t, t, noise, model_out):
    """Per-token loss [N]: MSE(eps) + VB term (bits/dim) computed with the eps output frozen."""
    eps, var_values = jnp.split(model_out, 2, axis=-1)
    mse = jnp.mean((noise - eps) ** 2, axis=-1)
    mean, logvar = p_mean_logvar(c, x_t, t, jax.lax.stop_gradient(eps), var_values)
    true_mean = _at(c, "posterior_mean_coef1", t) * x0 + _at(c, "posterior_mean_coef2", t) * x_t
    true_logvar = _at(c, "posterior_log_variance_clipped", t)
    kl = jnp.mean(_normal_kl(true_mean, true_logvar, mean, logvar), axis=-1) / math.log(2.0)
    nll = -jnp.mean(_discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar), axis=-1) / math.log(2.0)
    return mse + jnp.where(t == 0, nll, kl)


def p_sample_loop(c, denoise, noise, rng, temperature=1.0, clip_denoised=False, denoised_fn=None,
                  draw=jax.random.normal):
    """Ancestral sampling over the schedule's steps, last to first; `denoise(x_t, model_t) -> [N, 2T]`.

    The injected noise (not the starting noise) is multiplied by `temperature`, as MAR's p_sample; step i draws
    it as `draw(fold_in(rng, i), shape, dtype)` (generate.candidate_normal keeps SAD's candidates' noise apart).
    """
    num_steps = c["timestep_map"].shape[0]

    def step(i, carry):
        x = carry
        idx = num_steps - 1 - i
        t = jnp.full((x.shape[0],), idx, jnp.int32)
        eps, var_values = jnp.split(denoise(x, c["timestep_map"][t]), 2, axis=-1)
        mean, logvar = p_mean_logvar(c, x, t, eps, var_values, clip_denoised, denoised_fn)
        z = draw(jax.random.fold_in(rng, i), x.shape, x.dtype)
        return mean + jnp.where(idx > 0, jnp.exp(0.5 * logvar) * z * temperature, 0.0)

    return jax.lax.fori_loop(0, num_steps, step, noise)
