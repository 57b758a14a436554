"""Transformer pieces shared by every tower of DREAM: one attention, one MLP, two blocks.

The encoder, decoder, text aligner and CLIP text tower all use these, through `stack` (unrolled or nn.scan'ed
blocks with a remat policy), so there is exactly one attention implementation in the project. Parameter names
follow the authors' timm modules (`qkv`, `proj`, `fc1`, `fc2`, `norm1`, ...; see ../shared/OFFICIAL_LAYOUT.md) so
export is a rename + reshape. The fused `qkv` kernel is stored as
[D, 3, H, K] instead of torch's [3D, D]: the same numbers, but the head axis stays shardable over `tensor`.

Dimension letters: B batch, L query length, S key length, D width, H heads, K head dim (D / H), M MLP hidden,
N blocks of a tower (the stacked `layers` axis).
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
_NEG_INF = -1e30


# torch's xavier_uniform_ (MAE/MAR init); DenseGeneral hands initialisers the 2-D [in, out] view of its kernel,
# so fans are those of the authors' nn.Linear whatever the kernel's rank.
XAVIER = nn.initializers.xavier_uniform()


class Dense(nn.Module):
    """Linear map over the trailing `len(in_names)` axes to `features`, with logically named parameters.

    Initialisers see the 2-D [in, out] view of the kernel (the authors' nn.Linear), then it is reshaped.
    """

    features: tuple
    names: tuple
    num_in: int = 1
    dtype: Dtype = jnp.float32
    kernel_init: Any = XAVIER
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        in_shape = x.shape[-self.num_in:]
        fan_in, fan_out = math.prod(in_shape), math.prod(self.features)

        def init(rng, shape, dtype):
            return self.kernel_init(rng, (fan_in, fan_out), dtype).reshape(shape)

        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.names), in_shape + self.features,
                            jnp.float32)
        y = jnp.tensordot(x.astype(self.dtype), kernel.astype(self.dtype), axes=self.num_in)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, self.names[self.num_in:]),
                              self.features, jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def dense(features, names, name, dtype, kernel_init=None, num_in=1, use_bias=True):
    """A Dense to `features` (int or tuple) from the trailing `num_in` axes; `names` covers in + out axes."""
    features = tuple(features) if isinstance(features, (tuple, list)) else (features,)
    return Dense(features, tuple(names), num_in, dtype, XAVIER if kernel_init is None else kernel_init, use_bias,
                 name=name)


def layer_norm(name, eps=1e-6, dtype=jnp.float32, use_scale=True):
    """LayerNorm with logical names; statistics in float32 whatever the compute dtype."""
    return nn.LayerNorm(
        epsilon=eps,
        dtype=dtype,
        param_dtype=jnp.float32,
        use_scale=use_scale,
        use_bias=use_scale,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def constrain(x, names):
    """Pins an activation to logical axes; a no-op outside a mesh (one CPU)."""
    return nn.with_logical_constraint(x, names)


ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention from x to y (y = x for self-attention).

    Self-attention uses one fused `qkv` projection (timm's Attention); cross-attention uses `q` and `kv`
    (the authors' CrossAttention). `mask` [B or 1, 1 or H, L, S] is True where a query may attend a key.
    The product runs in `jax.nn.dot_product_attention` (`implementation` "xla", or "cudnn": the fused cuDNN
    kernel on NVIDIA GPUs, bfloat16 / float16 only), logits and softmax in float32; only while attention
    dropout is active (training with attn_dropout > 0) does it run as explicit einsum-softmax-dropout-einsum,
    since no fused kernel drops attention weights.
    """

    num_heads: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: Dtype = jnp.float32
    implementation: str = "xla"

    @nn.compact
    def __call__(self, x, y=None, mask=None, deterministic=True):
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        hk = (self.num_heads, head_dim)
        if y is None:
            qkv = dense((3, *hk), ("embed", None, "heads", "kv"), "qkv", self.dtype)(x)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        else:
            q = dense(hk, ("embed", "heads", "kv"), "q", self.dtype)(x)
            kv = dense((2, *hk), ("embed", None, "heads", "kv"), "kv", self.dtype)(y)
            k, v = kv[:, :, 0], kv[:, :, 1]
        if self.attn_dropout > 0 and not deterministic:
            out = self._explicit(q, k, v, mask, deterministic)
        else:
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=head_dim**-0.5,
                                               implementation=self.implementation).astype(self.dtype)
        out = dense(width, ("heads", "kv", "embed"), "proj", self.dtype, num_in=2)(out)
        return nn.Dropout(self.proj_dropout)(out, deterministic=deterministic)

    def _explicit(self, q, k, v, mask, deterministic):
        """[B, L, H, K] x [B, S, H, K] x [B, S, H, K] -> [B, L, H, K] with dropout on the attention weights."""
        logits = jnp.einsum("blhk,bshk->bhls", q, k, preferred_element_type=jnp.float32)
        logits = logits * (q.shape[-1] ** -0.5)
        if mask is not None:
            logits = jnp.where(mask, logits, _NEG_INF)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        weights = nn.Dropout(self.attn_dropout)(weights, deterministic=deterministic)
        return jnp.einsum("bhls,bshk->blhk", weights, v)


