"""MAR's diffusion head (SimpleMLPAdaLN): a small MLP that denoises one continuous token given its condition z.

Structure and init follow LTH14/mar models/diffloss.py: input_proj, a 256-d sinusoidal time embedding through
Linear-SiLU-Linear, cond_embed, `depth` adaLN residual blocks, a final adaLN layer producing [eps | variance]
(2T outputs); adaLN modulations and the output layer start at zero, so the untrained head predicts eps = 0.

Dimension letters: N tokens (batch x sequence x diffusion_batch_mul, flattened), T token dim, D condition width,
W head width, F frequency dim (256).
"""

import math

import flax.linen as nn
import jax.numpy as jnp

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
        y = TimestepEmbedder(self.width, self.dtype, name="time_embed")(t) + dense(self.width, ("embed", "mlp"), "cond_embed", self.dtype)(z.astype(self.dtype))
        for r in range(self.depth):
            x = ResBlock(self.dtype, name=f"res_blocks_{r}")(x, y)
        out = FinalLayer(2 * self.token_dim, self.dtype, name="final_layer")(x, y)
        return out.astype(jnp.float32)
