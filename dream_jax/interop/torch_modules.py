"""A standalone PyTorch DREAM, written by us to the authors' module structure (chaoli-charlie/dream, LTH14/mar).

`DREAM(...).load_state_dict(sd, strict=True)` accepts both an exported dream_jax checkpoint and the authors' own
`model` / `model_ema` dicts (../shared/OFFICIAL_LAYOUT.md): same attribute names, registration order, layouts
(timm Attention with fused qkv, the authors' CrossAttention with q/kv, OpenCLIP's ResidualAttentionBlock with
nn.MultiheadAttention, the StableRep projection with BatchNorm1d, MAR's SimpleMLPAdaLN) and init-free buffers.
Like the authors' encoder, `forward_mae` gathers the visible tokens (every row of a batch must mask the same
number, as on one of their GPUs); `dream_loss` therefore runs the encoder and decoder group by group, as their
per-GPU step, and the projection, BatchNorm and contrastive loss over the whole batch, as SyncBatchNorm and
their gathered negatives. The diffusion is IDDPM's (cosine, eps, learned-range variance, MSE + VB), written
here in torch so this file needs neither jax nor the authors' repository.

Dimension letters: B batch, L image tokens, T token dim, Bf buffer, V visible tokens, D width, C CLIP context,
W CLIP width, Lt/Dt cond length/width, E embedding dim, N diffusion tokens.
"""

import inspect
import math
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------- transformer parts
class Attention(nn.Module):
    """timm 1.0.11 Attention (qkv_bias=True, no q/k norm): fused qkv, rows [q | k | v] head-major."""

    def __init__(self, dim, num_heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class CrossAttention(nn.Module):
    """The authors' CrossAttention (layers.py): q from x, kv from y with rows [k | v] head-major."""

    def __init__(self, dim, encoder_dim, num_heads, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(encoder_dim, dim * 2)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, y):
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(y).reshape(b, y.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class Mlp(nn.Module):
    """timm Mlp: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""

    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    """timm Block: x + attn(norm1(x)); x + mlp(norm2(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim, num_heads, mlp_dim, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, proj_drop)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttentionBlock(nn.Module):
    """The authors' decoder block: self-attention, cross-attention to the aligned text, MLP."""

    def __init__(self, dim, encoder_dim, num_heads, mlp_dim, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.norm0 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attn = Attention(dim, num_heads, attn_drop, proj_drop)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, encoder_dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_dim, proj_drop)

    def forward(self, x, y):
        x = x + self.self_attn(self.norm0(x))
        x = x + self.cross_attn(self.norm1(x), y)
        return x + self.mlp(self.norm2(x))


class ResidualAttentionBlock(nn.Module):
    """OpenCLIP's text block as the authors register it (attn, ln_1, mlp, ln_2); sequence-first input [C, B, W]."""

    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x, attn_mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x, attn_mask):
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


def image_projection(dim, hidden, embed_dim):
    """`post_mlp_stablerep`: Linear-BN-ReLU-Linear-BN-ReLU-Linear (the authors use SyncBatchNorm, same keys)."""
    return nn.Sequential(OrderedDict([
        ("layer1", nn.Linear(dim, hidden)), ("bn1", nn.BatchNorm1d(hidden)), ("relu1", nn.ReLU()),
        ("layer2", nn.Linear(hidden, hidden)), ("bn2", nn.BatchNorm1d(hidden)), ("relu2", nn.ReLU()),
        ("layer3", nn.Linear(hidden, embed_dim)),
    ]))


# ------------------------------------------------------------------------------------- DiffLoss (MAR's)
def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class ResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.in_ln = nn.LayerNorm(channels, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 3 * channels))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, channels, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(channels, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(channels, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(channels, 2 * channels))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """(x_t [N, T], t [N], c [N, D]) -> [N, 2T] = [eps | variance values]."""

    def __init__(self, in_channels, model_channels, out_channels, z_channels, num_res_blocks):
        super().__init__()
        self.in_channels = in_channels
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)

    def forward(self, x, t, c):
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(self, x, t, c, cfg_scale):
        """MAR's guidance: the batch is [cond | uncond] with shared x; eps = uncond + s (cond - uncond)."""
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half]), t, c)
        eps, rest = out[:, :self.in_channels], out[:, self.in_channels:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)


