"""Analytic FLOP counts of one DREAM training example (matmuls and attention; 1 multiply-add = 2 FLOPs).

The encoder is counted on the buffer + visible tokens only (the compute MAR/DREAM's design allows); the decoder
on all Bf + L positions; the diffusion head on L tokens x batch_mul, as the authors compute it. Training of the
trainable parts costs 3x their forward (backward = 2x forward); the frozen T5 runs forward only.

generation_flops counts text-to-image decoding (generation/generate.py) the same way: per step the encoder at the
step's capacity bucket, the decoder on all positions and the diffusion head on the step's padded head capacity,
times two with CFG; SAD runs the steps before T_c for K candidates and scores each once.

Dimension letters: D width, M MLP hidden, L image tokens, Bf buffer, n sequence length, Lt/Dt T5 length/width,
W head or tower width, T token dim, C CLIP context, P projection hidden, E embedding dim.
"""

import math

from dream_jax.generation import generate


def _block(n, d, m, kv_len=None):
    """Forward FLOPs of a pre-LN block on n tokens: qkv + proj + MLP matmuls and the two attention products."""
    kv_len = n if kv_len is None else kv_len
    return 2 * n * (4 * d * d + 2 * d * m) + 4 * n * kv_len * d


def _cross(n, d, text_len):
    """Cross-attention from n queries to text_len aligned text tokens (q, kv, proj, attention)."""
    return 2 * n * 2 * d * d + 2 * text_len * 2 * d * d + 4 * n * text_len * d


def encoder_forward_flops(config, visible):
    """Per-example encoder forward FLOPs on the buffer + `visible` image tokens (z_proj and the blocks)."""
    m = config.model
    return 2 * visible * m.token_dim * m.width + m.encoder_depth * _block(m.buffer_size + visible, m.width, m.mlp_dim)


def forward_flops(config, mask_ratio):
    """Per-example forward FLOPs by component, for a masking ratio in [0, 1]."""
    m = config.model
    d, mlp, length, buf = m.width, m.mlp_dim, m.seq_len, m.buffer_size
    visible = length - math.ceil(length * mask_ratio)
    n_enc, n_dec, lt = buf + visible, buf + length, m.cond_len
    t = m.text_tower
    w, dw = t.width, m.diffloss_width
    diff_tokens = length * config.diffusion.batch_mul
    per_diff_token = (2 * m.token_dim * dw + 2 * (256 * dw + dw * dw) + 2 * d * dw
                      + m.diffloss_depth * (2 * dw * 3 * dw + 4 * dw * dw) + 2 * dw * 2 * dw + 2 * dw * 2 * m.token_dim)
    return {
        "encoder": encoder_forward_flops(config, visible),
        "decoder": 2 * n_enc * d * d + m.decoder_depth * (_block(n_dec, d, mlp) + _cross(n_dec, d, lt)),
        "aligner": 2 * lt * m.cond_dim * d + m.aligner_depth * _block(lt, d, mlp),
        "text tower": t.depth * _block(t.context_length, w, 4 * w) + 2 * w * m.embed_dim,
        "projections": 2 * (d * m.proj_hidden_dim + m.proj_hidden_dim ** 2 + m.proj_hidden_dim * m.embed_dim),
        "diffusion head": diff_tokens * per_diff_token,
    }


def t5_forward_flops(d_model, d_kv, num_heads, d_ff, num_layers, length, gated=False):
    """Forward FLOPs of a T5 encoder on `length` tokens."""
    inner = d_kv * num_heads
    ff = (3 if gated else 2) * d_model * d_ff
    per_layer = 2 * length * (4 * d_model * inner + ff) + 4 * length * length * inner
    return num_layers * per_layer


def train_flops_per_example(config, mask_ratio, t5=None):
    """Training FLOPs of one example: 3 x trainable forward + the frozen T5 forward (if its shape is given)."""
    trainable = 3 * sum(forward_flops(config, mask_ratio).values())
    frozen = t5_forward_flops(length=config.model.cond_len, **t5) if t5 else 0
    return trainable + frozen


def _head_flops_per_token(config):
    """One diffusion-head forward on one token (as forward_flops' head, per token)."""
    return forward_flops(config, 0.0)["diffusion head"] / (config.model.seq_len * config.diffusion.batch_mul)


def generation_flops(config, opts):
    """Forward FLOPs of generating one image with `opts` (generate.Options), by component.

    Per step s: the encoder on the buffer + generate.encoder_capacities' slots, the decoder on all positions and
    the head's `sampling_steps` passes on generate.head_capacities' tokens, the decoder and head twice unless cfg = 1;
    SAD (K = num_candidates) runs steps [0, T_c) K times and encodes (at the capacity after T_c steps) and projects
    each candidate once to score it. PCA tokens with diffusion.clip_denoised decode and re-encode each head step's
    x0 estimate (tokens.x0_constraint): 2 x 2 K P per token.
    The text aligner, CLIP text tower and T5 run once per prompt and are not counted.
    """
    length = config.model.seq_len
    k, tc = (opts.num_candidates, opts.sad_step) if opts.sad_step else (1, 0)
    branches = 1 if opts.cfg == 1.0 else 2
    per = forward_flops(config, 0.0)
    encoder = decoder_steps = head_tokens = 0
    for a, b, enc_cap, head_cap in generate.segments(length, opts.num_iter, 0, opts.num_iter, opts.encoder_buckets):
        copies = sum(k if s < tc else 1 for s in range(a, b))  # sequences x steps
        encoder += copies * encoder_forward_flops(config, enc_cap)
        decoder_steps += copies
        head_tokens += copies * head_cap
    scored = int(generate.encoder_capacities(length, opts.num_iter, opts.encoder_buckets)[tc])
    return {
        "encoder": encoder,
        "decoder": decoder_steps * branches * per["decoder"],
        "diffusion head": head_tokens * branches * opts.sampling_steps * _head_flops_per_token(config),
        "sad scoring": k * (encoder_forward_flops(config, scored) + per["projections"]) if tc else 0,
        "x0 constraint": head_tokens * opts.sampling_steps * _x0_constraint_flops_per_token(config),
    }


def _x0_constraint_flops_per_token(config):
    tok = config.tokenizer
    if not (config.diffusion.clip_denoised and tok.kind == "pixels" and tok.pca_dim):
        return 0
    return 4 * tok.pca_dim * 3 * tok.patch_size ** 2
