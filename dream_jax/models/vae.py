"""Stable Diffusion KL-f8 autoencoder (diffusers `AutoencoderKL`) in Flax Linen.

DREAM tokenizes images with the frozen `stabilityai/sd-vae-ft-ema` VAE (PAPER.md §1.1): the encoder gives the
moments of a diagonal Gaussian posterior, training uses a *sample* of it times `SCALE`, and generation decodes
`tokens / SCALE`. This file holds the architecture only; weights come from `dream_jax.interop.pretrained.load_vae`.

Submodule names mirror the diffusers state_dict (`encoder.down_blocks.0.resnets.1.conv1.weight` lives at
`encoder/down_blocks_0/resnets_1/conv1/kernel`), so conversion is a rename of `.N` to `_N` plus a transpose.

Dimension letters: B batch, H/W height/width (pixels or latent cells), C channels, L = H*W tokens in the mid-block
attention. Images and latents are NHWC; images are in [-1, 1].
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

# Latent scale of the SD VAE: latents are `sample * SCALE` during training, images `decode(tokens / SCALE)`.
SCALE = 0.18215

# diffusers clamps the log-variance before exponentiating; same bounds so samples match.
LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0

_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VaeConfig:
    """Shape of an AutoencoderKL; defaults are sd-vae-ft-ema's (KL-f8, 4 latent channels)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    scaling_factor: float = SCALE

    def __post_init__(self):
        if not self.block_out_channels:
            raise ValueError("VaeConfig.block_out_channels must name at least one block")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(
                    f"VaeConfig: block_out_channels {self.block_out_channels} must all be divisible by "
                    f"norm_num_groups={self.norm_num_groups}"
                )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def _conv(features: int, kernel: int, dtype, name: str, stride: int = 1, padding="SAME") -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def _group_norm(groups: int, dtype, name: str) -> nn.GroupNorm:
    # The exact two-pass variance: the fast E[x^2]-E[x]^2 form costs ~1e-5 against torch on large activations.
    return nn.GroupNorm(
        num_groups=groups,
        epsilon=_NORM_EPS,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_fast_variance=False,
        name=name,
    )