def cosine_betas(num_steps, max_beta=0.999):
    abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta) for i in range(num_steps)])


def space_timesteps(num_steps, num_sampling_steps):
    """IDDPM's `space_timesteps(num_steps, str(n))` with one section: n evenly strided kept steps."""
    if num_sampling_steps == 1:
        return [0]
    stride = (num_steps - 1) / (num_sampling_steps - 1)
    return sorted({round(i * stride) for i in range(num_sampling_steps)})


class GaussianDiffusion:
    """IDDPM's (Spaced)GaussianDiffusion for eps prediction, LEARNED_RANGE variance and loss type MSE.

    Constants are float64 numpy, gathered then cast to float32 as IDDPM's `_extract_into_tensor`.
    """

    def __init__(self, num_steps=1000, num_sampling_steps=None):
        betas = cosine_betas(num_steps)
        self.timestep_map = np.arange(num_steps)
        if num_sampling_steps is not None:
            keep = space_timesteps(num_steps, num_sampling_steps)
            abar = np.cumprod(1.0 - betas)[keep]
            betas = 1.0 - abar / np.append(1.0, abar[:-1])
            self.timestep_map = np.array(keep)
        self.num_timesteps = len(betas)
        abar = np.cumprod(1.0 - betas)
        prev = np.append(1.0, abar[:-1])
        post_var = betas * (1.0 - prev) / (1.0 - abar)
        self.c = {
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1),
            "posterior_log_variance_clipped": np.log(np.append(post_var[1], post_var[1:])),
            "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
            "log_betas": np.log(betas),
        }

    def _at(self, name, t):
        return torch.from_numpy(self.c[name]).to(t.device)[t].float()[:, None]

    def q_sample(self, x0, t, noise):
        return self._at("sqrt_alphas_cumprod", t) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t) * noise

    def q_posterior_mean(self, x0, x_t, t):
        return self._at("posterior_mean_coef1", t) * x0 + self._at("posterior_mean_coef2", t) * x_t

    def p_mean_variance(self, model_out, x_t, t, clip_denoised=False):
        """(mean, log variance) from the model's [eps | variance values] output."""
        eps, var_values = model_out.chunk(2, dim=1)
        frac = (var_values + 1) / 2
        logvar = frac * self._at("log_betas", t) + (1 - frac) * self._at("posterior_log_variance_clipped", t)
        x0 = self._at("sqrt_recip_alphas_cumprod", t) * x_t - self._at("sqrt_recipm1_alphas_cumprod", t) * eps
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        return self.q_posterior_mean(x0, x_t, t), logvar

    def training_losses(self, model, x0, t, c, noise=None):
        """Per-token MSE(eps) + VB (bits/dim; decoder NLL at t = 0) with the eps output detached for VB."""
        noise = torch.randn_like(x0) if noise is None else noise
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, torch.from_numpy(self.timestep_map).to(t.device)[t], c)
        eps, var_values = out.chunk(2, dim=1)
        mean, logvar = self.p_mean_variance(torch.cat([eps.detach(), var_values], dim=1), x_t, t)
        true_mean = self.q_posterior_mean(x0, x_t, t)
        true_logvar = self._at("posterior_log_variance_clipped", t)
        kl = 0.5 * (-1.0 + logvar - true_logvar + torch.exp(true_logvar - logvar)
                    + (true_mean - mean) ** 2 * torch.exp(-logvar))
        kl = kl.mean(dim=1) / math.log(2.0)
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).mean(dim=1) / math.log(2.0)
        return ((noise - eps) ** 2).mean(dim=1) + torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def p_sample_loop(self, model, noise, c, temperature=1.0, clip_denoised=False, generator=None):
        """Ancestral sampling from `noise`; the injected noise is scaled by `temperature` (MAR)."""
        x = noise
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            mean, logvar = self.p_mean_variance(model(x, torch.from_numpy(self.timestep_map).to(x.device)[t], c),
                                                x, t, clip_denoised)
            if i > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = mean + torch.exp(0.5 * logvar) * z * temperature
            else:
                x = mean
        return x


