"""DREAM's two objectives: filtered symmetric InfoNCE and the masked, group-gated diffusion loss.

Contrastive: image and text embeddings are L2-normalised, logits = exp(logit_scale) img @ txt^T over the whole
global batch (jit over a sharded batch gathers the negatives; no hand-written all-gather). Samples with less
than 25% visible tokens are filtered as the authors' code does: their rows of the i2t logits and their columns of
the t2i logits (= i2t^T) are set to -1e9. A filtered sample's image is thus neither a query nor a negative, its
own text query is dropped (its positive is gone), but its text stays a negative for the valid images' i2t
queries. Each direction's cross entropy is averaged over valid samples, and the loss is their mean.

Diffusion: the batch is repeated `batch_mul` times with independent t and noise, the per-token loss is averaged
over masked tokens within each mask group, groups whose mask ratio is < 0.5 are zeroed, and the result is
averaged over all groups, as the authors' per-GPU losses averaged by DDP.

Dimension letters: B batch, E embedding dim, G mask groups, L tokens, T token dim, D width, N = M x B x L
diffusion tokens with M = batch_mul.
"""

import jax
import jax.numpy as jnp

from dream_jax.models import gaussian_diffusion

_FILTERED = -1e9


def l2_normalize(x, eps=1e-12):
    """x / max(|x|, eps) over the last axis, with a finite gradient at x = 0 (|x|'s own is 0/0 there).

    A zero row is real: with every token of every example masked, the encoder sees only the (shared) buffer, and
    the projection's batch norm maps the identical features to exactly 0."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def contrastive_loss(img_emb, txt_emb, logit_scale, valid):
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


def diffusion_draws(rng, num, token_dim, num_steps):
    """t [N] int32 and noise [N, T] for N diffusion tokens, in the order diffusion_targets lays them out."""
    t_rng, n_rng = jax.random.split(rng)
    t = jax.random.randint(t_rng, (num,), 0, num_steps)
    noise = jax.random.normal(n_rng, (num, token_dim), jnp.float32)
    return t, noise


def diffusion_targets(rng, tokens, z, mask, batch_mul, num_steps, draws=None):
    """Repeats tokens, conditions and masks `batch_mul` times and draws t and noise for each copy.

    Returns x0 [N, T], z [N, D], mask [N], t [N] int32, noise [N, T] (copies are the leading axis, so the
    group of token n is recoverable from its row). `draws`: (t, noise) made beforehand (e.g. for the whole batch
    by gradient accumulation, which slices them per microbatch); `rng` is then unused.
    """
    def repeat(a):  # [B, L, ...] -> [M * B * L, ...]
        flat = a.reshape((-1,) + a.shape[2:])
        return jnp.tile(flat, (batch_mul,) + (1,) * (flat.ndim - 1))

    x0, zz, mm = repeat(tokens), repeat(z), repeat(mask)
    t, noise = diffusion_draws(rng, x0.shape[0], x0.shape[1], num_steps) if draws is None else draws
    return x0.astype(jnp.float32), zz, mm, t, noise


def diffusion_loss(denoise, constants, rng, tokens, z, mask, num_groups, batch_mul, min_masked, draws=None):
    """Masked, group-gated diffusion loss. tokens [B, L, T], z [B, L, D], mask [B, L] (True = masked).

    `denoise(x_t, t, z) -> [N, 2T]` is the diffusion head. Returns (loss, metrics) where metrics has the loss
    averaged over active groups (the authors' logged value) and the fraction of active groups. `draws`: see
    diffusion_targets.
    """
    x0, zz, mm, t, noise = diffusion_targets(rng, tokens, z, mask, batch_mul, constants["timestep_map"].shape[0],
                                             draws)
    x_t = gaussian_diffusion.q_sample(constants, x0, t, noise)
    per_token = gaussian_diffusion.training_loss(constants, x0, x_t, t, noise, denoise(x_t, t, zz))
    # [M, G, B/G * L]: loss and mask per group, pooled over the batch_mul copies.
    per_token = per_token.reshape(batch_mul, num_groups, -1).transpose(1, 0, 2).reshape(num_groups, -1)
    mm = mm.astype(jnp.float32).reshape(batch_mul, num_groups, -1).transpose(1, 0, 2).reshape(num_groups, -1)
    group_loss = jnp.sum(per_token * mm, axis=1) / jnp.maximum(jnp.sum(mm, axis=1), 1.0)
    group_ratio = jnp.mean(mask.astype(jnp.float32).reshape(num_groups, -1), axis=1)
    active = (group_ratio >= min_masked).astype(jnp.float32)
    loss = jnp.mean(group_loss * active)
    metrics = {
        "gen_loss_active": jnp.sum(group_loss * active) / jnp.maximum(jnp.sum(active), 1.0),
        "gen_active_frac": jnp.mean(active),
    }
    return loss, metrics
