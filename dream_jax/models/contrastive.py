"""DREAM's contrastive objective: filtered symmetric InfoNCE (the generative one is models/diffusion_head.loss).

Image and text embeddings are L2-normalised, logits = exp(logit_scale) img @ txt^T over the whole
global batch (jit over a sharded batch gathers the negatives; no hand-written all-gather). Samples with less
than 25% visible tokens are filtered as the authors' code does: their rows of the i2t logits and their columns of
the t2i logits (= i2t^T) are set to -1e9. A filtered sample's image is thus neither a query nor a negative, its
own text query is dropped (its positive is gone), but its text stays a negative for the valid images' i2t
queries. Each direction's cross entropy is averaged over valid samples, and the loss is their mean.

Dimension letters: B batch, E embedding dim.
"""

import jax
import jax.numpy as jnp

_FILTERED = -1e9


def l2_normalize(x, eps=1e-12):
    """x / max(|x|, eps) over the last axis, with a finite gradient at x = 0 (|x|'s own is 0/0 there).

    A zero row is real: with every token of every example masked, the encoder sees only the (shared) buffer, and
    the projection's batch norm maps the identical features to exactly 0."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def loss(img_emb, txt_emb, logit_scale, valid):
    """Filtered InfoNCE, the authors' filter (see the module docstring). Returns (loss, accuracy).

    img_emb, txt_emb [B, E]; valid bool [B]. The authors' i2t rows and t2i columns of a filtered sample are both
    its image's row of the [B_img, B_txt] logits, so one row mask serves both directions. The accuracy is that of
    the valid images' i2t queries over all B texts. With no valid sample the loss is 0 with zero gradients: the
    per-sample losses are selected away by jnp.where (an all -1e9 row or column has a finite logsumexp).
    """
    img, txt = l2_normalize(img_emb), l2_normalize(txt_emb)
    logits = jnp.where(valid[:, None], jnp.exp(logit_scale) * img @ txt.T, _FILTERED)  # [B_img, B_txt]
    diag = jnp.diagonal(logits)
    i2t = jax.nn.logsumexp(logits, axis=1) - diag
    t2i = jax.nn.logsumexp(logits, axis=0) - diag
    count = jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
    loss = jnp.sum(jnp.where(valid, i2t + t2i, 0.0)) / (2 * count)
    correct = jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0])
    return loss, jnp.sum((correct & valid).astype(jnp.float32)) / count