def _approx_std_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _discretized_gaussian_log_likelihood(x, mean, log_scale):
    centered = x - mean
    inv_stdv = torch.exp(-log_scale)
    cdf_plus = _approx_std_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class DiffLoss(nn.Module):
    """MAR's DiffLoss: `net` plus a training diffusion (all steps) and a respaced one for sampling."""

    def __init__(self, target_channels, z_channels, depth, width, num_sampling_steps=100, num_steps=1000):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, target_channels * 2, z_channels, depth)
        self.train_diffusion = GaussianDiffusion(num_steps)
        self.gen_diffusion = GaussianDiffusion(num_steps, num_sampling_steps)

    def forward(self, target, z, mask=None, t=None, noise=None):
        """Mean loss over tokens (masked mean when `mask` is given); `t`/`noise` fix the random draws."""
        if t is None:
            t = torch.randint(0, self.train_diffusion.num_timesteps, (target.shape[0],), device=target.device)
        loss = self.train_diffusion.training_losses(self.net, target, t, z, noise)
        if mask is not None:
            loss = (loss * mask).sum() / mask.sum()
        return loss.mean()

    def sample(self, z, temperature=1.0, cfg=1.0, noise=None, clip_denoised=False, generator=None):
        """Tokens [N, T] for conditions z [N, D] (with cfg != 1, z is [cond | uncond] and rows come in pairs)."""
        n = z.shape[0] // 2 if cfg != 1.0 else z.shape[0]
        if noise is None:
            noise = torch.randn((n, self.in_channels), generator=generator, device=z.device)
        if cfg != 1.0:
            noise = torch.cat([noise, noise])
            model = lambda x, t, c: self.net.forward_with_cfg(x, t, c, cfg)  # noqa: E731
        else:
            model = self.net
        return self.gen_diffusion.p_sample_loop(model, noise, z, temperature, clip_denoised, generator)


