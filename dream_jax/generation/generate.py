"""Text-to-image generation: MAR random-order decoding with classifier-free guidance, and DREAM's Semantically
Aligned Decoding (SAD).

Decoding (MAR / FLUID, PAPER.md §3): every image gets a random order; after step s the first mask_len[s+1] positions
of the order stay masked, with mask_len[s+1] = floor(L cos(pi/2 (s+1)/S)) clamped to [1, mask_len[s] - 1], and the
last step reveals the rest. Each step runs the encoder on the decoded tokens (masked ones dropped), the decoder with
cross-attention to the aligned text (and to the empty prompt for CFG), and samples the revealed tokens with the
diffusion head (models/diffusion_head.sample: respaced DDPM, temperature on the injected noise, eps = uncond + w
(cond - uncond) with w ramped linearly to `cfg`). Only the tokens revealed at a step are denoised: their count
depends on the step alone, so a static head capacity per step (the most any step so far reveals) keeps shapes fixed.
The decoded count before a step is also known statically (L - mask_len), so, as in MAR, the encoder runs on the
decoded tokens only, gathered into a capacity bucket (a multiple of L / `encoder_buckets`; models/mae.py Encoder, as
in training). The steps are cut into segments of equal capacities, each a fori_loop. Early steps, SAD's candidate
phase above all, then cost a fraction of a full step.

SAD: K candidates per prompt share the order and differ only in diffusion noise; after T_c steps DREAM's own
encoder embeds each candidate's decoded tokens, the CLIP text tower embeds the prompt, and the best cosine
candidate continues alone. Candidates are a batch axis. Everything is one jit per (shapes, options).

Common random numbers: at every step, candidate j's diffusion noise is drawn from fold_in(key, j) of that step's
keys (`candidate_normal`), so it does not depend on how many candidates run beside it, and the chosen candidate
continues with candidate 0's noise.
Candidate 0 is thus plain decoding under the same seed, and SAD's sample is plain decoding's wherever candidate 0
wins: comparing the two modes measures the selection alone, not two independent draws (each candidate is still
an independent sample).

Dimension letters: B prompts, K candidates, N = B K, L tokens, T token dim, D width, C capacity, S steps,
Lt text length, E embedding dim.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dream_jax import frozen as frozen_lib
from dream_jax import tokens as tokens_lib
from dream_jax.models import contrastive, diffusion_head
from dream_jax.models.dream import DREAM


@dataclasses.dataclass(frozen=True)
class Options:
    """Sampling settings (hashable: part of the compilation key)."""

    num_iter: int = 64
    cfg: float = 3.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0
    sampling_steps: int = 100
    num_candidates: int = 1
    sad_step: int = 0  # T_c; 0 = plain decoding
    encoder_buckets: int = 4  # encoder capacity step L / encoder_buckets; 1 = every step on all L positions

    def validate(self, length):
        if not 1 <= self.num_iter <= length:
            raise ValueError(f"num_iter={self.num_iter} must be in [1, {length}]")
        if self.cfg_schedule not in ("linear", "constant"):
            raise ValueError(f"cfg_schedule={self.cfg_schedule!r}; expected 'linear' or 'constant'")
        if not 1 <= self.encoder_buckets <= length:
            raise ValueError(f"encoder_buckets={self.encoder_buckets} must be in [1, {length}]")
        if self.num_candidates < 1:
            raise ValueError(f"num_candidates={self.num_candidates} must be >= 1")
        if self.cfg < 0 or self.temperature < 0:
            raise ValueError(f"cfg={self.cfg} and temperature={self.temperature} must be >= 0 (cfg 1 = no guidance, "
                             "temperature 0 = no injected noise)")
        if not 0 <= self.sad_step < self.num_iter or (self.num_candidates > 1 and self.sad_step == 0):
            raise ValueError(f"sad_step={self.sad_step} must be in [1, num_iter={self.num_iter}) for SAD "
                             f"(0 = plain decoding, only with num_candidates=1)")


def options_from_config(config, **overrides):
    """The config's sampling settings, with keyword overrides (e.g. num_candidates=1, sad_step=0 for plain)."""
    s = config.sampling
    opts = Options(num_iter=s.num_iter, cfg=s.cfg, cfg_schedule=s.cfg_schedule, temperature=s.temperature,
                   sampling_steps=config.diffusion.sampling_steps, num_candidates=s.num_candidates,
                   sad_step=s.sad_step, encoder_buckets=s.encoder_buckets)
    return dataclasses.replace(opts, **overrides)


