"""T5 encoder stack (the frozen text encoder of DREAM's generator) in Flax Linen.

DREAM conditions its decoder on `last_hidden_state` of a frozen T5-Large encoder over 128 tokens (PAPER.md §1.3).
This is that encoder: token embedding, pre-norm blocks of self-attention and feed-forward, T5's RMS layer norm
(no mean subtraction, no bias), unscaled attention logits, and a bucketed relative-position bias computed once, by
the first block, and shared by all blocks. Both feed-forward variants load: `relu` (original T5, t5-large:
DenseReluDense wi/wo) and `gated-gelu` (T5 v1.1: wi_0/wi_1/wo with the tanh GELU).

Submodule names mirror transformers' state_dict (`encoder.block.0.layer.0.SelfAttention.q.weight` lives at
`encoder/block_0/layer_0/SelfAttention/q/kernel`), so conversion is a rename plus a transpose; weights come
from `dream_jax.interop.pretrained.load_t5`. A fresh init (the embedded default's random-init stand-in for the
frozen T5) draws every weight as transformers' T5PreTrainedModel._init_weights does (initializer_factor 1): the
embedding from N(0, 1), so that a token's own embedding dominates the residual stream and each word stays
recognisable in the output. Flax's default embedding init (std D^-1/2 = 0.125 at D = 64) drowned it in the
blocks' outputs, which mix the whole sentence: the colour word's output found its own colour's mean (over the
training templates) 43-65% of the time instead of 100% (docs/BENCHMARKS.md).

Dimension letters: B batch, L tokens, D d_model, N heads, K d_kv (per-head width), F d_ff, R buckets.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACTIVATIONS = {
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "silu": nn.silu,
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Encoder shape; defaults are transformers' T5Config defaults (which t5-large's config.json relies on)."""

    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"
    vocab_size: int = 32128
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self):
        _parse_feed_forward(self.feed_forward_proj)

    @property
    def is_gated(self) -> bool:
        return _parse_feed_forward(self.feed_forward_proj)[0]

    @property
    def activation(self) -> str:
        return _parse_feed_forward(self.feed_forward_proj)[1]


def _parse_feed_forward(spec: str) -> tuple[bool, str]:
    """'relu' -> (False, 'relu'); 'gated-gelu' -> (True, 'gelu_new'), transformers' reading of the string."""
    parts = spec.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ValueError(f"T5Config.feed_forward_proj={spec!r}: expected '{{act}}' or 'gated-{{act}}'")
    act = "gelu_new" if spec == "gated-gelu" else parts[-1]
    if act not in _ACTIVATIONS:
        raise ValueError(
            f"T5Config.feed_forward_proj={spec!r}: activation {act!r} not one of {sorted(_ACTIVATIONS)}"
        )
    return gated, act


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional T5 buckets of (key - query) for a length-L sequence: int32 [L, L], values in [0, R).

    Computed on the host in float32 with transformers' operation order, because the bucket edges are exact
    integers (e.g. distance 16, 32, 64 for the defaults) where a different rounding would move a bucket.
    """
    rel = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        log_ratio = np.log(dist.astype(np.float32) / np.float32(max_exact))
    large = log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = max_exact + np.where(dist < max_exact, 0, large).astype(np.int64)
    large = np.minimum(large, half - 1)
    return (buckets + np.where(dist < max_exact, dist, large)).astype(np.int32)


class T5LayerNorm(nn.Module):
    """RMS norm with a learned scale: x / sqrt(mean(x^2) + eps) * weight, statistics in fp32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (weight * x32).astype(self.dtype)


def _dense(features: int, dtype, name: str, std: float) -> nn.Dense:
    """A bias-free projection initialised from N(0, std^2), transformers' T5 init for that weight."""
    return nn.Dense(features, use_bias=False, dtype=dtype, param_dtype=jnp.float32, name=name,
                    kernel_init=nn.initializers.normal(std))


