"""The one patchify of the project: image-like maps [B, H, W, C] <-> tokens [B, L, C p p].

Token features are ordered channel-major within the p x p patch (index c p^2 + i p + j), exactly the authors'
`'nchpwq->nhwcpq'`, and tokens run row-major over the (H/p) x (W/p) grid. Used on VAE latents (p = 2) and, for
the tiny config, on RGB pixels.

Dimension letters: B batch, H/W height/width, C channels, p patch, L = (H/p)(W/p) tokens.
"""

import einops


def patchify(x, patch_size):
    """[B, H, W, C] -> [B, L, C p p]."""
    return einops.rearrange(x, "b (h p) (w q) c -> b (h w) (c p q)", p=patch_size, q=patch_size)


def unpatchify(tokens, patch_size, channels):
    """[B, L, C p p] -> [B, H, W, C] for a square grid."""
    side = int(round(tokens.shape[1] ** 0.5))
    if side * side != tokens.shape[1]:
        raise ValueError(f"{tokens.shape[1]} tokens do not form a square grid")
    return einops.rearrange(tokens, "b (h w) (c p q) -> b (h p) (w q) c", h=side, p=patch_size, q=patch_size,
                            c=channels)