def mask_schedule(length, num_iter):
    """int [S + 1]: tokens still masked before each step (entry 0 = L) and after the last (0)."""
    lens = [length]
    for s in range(num_iter - 1):
        target = math.floor(length * math.cos(math.pi / 2 * (s + 1) / num_iter))
        lens.append(max(1, min(lens[-1] - 1, target)))
    lens.append(0)
    return np.array(lens, np.int32)


def decoded_fraction(length, num_iter, step):
    """Fraction of tokens decoded after `step` steps (e.g. SAD's T_c)."""
    return 1.0 - mask_schedule(length, num_iter)[step] / length


def random_orders(rng, batch, length):
    """A random permutation of the positions per image: int [B, L]."""
    return jnp.argsort(jax.random.uniform(rng, (batch, length)), axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every decoding step needs besides the carried tokens and mask."""

    variables: dict
    text: jax.Array        # [N, Lt, D] aligned prompt
    empty_text: jax.Array  # [N, Lt, D] aligned empty prompt
    orders: jax.Array      # [N, L + C], padded with L (an out-of-range position: writes are dropped)
    x0_constraint: object  # the head sampler's denoised_fn (tokens.x0_constraint), or None
    candidates: int        # K: candidates per prompt, the rows of a prompt being consecutive


def candidate_normal(candidates, prompts, key, shape, dtype=jnp.float32):
    """Standard normal noise of `shape` [N C, T] for rows ordered (prompt, candidate, slot), N = prompts x
    candidates: candidate j's rows come from fold_in(key, j) alone (common random numbers, see the docstring)."""
    per_candidate = (prompts, shape[0] // (prompts * candidates)) + tuple(shape[1:])
    draws = jnp.stack([jax.random.normal(jax.random.fold_in(key, j), per_candidate, dtype)
                       for j in range(candidates)], axis=1)  # [B, K, C, T]
    return draws.reshape(shape)


def capacity(length, num_iter):
    """The most tokens any step reveals (the padding of the orders)."""
    return int(np.max(-np.diff(mask_schedule(length, num_iter))))


def head_capacities(length, num_iter):
    """int [S]: the diffusion head's slots at each step, the most tokens any step up to s reveals.

    The cosine schedule reveals few tokens early and more later (DREAM's 64 steps over 256 tokens: 1 at first, up
    to 7), so padding every step to the largest count would spend 43% of the head's work on empty slots. A
    running maximum is exact where the count rises and changes only a few times (segments stay few); it is a
    function of the step alone, so plain decoding and SAD (whose loops split at T_c) draw the same noise.
    """
    return np.maximum.accumulate(-np.diff(mask_schedule(length, num_iter)))


def encoder_capacities(length, num_iter, buckets):
    """int [S + 1]: the encoder's slots before each step (and after the last, for SAD's scoring at T_c).

    Before step s, L - mask_len[s] tokens are decoded; the capacity is that count rounded up to a multiple of
    ceil(L / buckets) (at least one multiple), or L (all positions, key-masked) once it reaches L.
    """
    width = -(-length // buckets)
    decoded = length - mask_schedule(length, num_iter)
    return np.array([min(length, max(1, -(-int(d) // width)) * width) for d in decoded])


def segments(length, num_iter, first, last, buckets):
    """[(start, stop, encoder capacity, head capacity)]: steps [first, last) cut where either capacity changes
    (each segment is one compiled loop)."""
    caps = list(zip(encoder_capacities(length, num_iter, buckets).tolist(),
                    head_capacities(length, num_iter).tolist()))
    out = []
    for s in range(first, last):
        if out and out[-1][2:] == caps[s]:
            out[-1] = (out[-1][0], s + 1) + caps[s]
        else:
            out.append((s, s + 1) + caps[s])
    return out


def _encoder_with_capacity(model_config, capacity):
    """DREAM whose encoder runs one class of `capacity` slots (all positions when capacity >= L)."""
    return DREAM(model_config, capacity=() if capacity >= model_config.seq_len else (capacity,))


def _step(config, opts, ctx, rng, s, tokens, mask, capacity, encoder_capacity):
    """Decoding step s: reveals order[lens[s+1] : lens[s]] of every sequence. Returns (tokens, mask).

    `capacity`: head slots (>= the tokens revealed), `encoder_capacity`: slots for the decoded tokens (>= L -
    lens[s]); see `segments`."""
    model = DREAM(config.model)
    length = tokens.shape[1]
    lens = jnp.asarray(mask_schedule(length, opts.num_iter))
    encoder = _encoder_with_capacity(config.model, encoder_capacity)
    x, _ = encoder.apply(ctx.variables, tokens, mask, method=DREAM.encode)
    z = model.apply(ctx.variables, x, mask, ctx.text, method=DREAM.decode)
    positions = jax.lax.dynamic_slice_in_dim(ctx.orders, lens[s + 1], capacity, axis=1)  # [N, C]
    valid = jnp.arange(capacity)[None] < (lens[s] - lens[s + 1])
    gather = lambda a: jnp.take_along_axis(a, positions[..., None], axis=1, mode="clip")  # noqa: E731
    zc, zu, scale = gather(z).reshape(-1, z.shape[-1]), None, 1.0
    if opts.cfg != 1.0:
        zu = gather(model.apply(ctx.variables, x, mask, ctx.empty_text, method=DREAM.decode)).reshape(zc.shape)
        ramp = (length - lens[s + 1]) / length if opts.cfg_schedule == "linear" else 1.0
        scale = 1.0 + (opts.cfg - 1.0) * ramp

    def denoise(x_t, t, z):
        return model.apply(ctx.variables, x_t, t, z, method=DREAM.denoise)

    noise_rng, loop_rng = jax.random.split(rng)
    draw = functools.partial(candidate_normal, ctx.candidates, tokens.shape[0] // ctx.candidates)
    start = draw(noise_rng, zc.shape[:1] + tokens.shape[-1:])
    sampled = diffusion_head.sample(denoise, zc, start, loop_rng, config.diffusion.num_steps, opts.sampling_steps,
                                    zu, scale, opts.temperature, denoised_fn=ctx.x0_constraint, draw=draw)
    sampled = sampled.reshape(positions.shape + tokens.shape[-1:])
    rows = jnp.arange(tokens.shape[0])[:, None]
    write = jnp.where(valid, positions, length)
    tokens = tokens.at[rows, write].set(sampled, mode="drop")
    mask = mask.at[rows, write].set(False, mode="drop")
    return tokens, mask


def _run_steps(config, opts, ctx, rng, first, last, tokens, mask):
    """Steps [first, last), one fori_loop per segment; step s draws from fold_in(rng, s)."""
    for start, stop, enc_cap, head_cap in segments(tokens.shape[1], opts.num_iter, first, last,
                                                   opts.encoder_buckets):
        body = functools.partial(_segment_body, config, opts, ctx, rng, head_cap, enc_cap)
        tokens, mask = jax.lax.fori_loop(start, stop, body, (tokens, mask))
    return tokens, mask


def _segment_body(config, opts, ctx, rng, head_cap, enc_cap, s, carry):
    return _step(config, opts, ctx, jax.random.fold_in(rng, s), s, *carry, head_cap, enc_cap)


def _repeat(a, k):
    return jnp.repeat(a, k, axis=0)


def sad_scores(config, variables, tokens, mask, text_emb, encoder_capacity=None):
    """Cosine of DREAM's own embedding of the decoded tokens (masked dropped) with the prompt's: [N].

    `encoder_capacity`: slots holding every sequence's decoded tokens (None = all positions)."""
    model = DREAM(config.model)
    encoder = model if encoder_capacity is None else _encoder_with_capacity(config.model, encoder_capacity)
    x, keep = encoder.apply(variables, tokens, mask, method=DREAM.encode)
    img = model.apply(variables, x, keep, method=DREAM.image_embedding)
    return jnp.sum(contrastive.l2_normalize(img) * contrastive.l2_normalize(text_emb), axis=-1)


@functools.partial(jax.jit, static_argnames=("config", "opts"))
def generate(config, opts, variables, frozen, clip_ids, cond_ids, cond_mask, rng):
    """Token sequences [B, L, T] for B prompts, plus SAD scores [B, K] and the chosen candidate [B].

    `config` is a FrozenConfigDict, `variables` = {'params', 'batch_stats'} (EMA params by default).
    """
    model = DREAM(config.model)
    m = config.model
    batch, k = clip_ids.shape[0], opts.num_candidates
    length = m.seq_len
    pad = capacity(length, opts.num_iter)
    cond = frozen_lib.cond_features(config, frozen, cond_ids, cond_mask)
    text = model.apply(variables, cond, method=DREAM.align_text)
    empty = model.apply(variables, frozen.empty_cond[None], method=DREAM.align_text)
    order_rng, steps_rng = jax.random.split(rng)
    orders = random_orders(order_rng, batch, length)
    orders = jnp.concatenate([orders, jnp.full((batch, pad), length, jnp.int32)], axis=1)

    x0_constraint = tokens_lib.x0_constraint(config, frozen)

    def context(n):
        return _Context(variables, _repeat(text, n), jnp.broadcast_to(empty, (batch * n,) + empty.shape[1:]),
                        _repeat(orders, n), x0_constraint, n)

    tokens = jnp.zeros((batch * k, length, m.token_dim), jnp.float32)
    mask = jnp.ones((batch * k, length), bool)
    if opts.sad_step == 0:
        tokens, mask = _run_steps(config, opts, context(1), steps_rng, 0, opts.num_iter, tokens, mask)
        return tokens, jnp.zeros((batch, 1)), jnp.zeros((batch,), jnp.int32)
    tokens, mask = _run_steps(config, opts, context(k), steps_rng, 0, opts.sad_step, tokens, mask)
    text_emb = _repeat(model.apply(variables, clip_ids, method=DREAM.text_embedding), k)
    scoring_capacity = int(encoder_capacities(length, opts.num_iter, opts.encoder_buckets)[opts.sad_step])
    scores = sad_scores(config, variables, tokens, mask, text_emb, scoring_capacity).reshape(batch, k)
    best = jnp.argmax(scores, axis=1)
    pick = lambda a: a.reshape((batch, k) + a.shape[1:])[jnp.arange(batch), best]  # noqa: E731
    tokens, mask = _run_steps(config, opts, context(1), steps_rng, opts.sad_step, opts.num_iter, pick(tokens),
                              pick(mask))
    return tokens, scores, best.astype(jnp.int32)


# The decoding modes of the generation evaluators. "rerank": best-of-K reranking of finished plain samples by the
# score SAD uses (K = sampling.num_candidates).
MODES = ("sad", "plain", "rerank")


def mode_options(config, mode):
    """Sampling options of a decoding mode: 'sad' (the config's candidates and T_c), 'plain' or 'rerank' (one
    candidate; rerank draws sampling.num_candidates of them per sample)."""
    if mode in ("sad", "rerank") and config.sampling.num_candidates < 2:
        raise ValueError(f"alignment mode {mode!r} needs sampling.num_candidates >= 2, got "
                         f"{config.sampling.num_candidates}")
    if mode == "sad":
        opts = options_from_config(config)
    elif mode in ("plain", "rerank"):
        opts = options_from_config(config, num_candidates=1, sad_step=0)
    else:
        raise ValueError(f"alignment mode {mode!r}; expected one of {MODES}")
    opts.validate(config.model.seq_len)
    return opts


# What the jitted model functions read of a config: the models, the tokenizer, the text encoders and the diffusion
# head. A job's other settings (evaluators, schedule, paths) do not change the program.
MODEL_PARTS = ("model", "tokenizer", "text", "diffusion")


def freeze(config):
    """A hashable config of MODEL_PARTS for the static argument of `generate` and the evaluators' model functions,
    so that jobs whose configs differ elsewhere share their compiled programs (the end-of-training report's grid and
    its alignment samples, whose config has only the final evaluators). Built from plain dicts: ConfigDict equality
    also compares lock states, which differ between a command line's locked config and an unlocked copy of it."""
    return ml_collections.FrozenConfigDict({name: config[name].to_dict() for name in MODEL_PARTS})
