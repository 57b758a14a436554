"""The two text paths of DREAM: the CLIP text tower (contrastive) and the text aligner (generation).

The CLIP tower is OpenCLIP's TextTransformer trained from scratch: token + position embedding, causal blocks
(LayerNorm eps 1e-5, exact GELU), final LN, pooling at the EOT token (the argmax of the ids), linear projection
stored [in, out] like the authors' raw Parameter. The aligner maps frozen T5 features to decoder width: Linear,
learned position embedding, LN, `depth` blocks. Both reuse the one Block of transformer.py.

Init (the paper leaves the tower's init to OpenCLIP / MAE): xavier linears everywhere as MAR's `_init_weights`,
token embedding normal(0.02), CLIP position embedding normal(0.01), text projection normal(width^-0.5).

Dimension letters: B batch, C text context (77), V vocabulary, W tower width, E embedding dim, Lt T5 length
(128), Dt T5 width, D decoder width.
"""

import flax.linen as nn
import jax.numpy as jnp

from dream_jax.models.transformer import Block, constrain, dense, layer_norm, param, stack


class ClipTextTower(nn.Module):
    """ids [B, C] int32 -> text embedding [B, E] (not normalised)."""

    vocab_size: int
    context_length: int
    width: int
    depth: int
    num_heads: int
    embed_dim: int
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"
    scan: bool = False
    attention: str = "xla"
    activation: str = "gelu"  # transformer.ACTIVATIONS key: quick_gelu for OpenAI's CLIP weights (models/clip.py)

    @nn.compact
    def __call__(self, ids):
        if ids.shape[-1] != self.context_length:
            raise ValueError(f"text ids have length {ids.shape[-1]}, the tower expects {self.context_length}")
        table = param(self, "token_embedding", (self.vocab_size, self.width), ("vocab", "embed"),
                      nn.initializers.normal(0.02))
        pos = param(self, "positional_embedding", (self.context_length, self.width), ("length", "embed"),
                    nn.initializers.normal(0.01))
        x = (jnp.take(table, ids, axis=0) + pos[None]).astype(self.dtype)
        x = constrain(x, ("batch", "length", "embed"))
        causal = jnp.tril(jnp.ones((self.context_length, self.context_length), bool))[None, None]
        x = stack(Block, self.depth, "transformer_resblocks", self.scan, self.remat, num_heads=self.num_heads,
                  mlp_dim=4 * self.width, eps=1e-5, dtype=self.dtype, attention=self.attention,
                  activation=self.activation)(x, causal, True)
        x = layer_norm("ln_final", eps=1e-5)(x)
        pooled = x[jnp.arange(x.shape[0]), jnp.argmax(ids, axis=-1)]
        proj = param(self, "text_projection", (self.width, self.embed_dim), ("embed", "proj"),
                     nn.initializers.normal(self.width**-0.5))
        return pooled.astype(jnp.float32) @ proj


class TextAligner(nn.Module):
    """Frozen T5 features [B, Lt, Dt] -> aligned text [B, Lt, D] for the decoder's cross-attention."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    attn_dropout: float = 0.0
    proj_dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32
    remat: str = "none"
    scan: bool = False
    attention: str = "xla"

    @nn.compact
    def __call__(self, features, deterministic=True):
        x = dense(self.width, ("cond", "embed"), "text_proj", self.dtype)(features.astype(self.dtype))
        pos = param(self, "text_pos_emb", (1, features.shape[1], self.width), (None, "length", "embed"),
                    nn.initializers.normal(0.02))
        x = layer_norm("text_proj_ln")(x + pos).astype(self.dtype)
        return stack(Block, self.depth, "text_aligner", self.scan, self.remat, num_heads=self.num_heads,
                     mlp_dim=self.mlp_dim, attn_dropout=self.attn_dropout, proj_dropout=self.proj_dropout,
                     dtype=self.dtype, attention=self.attention)(x, None, deterministic)
