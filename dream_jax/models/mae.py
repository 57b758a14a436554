"""DREAM's MAR-style image encoder and text-conditioned decoder.

The encoder sees the visible tokens plus `buffer_size` buffer tokens (all filled with class_emb(0), which makes
them 64 learned register tokens at distinct positions). Shapes stay static: every one of the Bf + L positions is
computed, and masked positions are removed as attention *keys*, so each visible output is exactly what running
on the gathered visible tokens + buffer gives (LayerNorm and MLP act per token). In training, `capacity` makes
the encoder's compute follow the visible tokens: classes of the batch gather their visible tokens into a static
number of slots (see Encoder and dream_jax/training/capacity.py); the result is the same. The decoder puts the learned
mask token at masked positions, self-attends over all Bf + L, cross-attends to the aligned text, drops the
buffer and adds the diffusion position embedding, giving one condition vector z per image token.

Dimension letters: B batch, L image tokens (256), Bf buffer tokens (64), P = Bf + L, T token dim (16),
D width, Lt text length, K encoder classes, C slots (capacity) of a class.
"""

import flax.linen as nn
import jax.numpy as jnp

from dream_jax.models.transformer import Block, CrossAttentionBlock, constrain, dense, layer_norm, param, stack

_POS_INIT = nn.initializers.normal(0.02)


def keep_mask(mask, buffer_size):
    """[B, L] True-where-masked -> [B, P] True where the encoder keeps the position (buffer always kept)."""
    buffer = jnp.ones((mask.shape[0], buffer_size), bool)
    return jnp.concatenate([buffer, ~mask.astype(bool)], axis=1)


def visible_first(mask):
    """[B, L] True-where-masked -> [B, L] int32 positions: each row's visible positions in order, then its masked."""
    return jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True).astype(jnp.int32)


def _take(x, positions):
    """x [B, L, D], positions [B, C] -> [B, C, D]."""
    return jnp.take_along_axis(x, positions[..., None], axis=1)


class Encoder(nn.Module):
    """tokens [B, L, T], mask [B, L] (True = masked) -> [B, P, D] (rows where ~keep are don't-care).

    `capacity` () computes all P positions, masked ones removed as keys. A tuple of K capacities C_c (a plan of
    training/capacity.py) cuts the batch into K contiguous classes; class c gathers each example's visible tokens
    (then masked ones, key-masked, up to C_c) and runs the blocks on Bf + C_c positions only, then scatters back.
    Exact when every example of class c has at most C_c visible tokens, which the plan guarantees.
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    buffer_size: int
    num_classes: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"
    scan: bool = False
    attention: str = "xla"
    capacity: tuple = ()
    drop_path: float = 0.0  # stochastic depth of the last block (linear from 0 at the first; fine-tuning only)

    @nn.compact
    def __call__(self, tokens, mask, deterministic=True):
        batch, length, _ = tokens.shape
        # Kept for the authors' layout: only row 0 of class_emb is ever used, fake_latent never (label drop 0).
        class_emb = param(self, "class_emb", (self.num_classes, self.width), ("classes", "embed"), _POS_INIT)
        param(self, "fake_latent", (1, self.width), (None, "embed"), _POS_INIT)
        pos = param(self, "encoder_pos_embed_learned", (1, self.buffer_size + length, self.width),
                    (None, "length", "embed"), _POS_INIT)
        x = dense(self.width, ("token", "embed"), "z_proj", self.dtype)(tokens.astype(self.dtype))
        buffer = jnp.broadcast_to(class_emb[0].astype(x.dtype), (batch, self.buffer_size, self.width))
        x = jnp.concatenate([buffer, x], axis=1) + pos
        x = layer_norm("z_proj_ln")(x).astype(self.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        blocks = stack(Block, self.depth, "encoder_blocks", self.scan, self.remat, num_heads=self.num_heads,
                       mlp_dim=self.mlp_dim, attn_dropout=self.attn_dropout, proj_dropout=self.proj_dropout,
                       dtype=self.dtype, attention=self.attention, drop_path=self.drop_path)
        norm = layer_norm("encoder_norm")

        def run(x, keep):  # [b, n, D], [b, n] -> [b, n, D]
            return norm(blocks(x, keep[:, None, None, :], deterministic))

        if not self.capacity or self.is_initializing():  # init sees a dummy batch; the parameters are the same
            return run(x, keep_mask(mask, self.buffer_size))
        classes = len(self.capacity)
        cut = lambda a: jnp.split(a, classes, axis=0)  # noqa: E731
        return jnp.concatenate([self._gathered(run, xc, mc, cap)
                                for xc, mc, cap in zip(cut(x), cut(mask), self.capacity)], axis=0)

    def _gathered(self, run, x, mask, capacity):
        """One class: x [b, P, D], mask [b, L] -> run on buffer + `capacity` gathered slots, back to [b, P, D]."""
        x = constrain(x, ("batch", "length", "embed"))  # the class is spread over all batch shards
        length = mask.shape[1]
        if capacity >= length:
            return run(x, keep_mask(mask, self.buffer_size))
        order = visible_first(mask)
        slots = order[:, :capacity]
        h = jnp.concatenate([x[:, :self.buffer_size], _take(x[:, self.buffer_size:], slots)], axis=1)
        h = run(constrain(h, ("batch", "length", "embed")), keep_mask(_take(mask[..., None], slots)[..., 0],
                                                                       self.buffer_size))
        # Slots past the capacity hold masked positions only: their rows are don't-care, zeros here.
        image = jnp.pad(h[:, self.buffer_size:], ((0, 0), (0, length - capacity), (0, 0)))
        image = _take(image, jnp.argsort(order, axis=-1).astype(jnp.int32))
        return jnp.concatenate([h[:, :self.buffer_size], image], axis=1)


class Decoder(nn.Module):
    """Encoder output [B, P, D], mask [B, L], aligned text [B, Lt, D] -> z [B, L, D]."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    buffer_size: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"
    scan: bool = False
    attention: str = "xla"

    @nn.compact
    def __call__(self, x, mask, text, deterministic=True):
        positions = x.shape[1]
        x = dense(self.width, ("embed", "embed_out"), "decoder_embed", self.dtype)(x.astype(self.dtype))
        mask_token = param(self, "mask_token", (1, 1, self.width), (None, None, "embed"), _POS_INIT)
        keep = keep_mask(mask, self.buffer_size)[..., None]
        x = jnp.where(keep, x, mask_token.astype(x.dtype))
        pos = param(self, "decoder_pos_embed_learned", (1, positions, self.width), (None, "length", "embed"),
                    _POS_INIT)
        x = layer_norm("decoder_proj_ln")(x + pos).astype(self.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        x = stack(CrossAttentionBlock, self.depth, "decoder_blocks", self.scan, self.remat, num_heads=self.num_heads,
                  mlp_dim=self.mlp_dim, attn_dropout=self.attn_dropout, proj_dropout=self.proj_dropout,
                  dtype=self.dtype, attention=self.attention)(x, text, deterministic)
        x = layer_norm("decoder_norm")(x)[:, self.buffer_size:]
        diff_pos = param(self, "diffusion_pos_embed_learned", (1, positions - self.buffer_size, self.width),
                         (None, "length", "embed"), _POS_INIT)
        return x + diff_pos