class T5Attention(nn.Module):
    """Self-attention without logit scaling; block 0 owns the relative-position bias [1,N,L,L] and returns it."""

    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask, position_bias):
        cfg = self.config
        b, l, _ = x.shape
        heads = lambda t: t.reshape(b, l, cfg.num_heads, cfg.d_kv)
        inner = cfg.num_heads * cfg.d_kv
        q = heads(_dense(inner, self.dtype, "q", (cfg.d_model * cfg.d_kv) ** -0.5)(x))
        k = heads(_dense(inner, self.dtype, "k", cfg.d_model**-0.5)(x))
        v = heads(_dense(inner, self.dtype, "v", cfg.d_model**-0.5)(x))
        if self.has_relative_attention_bias:
            table = nn.Embed(
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
                param_dtype=jnp.float32,
                embedding_init=nn.initializers.normal(cfg.d_model**-0.5),
                name="relative_attention_bias",
            )
            idx = relative_position_buckets(
                l, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
            )
            position_bias = jnp.transpose(table(jnp.asarray(idx)), (2, 0, 1))[None].astype(jnp.float32)
        # T5 folds 1/sqrt(K) into its initialisation, so logits are a plain dot product; softmax in fp32.
        logits = jnp.einsum("bqnk,bsnk->bnqs", q, k).astype(jnp.float32) + position_bias
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bnqs,bsnk->bqnk", weights, v).reshape(b, l, inner)
        return _dense(cfg.d_model, self.dtype, "o", inner**-0.5)(out), position_bias


class T5LayerSelfAttention(nn.Module):
    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask, position_bias):
        h = T5LayerNorm(self.config.layer_norm_epsilon, self.dtype, name="layer_norm")(x)
        h, position_bias = T5Attention(
            self.config, self.has_relative_attention_bias, self.dtype, name="SelfAttention"
        )(h, key_mask, position_bias)
        return x + h, position_bias


class DenseReluDense(nn.Module):
    """wi -> act -> wo, or with `gated` act(wi_0 x) * wi_1 x -> wo (the transformers name for both variants)."""

    config: T5Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        act = _ACTIVATIONS[cfg.activation]
        wi_std = cfg.d_model**-0.5
        if cfg.is_gated:
            h = act(_dense(cfg.d_ff, self.dtype, "wi_0", wi_std)(x)) * _dense(cfg.d_ff, self.dtype, "wi_1", wi_std)(x)
        else:
            h = act(_dense(cfg.d_ff, self.dtype, "wi", wi_std)(x))
        return _dense(cfg.d_model, self.dtype, "wo", cfg.d_ff**-0.5)(h)


class T5LayerFF(nn.Module):
    config: T5Config
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = T5LayerNorm(self.config.layer_norm_epsilon, self.dtype, name="layer_norm")(x)
        return x + DenseReluDense(self.config, self.dtype, name="DenseReluDense")(h)


class T5Block(nn.Module):
    config: T5Config
    has_relative_attention_bias: bool = False
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.layer = [
            T5LayerSelfAttention(self.config, self.has_relative_attention_bias, self.dtype),
            T5LayerFF(self.config, self.dtype),
        ]

    def __call__(self, x, key_mask, position_bias):
        x, position_bias = self.layer[0](x, key_mask, position_bias)
        return self.layer[1](x), position_bias


class T5Stack(nn.Module):
    """Blocks then the final RMS norm, applied to token embeddings [B,L,D]."""

    config: T5Config
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        self.block = [T5Block(cfg, i == 0, self.dtype) for i in range(cfg.num_layers)]
        self.final_layer_norm = T5LayerNorm(cfg.layer_norm_epsilon, self.dtype)

    def __call__(self, x, key_mask):
        position_bias = None
        for block in self.block:
            x, position_bias = block(x, key_mask, position_bias)
        return self.final_layer_norm(x)


class T5EncoderModel(nn.Module):
    """input_ids [B,L] int, attention_mask [B,L] (1 = token, 0 = padding) -> last_hidden_state [B,L,D] fp32."""

    config: T5Config
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.shared = nn.Embed(self.config.vocab_size, self.config.d_model, param_dtype=jnp.float32,
                               embedding_init=nn.initializers.normal(1.0))
        self.encoder = T5Stack(self.config, self.dtype)

    def __call__(self, input_ids, attention_mask=None):
        if input_ids.ndim != 2:
            raise ValueError(f"T5 input_ids must be [B,L], got shape {input_ids.shape}")
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"T5 attention_mask shape {attention_mask.shape} must equal input_ids shape {input_ids.shape}"
            )
        x = self.shared(input_ids).astype(self.dtype)
        return self.encoder(x, attention_mask.astype(bool)).astype(jnp.float32)
