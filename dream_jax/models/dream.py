"""DREAM: a MAR encoder-decoder with a diffusion head, plus a CLIP text tower contrasted with the encoder.

The module owns every trainable part; the frozen T5 (or its tiny stand-in) and the image tokenizer live outside
and hand in `cond` features and `tokens`. Methods are the pieces the training step, the sampler and the
evaluators call; `__call__` runs all of them once (used for init and the training forward).
Sub-module and parameter names mirror the authors' state_dict (../shared/OFFICIAL_LAYOUT.md), grouped by part.

Dimension letters: B batch, L image tokens, T token dim, P = buffer + L, D width, C CLIP context, Lt cond length,
Dt cond width, E embedding dim, N diffusion tokens.
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from dream_jax.models import precision

from dream_jax.models.diffusion_head import SimpleMLPAdaLN
from dream_jax.models.mae import Decoder, Encoder, keep_mask
from dream_jax.models.projection import ImageProjection
from dream_jax.models.text import ClipTextTower, TextAligner


def mean_pool(x, keep):
    """Mean over kept positions (buffer + visible): [B, P, D], [B, P] -> [B, D]."""
    keep = keep.astype(jnp.float32)[..., None]
    return jnp.sum(x.astype(jnp.float32) * keep, axis=1) / jnp.maximum(jnp.sum(keep, axis=1), 1.0)


class DREAM(nn.Module):
    """All trainable parameters of DREAM; `config` is the `model` section of a dream_jax config.

    `capacity`: the encoder's capacity plan (dream_jax/training/capacity.py; () = all positions), a static argument of
    the train step and the sampler's steps; the parameters do not depend on it."""

    config: ml_collections.ConfigDict
    capacity: tuple = ()

    def setup(self):
        c = self.config
        dtype = precision.compute_dtype(c.precision)
        common = dict(width=c.width, num_heads=c.num_heads, mlp_dim=c.mlp_dim, attn_dropout=c.attn_dropout,
                      proj_dropout=c.proj_dropout, dtype=dtype, remat=c.remat,
                      scan=c.scan_layers, attention=c.attention)
        self.encoder = Encoder(depth=c.encoder_depth, buffer_size=c.buffer_size, num_classes=c.num_classes,
                               capacity=tuple(self.capacity), drop_path=c.get("drop_path", 0.0), **common)
        self.decoder = Decoder(depth=c.decoder_depth, buffer_size=c.buffer_size, **common)
        self.aligner = TextAligner(depth=c.aligner_depth, **common)
        t = c.text_tower
        self.text_tower = ClipTextTower(t.vocab_size, t.context_length, t.width, t.depth, t.num_heads, c.embed_dim,
                                        dtype=dtype, remat=c.remat, scan=c.scan_layers,
                                        attention=c.attention)
        self.image_projection = ImageProjection(c.proj_hidden_dim, c.embed_dim)
        self.diffloss = SimpleMLPAdaLN(c.token_dim, c.diffloss_width, c.diffloss_depth, dtype=dtype,
                                       name="diffloss_net")
        self.logit_scale = self.param("logit_scale", nn.with_logical_partitioning(
            nn.initializers.constant(math.log(1 / 0.07)), ()), (), jnp.float32)

    def encode(self, tokens, mask, deterministic=True):
        """tokens [B, L, T], mask [B, L] -> encoder output [B, P, D] and keep [B, P]."""
        return self.encoder(tokens, mask, deterministic), keep_mask(mask, self.config.buffer_size)

    def image_embedding(self, x, keep, train=False):
        """Encoder output -> projected embedding [B, E] of the mean over buffer + visible tokens."""
        return self.image_projection(mean_pool(x, keep), train)

    def text_embedding(self, ids):
        """CLIP ids [B, C] -> text embedding [B, E]."""
        return self.text_tower(ids)

    def align_text(self, cond, deterministic=True):
        """Frozen text features [B, Lt, Dt] -> aligned [B, Lt, D]."""
        return self.aligner(cond, deterministic)

    def decode(self, x, mask, text, deterministic=True):
        """Encoder output, mask and aligned text -> z [B, L, D]."""
        return self.decoder(x, mask, text, deterministic)

    def denoise(self, x_t, t, z):
        """Diffusion head: [N, T], [N], [N, D] -> [N, 2T]."""
        return self.diffloss(x_t, t, z)

    def __call__(self, tokens, mask, clip_ids, cond, train=False):
        """One full forward: (image embedding, text embedding, z, logit scale)."""
        deterministic = not train
        x, keep = self.encode(tokens, mask, deterministic)
        img = self.image_embedding(x, keep, train)
        txt = self.text_embedding(clip_ids)
        z = self.decode(x, mask, self.align_text(cond, deterministic), deterministic)
        if self.is_initializing():
            self.denoise(tokens[:, 0], jnp.zeros(tokens.shape[:1], jnp.int32), z[:, 0])
        return img, txt, z, self.logit_scale