# Mlp.activation: timm's exact GELU, or OpenAI CLIP's sigmoid approximation (its released weights were trained
# with it, so importing them needs it).
ACTIVATIONS = {"gelu": functools.partial(nn.gelu, approximate=False), "quick_gelu": lambda x: x * nn.sigmoid(1.702 * x)}


class Mlp(nn.Module):
    """timm's Mlp: fc1 -> activation (exact GELU) -> dropout -> fc2 -> dropout."""

    hidden_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    names: tuple = ("fc1", "fc2")
    activation: str = "gelu"  # an ACTIVATIONS key

    @nn.compact
    def __call__(self, x, deterministic=True):
        width = x.shape[-1]
        h = dense(self.hidden_dim, ("embed", "mlp"), self.names[0], self.dtype)(x)
        h = ACTIVATIONS[self.activation](h)
        h = constrain(h, ("batch", "length", "mlp"))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = dense(width, ("mlp", "embed"), self.names[1], self.dtype)(h)
        return nn.Dropout(self.dropout)(h, deterministic=deterministic)


def drop_path(module, x, rate, deterministic):
    """timm's DropPath (stochastic depth) of a residual branch x [B, ...]: each example's branch is zeroed with
    probability `rate` (a float or a traced scalar: a scanned layer's rate) and kept ones scaled by 1 / (1 - rate),
    so the expected value is unchanged. Off (and no rng drawn) when deterministic or `rate` is the number 0."""
    if deterministic or (isinstance(rate, (int, float)) and rate == 0):
        return x
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    kept = jax.random.bernoulli(module.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * jnp.where(kept, 1.0 / jnp.maximum(keep, 1e-12), 0.0).astype(x.dtype)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)); x + mlp(norm2(x)) (timm Block, qkv bias); `drop_rate` is
    this block's drop-path rate on both residual branches (stack gives each block its own)."""

    num_heads: int
    mlp_dim: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    attention: str = "xla"  # MultiHeadAttention.implementation
    activation: str = "gelu"  # Mlp.activation

    @nn.compact
    def __call__(self, x, mask=None, deterministic=True, drop_rate=0.0):
        attn = MultiHeadAttention(self.num_heads, self.attn_dropout, self.proj_dropout, self.dtype, self.attention,
                                  name="attn")
        h = attn(layer_norm("norm1", self.eps)(x).astype(self.dtype), mask=mask, deterministic=deterministic)
        x = x + drop_path(self, h, drop_rate, deterministic)
        mlp = Mlp(self.mlp_dim, self.proj_dropout, self.dtype, activation=self.activation, name="mlp")
        x = x + drop_path(self, mlp(layer_norm("norm2", self.eps)(x).astype(self.dtype), deterministic), drop_rate,
                          deterministic)
        return constrain(x, ("batch", "length", "embed"))


