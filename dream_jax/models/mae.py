"""DREAM's MAR-style image encoder and text-conditioned decoder.

The encoder sees the visible tokens plus `buffer_size` buffer tokens (all filled with class_emb(0), which makes
them 64 learned register tokens at distinct positions). Shapes stay static: every one of the Bf + L positions is
computed, and masked positions are removed as attention *keys*, so each visible output is exactly what running
on the gathered visible tokens + buffer gives (LayerNorm and MLP act per token). The decoder puts the learned
mask token at masked positions, self-attends over all Bf + L, cross-attends to the aligned text, drops the
buffer and adds the diffusion position embedding, giving one condition vector z per image token.

Dimension letters: B batch, L image tokens (256), Bf buffer tokens (64), P = Bf + L, T token dim (16),
D width, Lt text length.
"""

import flax.linen as nn
import jax.numpy as jnp

from dream_jax.models.transformer import Block, CrossAttentionBlock, constrain, dense, layer_norm, maybe_remat, param

_POS_INIT = nn.initializers.normal(0.02)


def keep_mask(mask, buffer_size):
    """[B, L] True-where-masked -> [B, P] True where the encoder keeps the position (buffer always kept)."""
    buffer = jnp.ones((mask.shape[0], buffer_size), bool)
    return jnp.concatenate([buffer, ~mask.astype(bool)], axis=1)


class Encoder(nn.Module):
    """tokens [B, L, T], mask [B, L] (True = masked) -> [B, P, D] (rows where ~keep are don't-care)."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    buffer_size: int
    num_classes: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

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
        attend = keep_mask(mask, self.buffer_size)[:, None, None, :]
        block = maybe_remat(Block, self.remat)
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.attn_dropout, self.proj_dropout, dtype=self.dtype,
                      name=f"encoder_blocks_{i}")(x, attend, deterministic)
        return layer_norm("encoder_norm")(x)


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
    remat: bool = False

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
        block = maybe_remat(CrossAttentionBlock, self.remat)
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.attn_dropout, self.proj_dropout, dtype=self.dtype,
                      name=f"decoder_blocks_{i}")(x, text, deterministic)
        x = layer_norm("decoder_norm")(x)[:, self.buffer_size:]
        diff_pos = param(self, "diffusion_pos_embed_learned", (1, positions - self.buffer_size, self.width),
                         (None, "length", "embed"), _POS_INIT)
        return x + diff_pos
