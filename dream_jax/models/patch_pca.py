"""A fixed, whitened PCA of pixel patches: the embedded default's stand-in for the frozen SD-VAE.

DREAM models continuous tokens of a frozen autoencoder: 16 channels of roughly unit variance a token. Raw RGB
patches are a poor substitute (48 to 192 strongly correlated dimensions, most of an image one flat background
value), so the tiny config projects each patch onto its top-k principal components, fitted once on rendered
training images with a fixed seed, and divides each by its standard deviation. Tokens are then decorrelated,
zero-mean and of unit variance like scaled VAE latents; decoding is the transpose. With 8 x 8 patches of the
32 x 32 captioned shapes, k = 32 keeps 96% of the variance and the oracle reads every attribute back from the
reconstruction (tests/test_patch_pca.py).

The fitted arrays live in the frozen pytree (never trained, never in checkpoints: refitted from the same seed).

Dimension letters: N patches, P = C p p patch features, K components, B batch, L tokens.
"""

import jax.numpy as jnp
import numpy as np

# Components with a smaller standard deviation than this are noise of the fit: whitening would blow them up.
MIN_STD = 1e-4


def fit(patches, num_components):
    """Mean [P], components [P, K] (columns, by decreasing variance) and their std [K] of float patches [N, P]."""
    patches = np.asarray(patches, np.float64)
    if not 0 < num_components <= patches.shape[1]:
        raise ValueError(f"tokenizer.pca_dim={num_components}; expected 1..{patches.shape[1]} (the patch size)")
    mean = patches.mean(axis=0)
    variance, vectors = np.linalg.eigh(np.cov(patches - mean, rowvar=False))
    order = np.argsort(variance)[::-1][:num_components]
    std = np.sqrt(np.maximum(variance[order], 0.0))
    if std[-1] < MIN_STD:
        raise ValueError(f"tokenizer.pca_dim={num_components} exceeds the patches' rank (component std "
                         f"{std[-1]:.2g}); use fewer components")
    # eigh's signs are arbitrary: fix each column's largest entry positive so the basis is reproducible.
    vectors = vectors[:, order]
    vectors = vectors * np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(num_components)])
    return {"mean": mean.astype(np.float32), "components": vectors.astype(np.float32), "std": std.astype(np.float32)}


def encode(pca, patches):
    """Patches [B, L, P] -> whitened tokens [B, L, K]."""
    return ((patches - pca["mean"]) @ pca["components"]) / pca["std"]


def decode(pca, tokens):
    """Tokens [B, L, K] -> patches [B, L, P] (the projection onto the fitted subspace)."""
    return (tokens.astype(jnp.float32) * pca["std"]) @ pca["components"].T + pca["mean"]