class CrossAttentionBlock(Block):
    """The decoder block: self-attention, cross-attention to the text, MLP, each pre-LN with a residual."""

    @nn.compact
    def __call__(self, x, y, deterministic=True, drop_rate=0.0):
        attention = lambda name: MultiHeadAttention(  # noqa: E731
            self.num_heads, self.attn_dropout, self.proj_dropout, self.dtype, self.attention, name=name
        )
        residual = lambda x, h: x + drop_path(self, h, drop_rate, deterministic)  # noqa: E731
        x = residual(x, attention("self_attn")(layer_norm("norm0", self.eps)(x).astype(self.dtype),
                                               deterministic=deterministic))
        x = residual(x, attention("cross_attn")(layer_norm("norm1", self.eps)(x).astype(self.dtype), y=y,
                                                deterministic=deterministic))
        mlp = Mlp(self.mlp_dim, self.proj_dropout, self.dtype, activation=self.activation, name="mlp")
        x = residual(x, mlp(layer_norm("norm2", self.eps)(x).astype(self.dtype), deterministic))
        return constrain(x, ("batch", "length", "embed"))


def param(module, name, shape, names, init):
    """A logically partitioned float32 parameter (position embeddings, tokens, scalars)."""
    return module.param(name, nn.with_logical_partitioning(init, names), shape, jnp.float32)


# model.remat: what a block keeps for the backward pass (jax.checkpoint policies); "none" keeps everything.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep x @ W, recompute the rest
}


def check_choice(setting, value, choices):
    """ValueError naming the setting and its choices unless `value` is one of them."""
    if value not in choices:
        raise ValueError(f"{setting}={value!r}: expected one of {', '.join(map(repr, choices))}")


def remat_policy(name):
    """The jax.checkpoint policy of a `model.remat` setting; ValueError naming the choices otherwise."""
    check_choice("model.remat", name, tuple(REMAT_POLICIES))
    return REMAT_POLICIES[name]


@functools.cache
def _scan_body(cls):
    """`cls` (Block or CrossAttentionBlock) as an nn.scan body: (x, other, deterministic, drop rate) -> (x, None)."""

    class ScanBody(cls):
        @nn.compact
        def __call__(self, x, other, deterministic=True, drop_rate=0.0):
            return super().__call__(x, other, deterministic, drop_rate), None

    ScanBody.__name__ = f"Scan{cls.__name__}"
    return ScanBody


def drop_path_rates(drop_path, depth):
    """MAE's per-block drop-path rates: linear from 0 at the first block to `drop_path` at the last
    (torch.linspace(0, drop_path, depth))."""
    return [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


def stack(cls, depth, name, scan, remat, drop_path=0.0, **fields):
    """`depth` blocks of `cls` (Block or CrossAttentionBlock) in order, as one function (x, other, deterministic)
    -> x; `other` is the block's second argument (mask or text), the same for every block.

    Unrolled (`scan` False): submodules `{name}_0` ... `{name}_{depth-1}`. Scanned: one nn.scan submodule `name`
    whose parameters carry a leading `layers` axis of size depth (maxtext's scan_layers), so XLA compiles one block
    instead of depth; dream_jax/interop/layout.py maps both to the authors' per-block keys. `remat` names a
    REMAT_POLICIES entry. `drop_path` > 0 gives block i the rate drop_path_rates(drop_path, depth)[i] (a scanned
    input of the scanned stack). Call it inside the parent's compact method; the function may be called several
    times (the encoder's capacity classes), sharing the parameters.
    """
    policy = remat_policy(remat)
    if depth == 0:  # a tower without blocks (tests): no parameters, not even an empty stack
        return lambda x, other, deterministic: x
    body = _scan_body(cls) if scan else cls
    if remat != "none":  # deterministic (argument 3 counting self) stays a Python bool, so does a rate not scanned
        static = (3,) if scan and drop_path else (3, 4)
        body = nn.remat(body, static_argnums=static, policy=policy, prevent_cse=not scan)
    rates = drop_path_rates(drop_path, depth) if drop_path else [0.0] * depth
    if not scan:
        blocks = [body(**fields, name=f"{name}_{i}") for i in range(depth)]

        def unrolled(x, other, deterministic):
            for block, rate in zip(blocks, rates):
                x = block(x, other, deterministic, rate)
            return x

        return unrolled
    # Without drop path the rate stays the Python number 0 (broadcast), so no block draws a drop-path rng.
    rate_axis, rate = (0, jnp.asarray(rates, jnp.float32)) if drop_path else (nn.broadcast, 0.0)
    scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast, nn.broadcast, rate_axis), length=depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})(**fields, name=name)
    return lambda x, other, deterministic: scanned(x, other, deterministic, rate)[0]
