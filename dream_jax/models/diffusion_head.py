"""MAR's DiffLoss in one place: the denoiser network (SimpleMLPAdaLN), its training loss, and its sampler with
classifier-free guidance. Training (training/train.py) and decoding (generation/generate.py) call `loss` and
`sample` with a `denoise(x_t, t, z) -> [N, 2T]` function (the DREAM module's `denoise` method under their
variables); the diffusion maths itself is models/gaussian_diffusion.py, as MAR's DiffLoss builds on IDDPM's.

Network: structure and init follow LTH14/mar models/diffloss.py: input_proj, a 256-d sinusoidal time embedding
through Linear-SiLU-Linear, cond_embed, `depth` adaLN residual blocks, a final adaLN layer producing
[eps | variance] (2T outputs); adaLN modulations and the output layer start at zero, so the untrained head
predicts eps = 0.

Loss: the batch is repeated `batch_mul` times with independent t and noise, the per-token loss (MSE(eps) + VB) is
averaged over masked tokens within each mask group, groups whose mask ratio is < `min_masked` are zeroed, and the
result is averaged over all groups, as the authors' per-GPU losses averaged by DDP.

Sampling: ancestral sampling over a respaced schedule; with guidance, eps = uncond + w (cond - uncond) from one
head call on [cond | uncond] conditions, the variance from the conditional half (MAR's forward_with_cfg).

Dimension letters: B batch, L tokens, T token dim, D condition width, W head width, F frequency dim (256),
N tokens of the head (M x B x L in training, with M = batch_mul).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dream_jax.models import gaussian_diffusion
from dream_jax.models.transformer import dense, layer_norm

FREQ_DIM = 256


def timestep_embedding(t, dim=FREQ_DIM, max_period=10000.0):
    """[cos | sin] sinusoid of the (float) timestep, as DiT/MAR: [N] -> [N, F]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


def _zero_dense(features, name, dtype):
    return dense(features, ("mlp", "mlp_out"), name, dtype, kernel_init=nn.initializers.zeros)


class TimestepEmbedder(nn.Module):
    """Sinusoid -> Linear-SiLU-Linear (weights init normal(0.02), as MAR)."""

    width: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, t):
        normal = nn.initializers.normal(0.02)
        h = dense(self.width, ("freq", "mlp"), "mlp_0", self.dtype, kernel_init=normal)(timestep_embedding(t))
        return dense(self.width, ("mlp", "mlp_out"), "mlp_2", self.dtype, kernel_init=normal)(nn.silu(h))