# ------------------------------------------------------------------------------------------------- DREAM
class DREAM(nn.Module):
    """Every trainable part of DREAM with the authors' attribute names and registration order.

    Keyword arguments are the `model` section of a dream_jax config (see `from_args` for an exported file).
    """

    def __init__(self, *, width, encoder_depth, decoder_depth, num_heads, mlp_dim, seq_len=256, token_dim=16,
                 buffer_size=64, num_classes=1000, attn_dropout=0.1, proj_dropout=0.1, aligner_depth=6,
                 cond_dim=1024, cond_len=128, embed_dim=256, proj_hidden_dim=1024, diffloss_depth=3,
                 diffloss_width=1024, text_tower=None, num_sampling_steps=100, diffusion_batch_mul=4, scale=None,
                 dtype=None, remat=None):
        super().__init__()
        del scale, dtype, remat  # JAX-side settings of the same config section; this model runs in float32
        clip = {"vocab_size": 49408, "context_length": 77, "width": 512, "depth": 12, "num_heads": 8}
        t = {**clip, **(text_tower or {})}
        d, drop = width, {"attn_drop": attn_dropout, "proj_drop": proj_dropout}
        self.seq_len, self.token_dim, self.buffer_size = seq_len, token_dim, buffer_size
        self.diffusion_batch_mul = diffusion_batch_mul
        # Registration order decides the state_dict order; it follows the authors' DREAM.__init__.
        self.class_emb = nn.Embedding(num_classes, d)
        self.fake_latent = nn.Parameter(torch.zeros(1, d))
        self.z_proj = nn.Linear(token_dim, d)
        self.z_proj_ln = nn.LayerNorm(d, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, seq_len + buffer_size, d))
        self.encoder_blocks = nn.ModuleList([Block(d, num_heads, mlp_dim, **drop) for _ in range(encoder_depth)])
        self.encoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.decoder_embed = nn.Linear(d, d)
        self.decoder_proj_ln = nn.LayerNorm(d, eps=1e-6)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, seq_len + buffer_size, d))
        self.decoder_blocks = nn.ModuleList([CrossAttentionBlock(d, d, num_heads, mlp_dim, **drop)
                                             for _ in range(decoder_depth)])
        self.text_proj = nn.Linear(cond_dim, d)
        self.text_proj_ln = nn.LayerNorm(d, eps=1e-6)
        self.text_pos_emb = nn.Parameter(torch.zeros(1, cond_len, d))
        self.text_aligner = nn.ModuleList([Block(d, num_heads, mlp_dim, **drop) for _ in range(aligner_depth)])
        self.decoder_norm = nn.LayerNorm(d, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, seq_len, d))
        self.transformer = Transformer(t["width"], t["depth"], t["num_heads"])
        self.token_embedding = nn.Embedding(t["vocab_size"], t["width"])
        self.positional_embedding = nn.Parameter(torch.zeros(t["context_length"], t["width"]))
        self.ln_final = nn.LayerNorm(t["width"])
        self.text_projection = nn.Parameter(torch.zeros(t["width"], embed_dim))
        self.image_projection = image_projection(d, proj_hidden_dim, embed_dim)
        self.diffloss = DiffLoss(token_dim, d, diffloss_depth, diffloss_width, num_sampling_steps)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        causal = torch.full((t["context_length"], t["context_length"]), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)
        self._init_weights()

    @classmethod
    def from_args(cls, args):
        """The model of an exported file's `args` (the whole dream_jax config as a plain dict)."""
        known = inspect.signature(cls.__init__).parameters
        unknown = sorted(k for k in args["model"] if k not in known)
        if unknown:  # a newer config's settings; strict loading still catches any shape they would change
            warnings.warn(f"ignoring model settings this PyTorch DREAM does not know: {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in args["model"].items() if k in known},
                   num_sampling_steps=args["diffusion"]["sampling_steps"],
                   diffusion_batch_mul=args["diffusion"]["batch_mul"])

    def _init_weights(self):
        """MAR-style init (normal 0.02 embeddings, xavier linears, zero adaLN/output); loading overrides it."""
        for p in (self.class_emb.weight, self.fake_latent, self.encoder_pos_embed_learned, self.mask_token,
                  self.decoder_pos_embed_learned, self.text_pos_emb, self.diffusion_pos_embed_learned,
                  self.token_embedding.weight):
            nn.init.normal_(p, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.text_projection.shape[0] ** -0.5)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.diffloss.net.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        final = self.diffloss.net.final_layer
        for m in (final.adaLN_modulation[-1], final.linear):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # --- encoder / decoder (MAR's forward_mae / forward_mae_decoder with DREAM's LayerNorms)
    def forward_mae(self, tokens, mask):
        """tokens [B, L, T], mask [B, L] (True = masked; same count per row) -> [B, Bf + V, D]."""
        mask = mask.bool()
        counts = (~mask).sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError(f"forward_mae needs the same number of visible tokens in every row, got {counts.tolist()}")
        x = self.z_proj(tokens)
        b, _, d = x.shape
        buffer = self.class_emb(torch.zeros(b, dtype=torch.long, device=x.device))
        x = torch.cat([buffer[:, None].expand(b, self.buffer_size, d), x], dim=1)
        x = self.z_proj_ln(x + self.encoder_pos_embed_learned)
        keep = torch.cat([torch.ones(b, self.buffer_size, dtype=torch.bool, device=x.device), ~mask], dim=1)
        x = x[keep].reshape(b, -1, d)
        for block in self.encoder_blocks:
            x = block(x)
        return self.encoder_norm(x)

    def align_text(self, cond):
        """Frozen T5 features [B, Lt, Dt] -> [B, Lt, D]."""
        x = self.text_proj_ln(self.text_proj(cond) + self.text_pos_emb)
        for block in self.text_aligner:
            x = block(x)
        return x

    def forward_mae_decoder(self, x, mask, text):
        """Encoder output [B, Bf + V, D], mask [B, L], aligned text [B, Lt, D] -> z [B, L, D]."""
        x = self.decoder_embed(x)
        b, _, d = x.shape
        keep = torch.cat([torch.ones(b, self.buffer_size, dtype=torch.bool, device=x.device), ~mask.bool()], dim=1)
        padded = self.mask_token.expand(b, keep.shape[1], d).clone()
        padded[keep] = x.reshape(-1, d).to(padded.dtype)
        x = self.decoder_proj_ln(padded + self.decoder_pos_embed_learned)
        for block in self.decoder_blocks:
            x = block(x, text)
        x = self.decoder_norm(x)[:, self.buffer_size:]
        return x + self.diffusion_pos_embed_learned

    # --- the contrastive side
    def image_embedding(self, tokens, mask):
        """Mean over buffer + visible encoder outputs, projected: [B, E] (not normalised)."""
        return self.image_projection(self.forward_mae(tokens, mask).mean(dim=1))

    def encode_text(self, text):
        """CLIP ids [B, C] -> [B, E]: causal tower, pooled at the EOT token (the argmax id)."""
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2), self.attn_mask).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, tokens, mask, clip_ids, cond):
        """One group's forward (equal visible counts): (image embedding, text embedding, z, logit scale)."""
        x = self.forward_mae(tokens, mask)
        img = self.image_projection(x.mean(dim=1))
        z = self.forward_mae_decoder(x, mask, self.align_text(cond))
        return img, self.encode_text(clip_ids), z, self.logit_scale


