"""Images <-> DREAM's continuous tokens, through the frozen image tokenizer (raw or PCA pixel patches, or SD-VAE
latents), and the sampler's map of denoised tokens onto valid ones.

Every function takes the resolved frozen components (frozen.Frozen) and is pure: jit-safe, no file read.

Dimension letters: B batch, H/W image size, h/w latent size, c latent channels, L tokens, T token dim, N tokens.
"""

import jax
import jax.numpy as jnp

from dream_jax.models import patch_pca, precision
from dream_jax.models import patchify as patchify_lib
from dream_jax.models import vae as vae_lib


def normalize(images):
    """uint8 [..., 3] -> float32 in [-1, 1], the authors' Normalize(0.5, 0.5)."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def vae_module(config, frozen, dtype=None):
    """The frozen SD-VAE module (computing in the config's precision unless `dtype` is given)."""
    dtype = precision.compute_dtype(config.model.precision) if dtype is None else jnp.dtype(dtype)
    return vae_lib.AutoencoderKL(frozen.vae_config, dtype=dtype)


def images_to_tokens(config, frozen, images, rng):
    """Pixels or cached posterior moments -> tokens [B, L, T].

    `images` is uint8 [B, H, W, 3], or, from the latent cache (`data.source='latents'`), the VAE posterior
    moments [B, h, w, 2c] (mean then logvar, any float dtype). The VAE path samples the posterior, as the authors
    do, so cached and uncached training see the same distribution of latents.
    """
    tok = config.tokenizer
    if jnp.issubdtype(images.dtype, jnp.floating):
        if tok.kind != "vae":
            raise ValueError(f"cached VAE moments reached tokenizer.kind={tok.kind!r}; the latent cache needs 'vae'")
        mean, logvar = jnp.split(images.astype(jnp.float32), 2, axis=-1)
        return moments_to_tokens(config, mean, logvar, rng)
    x = normalize(images)
    if tok.kind == "pixels":
        patches = patchify_lib.patchify(x, tok.patch_size)
        return patch_pca.encode(frozen.pca, patches) if tok.pca_dim else patches
    mean, logvar = vae_module(config, frozen).apply(frozen.vae, x, method="encode")
    return moments_to_tokens(config, mean, logvar, rng)


def moments_to_tokens(config, mean, logvar, rng):
    """One posterior draw of the latent [B, h, w, c], scaled by latent_scale and patchified (no gradient)."""
    latent = vae_lib.sample_posterior(rng, mean, logvar) * config.tokenizer.latent_scale
    return patchify_lib.patchify(jax.lax.stop_gradient(latent), config.tokenizer.patch_size)


def x0_constraint(config, frozen):
    """The head sampler's map of a denoised token estimate x0 [N, T] onto valid tokens, or None (unconstrained).

    With diffusion.clip_denoised the image the tokens decode to must lie in [-1, 1]: raw pixel patches (and VAE
    latents, as IDDPM's option) are clipped; PCA tokens are decoded, clipped in pixel space and re-encoded, as
    clipping whitened coefficients would not bound the pixels. Without it x0 is left alone, as MAR samples latents.
    """
    if not config.diffusion.clip_denoised:
        return None
    if config.tokenizer.kind == "pixels" and config.tokenizer.pca_dim:
        pca = frozen.pca
        return lambda x0: patch_pca.encode(pca, jnp.clip(patch_pca.decode(pca, x0), -1.0, 1.0))
    return lambda x0: jnp.clip(x0, -1.0, 1.0)


def tokens_to_images(config, frozen, tokens):
    """tokens [B, L, T] -> uint8 images [B, H, W, 3]."""
    tok = config.tokenizer
    if tok.kind == "pixels":
        patches = patch_pca.decode(frozen.pca, tokens) if tok.pca_dim else tokens
        x = patchify_lib.unpatchify(patches, tok.patch_size, 3)
    else:
        latent = patchify_lib.unpatchify(tokens, tok.patch_size, 4) / tok.latent_scale
        x = vae_module(config, frozen).apply(frozen.vae, latent, method="decode")
    return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