class ResBlock(nn.Module):
    """LN -> adaLN modulate -> Linear-SiLU-Linear -> gated residual."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, y):
        width = x.shape[-1]
        mod = _zero_dense(3 * width, "adaLN_modulation_1", self.dtype)(nn.silu(y))
        shift, scale, gate = jnp.split(mod, 3, axis=-1)
        h = _modulate(layer_norm("in_ln")(x), shift, scale).astype(self.dtype)
        h = dense(width, ("mlp", "mlp_out"), "mlp_0", self.dtype)(h)
        h = dense(width, ("mlp", "mlp_out"), "mlp_2", self.dtype)(nn.silu(h))
        return x + gate * h


class FinalLayer(nn.Module):
    """Affine-free LN -> adaLN modulate -> Linear to [eps | variance]."""

    out_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, y):
        width = x.shape[-1]
        mod = _zero_dense(2 * width, "adaLN_modulation_1", self.dtype)(nn.silu(y))
        shift, scale = jnp.split(mod, 2, axis=-1)
        h = _modulate(layer_norm("norm_final", use_scale=False)(x), shift, scale).astype(self.dtype)
        return _zero_dense(self.out_dim, "linear", self.dtype)(h)


class SimpleMLPAdaLN(nn.Module):
    """The denoiser: (x_t [N, T], t [N], z [N, D]) -> [N, 2T] = [eps | variance interpolation]."""

    token_dim: int
    width: int
    depth: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, t, z):
        x = dense(self.width, ("token", "mlp"), "input_proj", self.dtype)(x.astype(self.dtype))
        cond = dense(self.width, ("embed", "mlp"), "cond_embed", self.dtype)(z.astype(self.dtype))
        y = TimestepEmbedder(self.width, self.dtype, name="time_embed")(t) + cond
        for r in range(self.depth):
            x = ResBlock(self.dtype, name=f"res_blocks_{r}")(x, y)
        out = FinalLayer(2 * self.token_dim, self.dtype, name="final_layer")(x, y)
        return out.astype(jnp.float32)


# ------------------------------------------------------------------------------------------------ training loss
def draws(rng, num, token_dim, num_steps):
    """t [N] int32 and noise [N, T] for N diffusion tokens, in the order `targets` lays them out."""
    t_rng, n_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (num,), 0, num_steps)
    noise = jax.random.normal(n_rng, (num, token_dim), jnp.float32)
    return t, noise


def targets(rng, tokens, z, mask, batch_mul, num_steps, drawn=None):
    """Repeats tokens, conditions and masks `batch_mul` times and draws t and noise for each copy.

    Returns x0 [N, T], z [N, D], mask [N], t [N] int32, noise [N, T] (copies are the leading axis, so the
    group of token n is recoverable from its row). `drawn`: (t, noise) made beforehand (e.g. for the whole batch
    by gradient accumulation, which slices them per microbatch); `rng` is then unused.
    """
    def repeat(a):  # [B, L, ...] -> [M * B * L, ...]
        flat = a.reshape((-1,) + a.shape[2:])
        return jnp.tile(flat, (batch_mul,) + (1,) * (flat.ndim - 1))

    x0, zz, mm = repeat(tokens), repeat(z), repeat(mask)
    t, noise = draws(rng, x0.shape[0], x0.shape[1], num_steps) if drawn is None else drawn
    return x0.astype(jnp.float32), zz, mm, t, noise


def _on_batch_shards(denoise, copies, x_t, t, z):
    """`denoise` on the M x B x L tokens, split over the batch shards.

    `targets` stacks the copies along the leading axis, a layout through which XLA carries no batch sharding:
    unpinned, every chip ran the head on all the tokens of the global batch (110 GiB of temporaries for DREAM-B on
    a v5e-256). Viewed as [M, B x L, ...] with the second axis on the batch shards, each chip keeps its own
    examples' tokens and no data moves.
    """
    def split(a):
        a = a.reshape((copies, -1) + a.shape[1:])
        return nn.with_logical_constraint(a, (None, "batch") + (None,) * (a.ndim - 2))

    out = jax.vmap(denoise)(split(x_t), split(t), split(z))
    return out.reshape((-1,) + out.shape[2:])


def loss(denoise, rng, tokens, z, mask, num_steps, num_groups, batch_mul, min_masked, drawn=None):
    """Masked, group-gated diffusion loss. tokens [B, L, T], z [B, L, D], mask [B, L] (True = masked).

    `denoise(x_t, t, z) -> [N, 2T]` is the head, trained on a `num_steps` diffusion. Returns (loss, metrics)
    where metrics has the loss averaged over active groups (the authors' logged value) and the fraction of active
    groups. `drawn`: see `targets`.
    """
    constants = gaussian_diffusion.make_schedule(num_steps).constants()
    x0, zz, mm, t, noise = targets(rng, tokens, z, mask, batch_mul, num_steps, drawn)
    x_t = gaussian_diffusion.q_sample(constants, x0, t, noise)
    out = _on_batch_shards(denoise, batch_mul, x_t, t, zz)
    per_token = gaussian_diffusion.training_loss(constants, x0, x_t, t, noise, out)
    # [M, G, B/G * L]: loss and mask per group, pooled over the batch_mul copies.
    per_token = per_token.reshape(batch_mul, num_groups, -1).transpose(1, 0, 2).reshape(num_groups, -1)
    mm = mm.astype(jnp.float32).reshape(batch_mul, num_groups, -1).transpose(1, 0, 2).reshape(num_groups, -1)
    group_loss = jnp.sum(per_token * mm, axis=1) / jnp.maximum(jnp.sum(mm, axis=1), 1.0)
    group_ratio = jnp.mean(mask.astype(jnp.float32).reshape(num_groups, -1), axis=1)
    active = (group_ratio >= min_masked).astype(jnp.float32)
    metrics = {
        "gen_loss_active": jnp.sum(group_loss * active) / jnp.maximum(jnp.sum(active), 1.0),
        "gen_active_frac": jnp.mean(active),
    }
    return jnp.mean(group_loss * active), metrics


# ----------------------------------------------------------------------------------------------------- sampling
def guided(denoise, z, z_uncond=None, scale=1.0):
    """`denoise` conditioned on z [N, D] as a function of (x_t, t); with `z_uncond`, classifier-free guided:
    eps = eps_u + scale (eps_c - eps_u) from one call on [cond | uncond], the variance values of the cond half."""
    if z_uncond is None:
        return lambda x_t, t: denoise(x_t, t, z)

    def combined(x_t, t):
        out = denoise(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), jnp.concatenate([z, z_uncond]))
        cond, uncond = jnp.split(out, 2)
        eps_c, var_c = jnp.split(cond, 2, axis=-1)
        eps_u = jnp.split(uncond, 2, axis=-1)[0]
        return jnp.concatenate([eps_u + scale * (eps_c - eps_u), var_c], axis=-1)

    return combined


def sample(denoise, z, start, rng, num_steps, sampling_steps, z_uncond=None, scale=1.0, temperature=1.0,
           denoised_fn=None, draw=jax.random.normal):
    """Tokens [N, T] sampled from `start` [N, T] given z [N, D]: the `num_steps` diffusion respaced to
    `sampling_steps`.

    `z_uncond`, `scale`: classifier-free guidance (see `guided`); `temperature` scales the injected noise,
    `denoised_fn` constrains the x0 estimate and `draw` draws each step's noise (gaussian_diffusion.p_sample_loop).
    """
    constants = gaussian_diffusion.make_schedule(num_steps, sampling_steps).constants()
    return gaussian_diffusion.p_sample_loop(constants, guided(denoise, z, z_uncond, scale), start, rng,
                                            temperature, denoised_fn=denoised_fn, draw=draw)