# -------------------------------------------------------------------------------------------------- loss
def contrastive_loss(img, txt, logit_scale, valid):
    """The authors' filtered InfoNCE: i2t rows and t2i columns of filtered samples set to -1e9.

    img, txt [B, E]; valid bool [B]. Both are the filtered image's row of the [B_img, B_txt] logits, so a filtered
    sample's text stays an i2t negative. Each direction's cross entropy is averaged over valid samples.
    """
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    logits = (logit_scale.exp() * img @ txt.T).masked_fill(~valid[:, None], -1e9)  # [B_img, B_txt]
    diag = logits.diagonal()
    per_sample = (torch.logsumexp(logits, dim=1) - diag) + (torch.logsumexp(logits, dim=0) - diag)
    per_sample = torch.where(valid, per_sample, torch.zeros_like(per_sample))
    return per_sample.sum() / (2 * valid.float().sum().clamp(min=1.0))


def dream_loss(model, tokens, mask, clip_ids, cond, t, noise, *, num_groups, gen_weight=1.0, clip_weight=0.005,
               min_visible_for_clip=0.25, min_masked_for_gen=0.5):
    """DREAM's training loss with the random draws given: (total, {'clip_loss', 'gen_loss'}).

    The batch is `num_groups` groups of equal masking (one per GPU for the authors). t [M B L] and noise
    [M B L, T] are copy-major (M = diffusion_batch_mul copies of the flattened batch), as MAR's `.repeat`.
    """
    b, length, dim = tokens.shape
    per = b // num_groups
    text = model.align_text(cond)
    pooled, zs = [], []
    for g in range(num_groups):
        rows = slice(g * per, (g + 1) * per)
        x = model.forward_mae(tokens[rows], mask[rows])
        pooled.append(x.mean(dim=1))
        zs.append(model.forward_mae_decoder(x, mask[rows], text[rows]))
    img = model.image_projection(torch.cat(pooled))
    txt = model.encode_text(clip_ids)
    valid = (1.0 - mask.float().mean(dim=1)) >= min_visible_for_clip
    clip = contrastive_loss(img, txt, model.logit_scale, valid)

    copies = t.shape[0] // (b * length)
    t = t.reshape(copies, num_groups, per * length)
    noise = noise.reshape(copies, num_groups, per * length, dim)
    gen = tokens.new_zeros(())
    for g in range(num_groups):
        rows = slice(g * per, (g + 1) * per)
        target = tokens[rows].reshape(per * length, dim).repeat(copies, 1)
        z = zs[g].reshape(per * length, -1).repeat(copies, 1)
        m = mask[rows].reshape(-1).float().repeat(copies)
        loss = model.diffloss(target, z, m, t=t[:, g].reshape(-1), noise=noise[:, g].reshape(-1, dim))
        if float(mask[rows].float().mean()) >= min_masked_for_gen:
            gen = gen + loss
    gen = gen / num_groups
    return gen_weight * gen + clip_weight * clip, {"clip_loss": clip, "gen_loss": gen}