class ResnetBlock(nn.Module):
    """diffusers ResnetBlock2D without time embedding: norm-silu-conv twice, 1x1 shortcut when C changes."""

    out_channels: int
    groups: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.silu(_group_norm(self.groups, self.dtype, "norm1")(x))
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
        h = nn.silu(_group_norm(self.groups, self.dtype, "norm2")(h))
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all H*W positions with a residual (the VAE mid-block attention)."""

    groups: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        dense = lambda name: nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        t = _group_norm(self.groups, self.dtype, "group_norm")(x).reshape(b, h * w, c)
        q, k, v = dense("to_q")(t), dense("to_k")(t), dense("to_v")(t)
        logits = jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(c).astype(q.dtype)
        # Softmax in fp32 so the bf16 option does not lose the attention distribution over up to 4096 cells.
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = dense("to_out_0")(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + out.reshape(b, h, w, c)


class MidBlock(nn.Module):
    """resnet, then (attention, resnet) pairs: diffusers UNetMidBlock2D with one attention layer."""

    channels: int
    groups: int
    add_attention: bool = True
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.resnets = [ResnetBlock(self.channels, self.groups, self.dtype) for _ in range(2)]
        if self.add_attention:
            self.attentions = [AttentionBlock(self.groups, self.dtype)]

    def __call__(self, x):
        x = self.resnets[0](x)
        if self.add_attention:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one zero row/column at the bottom/right only (diffusers padding=0)."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return _conv(self.channels, 3, self.dtype, "conv", stride=2, padding="VALID")(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(self.channels, 3, self.dtype, "conv")(x)


class DownBlock(nn.Module):
    """diffusers DownEncoderBlock2D."""

    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.resnets = [ResnetBlock(self.out_channels, self.groups, self.dtype) for _ in range(self.num_layers)]
        if self.add_downsample:
            self.downsamplers = [Downsample(self.out_channels, self.dtype)]

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.add_downsample:
            x = self.downsamplers[0](x)
        return x


class UpBlock(nn.Module):
    """diffusers UpDecoderBlock2D."""

    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.resnets = [ResnetBlock(self.out_channels, self.groups, self.dtype) for _ in range(self.num_layers)]
        if self.add_upsample:
            self.upsamplers = [Upsample(self.out_channels, self.dtype)]

    def __call__(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.add_upsample:
            x = self.upsamplers[0](x)
        return x


class Encoder(nn.Module):
    """[B,H,W,in] -> [B,H/f,W/f,2*latent] (mean and logvar stacked on channels, before quant_conv)."""

    config: VaeConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        chans = cfg.block_out_channels
        self.conv_in = _conv(chans[0], 3, self.dtype, "conv_in")
        self.down_blocks = [
            DownBlock(c, cfg.layers_per_block, cfg.norm_num_groups, i < len(chans) - 1, self.dtype)
            for i, c in enumerate(chans)
        ]
        self.mid_block = MidBlock(chans[-1], cfg.norm_num_groups, cfg.mid_block_add_attention, self.dtype)
        self.conv_norm_out = _group_norm(cfg.norm_num_groups, self.dtype, "conv_norm_out")
        self.conv_out = _conv(2 * cfg.latent_channels, 3, self.dtype, "conv_out")

    def __call__(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """[B,h,w,latent] -> [B,h*f,w*f,out]."""

    config: VaeConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        rev = tuple(reversed(cfg.block_out_channels))
        self.conv_in = _conv(rev[0], 3, self.dtype, "conv_in")
        self.mid_block = MidBlock(rev[0], cfg.norm_num_groups, cfg.mid_block_add_attention, self.dtype)
        # The decoder has one more resnet per block than the encoder, as in diffusers.
        self.up_blocks = [
            UpBlock(c, cfg.layers_per_block + 1, cfg.norm_num_groups, i < len(rev) - 1, self.dtype)
            for i, c in enumerate(rev)
        ]
        self.conv_norm_out = _group_norm(cfg.norm_num_groups, self.dtype, "conv_norm_out")
        self.conv_out = _conv(cfg.out_channels, 3, self.dtype, "conv_out")

    def __call__(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """The KL autoencoder. `encode(x) -> (mean, logvar)`, `decode(z) -> x`; params fp32, compute in `dtype`.

    Call the methods through apply, e.g. `model.apply({"params": p}, x, method=model.encode)`. `__call__`
    (encode then decode the mean) exists to initialise every parameter at once.
    """

    config: VaeConfig
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype)
        self.decoder = Decoder(cfg, self.dtype)
        if cfg.use_quant_conv:
            self.quant_conv = _conv(2 * cfg.latent_channels, 1, self.dtype, "quant_conv")
        if cfg.use_post_quant_conv:
            self.post_quant_conv = _conv(cfg.latent_channels, 1, self.dtype, "post_quant_conv")

    def encode(self, x):
        """x [B,H,W,in] in [-1,1] -> (mean, logvar), each [B,H/f,W/f,latent] float32; logvar clamped."""
        f = self.config.downsample_factor
        if x.ndim != 4 or x.shape[-1] != self.config.in_channels or x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"VAE encode expects [B,H,W,{self.config.in_channels}] with H and W divisible by {f}, "
                f"got {x.shape}"
            )
        moments = self.encoder(x.astype(self.dtype))
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z):
        """z [B,h,w,latent] (unscaled, i.e. tokens / SCALE) -> image [B,h*f,w*f,out] float32."""
        if z.ndim != 4 or z.shape[-1] != self.config.latent_channels:
            raise ValueError(f"VAE decode expects [B,h,w,{self.config.latent_channels}], got {z.shape}")
        z = z.astype(self.dtype)
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x):
        mean, _ = self.encode(x)
        return self.decode(mean)


def sample_posterior(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """One draw from N(mean, exp(logvar)); the caller multiplies by SCALE to get DREAM's tokens."""
    eps = jax.random.normal(rng, mean.shape, jnp.float32)
    return mean + jnp.exp(0.5 * logvar) * eps
