"""An external CLIP (OpenAI's / OpenCLIP's ViT models) in Flax, for the CLIP Score evaluator.

Image tower (OpenAI's VisionTransformer): the patch conv without bias (written as the project's patchify + a
linear map, the same numbers), a class token, position embedding, ln_pre, pre-LN blocks, ln_post of the class
token, projection without bias. Text tower: models/text.py's ClipTextTower, which is OpenCLIP's TextTransformer
(causal blocks, ln_final, pooled at the EOT token = the largest id, text projection). Blocks are transformer.py's
Block with LayerNorm eps 1e-5 and `activation`: quick_gelu for OpenAI's weights (OpenCLIP's `openai` tags are the
same tensors), gelu for OpenCLIP's own trainings. Embeddings come out unnormalised; the logit scale is not needed.

`preprocess` is CLIP's image transform on uint8 images: bicubic resize of the shorter side to the input size
(antialiased when shrinking, rounded back to uint8 as PIL does), centre crop, then CLIP's mean / std.

Dimension letters: B batch, H W image size, R input resolution, P patch size, N = (R / P)^2 patches, W width,
E embedding dim, T text context.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dream_jax.models.patchify import patchify
from dream_jax.models.text import ClipTextTower
from dream_jax.models.transformer import ACTIVATIONS, Block, dense, layer_norm, param, stack

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int = 77
    vocab_size: int = 49408
    activation: str = "quick_gelu"  # transformer.ACTIVATIONS key


# OpenCLIP's model configs (src/open_clip/model_configs/<name>.json; heads = width / 64); "tiny" is for tests.
ARCHITECTURES = {
    "ViT-B-32": ClipConfig(512, 224, 32, 768, 12, 12, 512, 12, 8),
    "ViT-B-16": ClipConfig(512, 224, 16, 768, 12, 12, 512, 12, 8),
    "ViT-L-14": ClipConfig(768, 224, 14, 1024, 24, 16, 768, 12, 12),
    "ViT-L-14-336": ClipConfig(768, 336, 14, 1024, 24, 16, 768, 12, 12),
    "tiny": ClipConfig(16, 32, 8, 32, 2, 2, 32, 2, 2),
}


def config(name, activation="quick_gelu"):
    """The ClipConfig of an ARCHITECTURES name with `activation`; ValueError naming the choices otherwise."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown CLIP model {name!r}; expected one of {sorted(ARCHITECTURES)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown CLIP activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    return dataclasses.replace(ARCHITECTURES[name], activation=activation)


class ClipVisionTower(nn.Module):
    """Normalised pixels [B, R, R, 3] -> image embedding [B, E] (not normalised)."""

    width: int
    layers: int
    heads: int
    patch_size: int
    embed_dim: int
    activation: str = "quick_gelu"

    @nn.compact
    def __call__(self, pixels):
        x = dense(self.width, (None, "embed"), "conv1", jnp.float32, use_bias=False)(
            patchify(pixels, self.patch_size))
        cls = param(self, "class_embedding", (self.width,), ("embed",), nn.initializers.normal(self.width**-0.5))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        pos = param(self, "positional_embedding", x.shape[1:], ("length", "embed"),
                    nn.initializers.normal(self.width**-0.5))
        x = layer_norm("ln_pre", eps=1e-5)(x + pos)
        x = stack(Block, self.layers, "transformer_resblocks", False, "none", num_heads=self.heads,
                  mlp_dim=4 * self.width, eps=1e-5, activation=self.activation)(x, None, True)
        pooled = layer_norm("ln_post", eps=1e-5)(x[:, 0])
        proj = param(self, "proj", (self.width, self.embed_dim), ("embed", "proj"),
                     nn.initializers.normal(self.width**-0.5))
        return pooled @ proj


class CLIP(nn.Module):
    """Both towers; `encode_image` / `encode_text` each run one, `__call__` both (for init)."""

    config: ClipConfig

    def setup(self):
        c = self.config
        self.visual = ClipVisionTower(c.vision_width, c.vision_layers, c.vision_heads, c.patch_size, c.embed_dim,
                                      c.activation)
        self.text = ClipTextTower(c.vocab_size, c.context_length, c.text_width, c.text_layers, c.text_heads,
                                  c.embed_dim, activation=c.activation)

    def encode_image(self, pixels):
        """Normalised pixels [B, R, R, 3] (preprocess) -> [B, E]."""
        return self.visual(pixels)

    def encode_text(self, ids):
        """Token ids [B, T] with EOT the largest id of each row -> [B, E]."""
        return self.text(ids)

    def __call__(self, pixels, ids):
        return self.encode_image(pixels), self.encode_text(ids)


def param_shapes(clip_config):
    """{'visual': ..., 'text': ...} of ShapeDtypeStructs, nothing allocated."""
    c = clip_config
    pixels = jax.ShapeDtypeStruct((1, c.image_size, c.image_size, 3), jnp.float32)
    ids = jax.ShapeDtypeStruct((1, c.context_length), jnp.int32)
    return nn.meta.unbox(jax.eval_shape(CLIP(c).init, jax.random.key(0), pixels, ids)["params"])


def preprocess(images, size):
    """uint8 [B, H, W, 3] -> float32 [B, R, R, 3]: CLIP's resize (shorter side, bicubic), centre crop, mean/std."""
    h, w = images.shape[1:3]
    # torchvision's Resize(int): the shorter side becomes `size`, the longer int(size * long / short).
    new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    x = images.astype(jnp.float32)
    if (new_h, new_w) != (h, w):
        x = jax.image.resize(x, (x.shape[0], new_h, new_w, 3), "bicubic", antialias=True)
        # PIL (CLIP's transform) returns a uint8 image.
        x = jnp.clip(jnp.round(x), 0, 255)
    top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))  # torchvision's CenterCrop
    x = x[:, top:top + size, left:left + size] / 255.0
    return (x - jnp.asarray(MEAN)) / jnp.asarray(STD)
