"""Generation and Semantically Aligned Decoding: schedule, determinism, CFG, SAD selection, compilation, FLOPs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dream_tiny
from dream_jax import flops, runtime, sharding, state
from dream_jax import frozen as frozen_lib
from dream_jax import tokens as tokens_lib
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.generation import generate, sampler


def small_config():
    c = dream_tiny.get_config()
    c.model.update(dict(encoder_depth=1, decoder_depth=1, width=32, num_heads=2, mlp_dim=64, aligner_depth=1,
                        diffloss_width=32, diffloss_depth=1, embed_dim=16, proj_hidden_dim=32))
    c.model.text_tower.update(dict(width=32, depth=1, num_heads=2))
    c.text.tiny_t5.update(dict(num_layers=1))
    c.model.cond_dim = c.text.tiny_t5.d_model
    # 64 tokens (4x4 patches on a 16-dim PCA): enough steps to schedule, and the prompt's text parts, which
    # test_generation_flops_match_the_traced_matmuls does not count, stay a few percent of the matmuls.
    c.tokenizer.update(dict(patch_size=4, pca_dim=16, pca_examples=256))
    c.model.update(dict(seq_len=64, token_dim=16))
    c.diffusion.sampling_steps = 4
    c.mesh.shape = (1, 1, 1)
    return c


@pytest.fixture(scope="module")
def setup():
    config = small_config()
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    st = state.create_state(config, mesh)
    # Perturb the zero-initialised diffusion head so that its prediction depends on z (and thus on the text).
    params = dict(st.params)
    params["diffloss_net"] = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(p.size), p.shape),
                                          st.params["diffloss_net"])
    tokenizers = tokenizers_lib.make_tokenizers(config)
    frozen = frozen_lib.load(config, tokenizers)
    prompts = ["a red circle", "a large blue square in the center", "a small green cross"]
    clip_ids = jnp.asarray(tokenizers.clip_ids(prompts))
    cond_ids, cond_mask = map(jnp.asarray, tokenizers.cond_ids(prompts))
    variables = {"params": params, "batch_stats": st.batch_stats}
    return config, generate.freeze(config), variables, frozen, (clip_ids, cond_ids, cond_mask)


OPTS = generate.Options(num_iter=6, cfg=2.0, temperature=1.0, sampling_steps=4)


def run(setup, opts, seed=0, frozen=None):
    _, fc, variables, frozen0, text = setup
    return generate.generate(fc, opts, variables, frozen0 if frozen is None else frozen, *text, jax.random.key(seed))


@pytest.mark.parametrize("length,num_iter", [(64, 16), (256, 64), (256, 1), (16, 16), (7, 3), (100, 37)])
def test_schedule_reveals_every_token_once(length, num_iter):
    lens = generate.mask_schedule(length, num_iter)
    assert lens[0] == length and lens[-1] == 0 and len(lens) == num_iter + 1
    assert np.all(np.diff(lens) < 0), "every step must reveal at least one token"
    order = np.random.default_rng(0).permutation(length)
    revealed = np.concatenate([order[lens[s + 1]:lens[s]] for s in range(num_iter)])
    assert sorted(revealed.tolist()) == list(range(length))


def test_schedule_matches_the_cosine_formula():
    lens = generate.mask_schedule(256, 64)
    for s in (0, 10, 31, 62):
        assert lens[s + 1] == max(1, min(lens[s] - 1, int(np.floor(256 * np.cos(np.pi / 2 * (s + 1) / 64)))))
    assert generate.decoded_fraction(256, 64, 21) == pytest.approx(1 - 222 / 256)


@pytest.mark.parametrize("length,num_iter,buckets", [(64, 16, 4), (256, 64, 4), (256, 64, 8), (64, 64, 1), (7, 3, 2),
                                                     (100, 37, 3), (64, 16, 64)])
def test_segments_cover_the_steps_and_hold_the_step_tokens(length, num_iter, buckets):
    lens = generate.mask_schedule(length, num_iter)
    decoded, revealed = length - lens[:-1], lens[:-1] - lens[1:]
    width = -(-length // buckets)
    for first, last in [(0, num_iter), (0, num_iter // 2), (num_iter // 2, num_iter)]:
        segments = generate.segments(length, num_iter, first, last, buckets)
        steps = [s for start, stop, _, _ in segments for s in range(start, stop)]
        assert steps == list(range(first, last))
        for start, stop, enc_cap, head_cap in segments:
            need = decoded[start:stop].max()
            assert enc_cap == length or enc_cap % width == 0
            # The smallest bucket that holds every step's decoded tokens: the next smaller would drop some.
            assert need <= enc_cap and (enc_cap == width or need > (enc_cap - 1) // width * width)
            # The head holds every token the segment's steps reveal, and no more than the most revealed so far.
            assert revealed[start:stop].max() <= head_cap == revealed[:stop].max()
        caps = [cap[2:] for cap in segments]
        assert caps == sorted(caps) and len(set(caps)) == len(caps)
    # The head's padding is small: DREAM's 64 steps over 256 tokens fill 94% of the slots (one capacity: 57%).
    if (length, num_iter) == (256, 64):
        slots = sum((stop - start) * head for start, stop, _, head in generate.segments(length, num_iter, 0,
                                                                                         num_iter, buckets))
        assert slots < 1.07 * length


def test_encoder_on_decoded_tokens_equals_all_positions(setup, monkeypatch):
    """Gathering the decoded tokens into a capacity bucket (the default) decodes what the key-masked encoder over
    all L positions does; a capacity too small for the decoded tokens (the control) does not."""
    # 4 steps: the encoder's slots before them 16 / 16 / 32 / 48 of 64 and 32 for SAD's scoring at T_c=2 (19 tokens
    # decoded), in 4 compiled loops (16 steps would compile 7-8 for the same coverage).
    opts = dataclasses.replace(OPTS, num_iter=4, num_candidates=2, sad_step=2)
    full, full_scores, _ = run(setup, dataclasses.replace(opts, encoder_buckets=1))
    out, scores, _ = run(setup, dataclasses.replace(opts, encoder_buckets=4))
    # Whitened PCA tokens reach |x| ~ 6, and the x0 constraint's pixel clip turns float rounding near its bounds
    # into ~1e-4 differences. The scores differ by float32 rounding of another summation order: up to 1.9e-6 on an
    # AMD EPYC host (below 1e-6 on an Intel one), against > 1e-4 for the control below.
    np.testing.assert_allclose(np.asarray(out), np.asarray(full), atol=1e-3)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(full_scores), atol=1e-5)
    # Control: 4 slots before every step and for SAD's scoring (5 to 40 tokens are decoded).
    capacities = generate.encoder_capacities
    monkeypatch.setattr(generate, "encoder_capacities", lambda *a: np.full_like(capacities(*a), 4))
    small, small_scores, _ = run(setup, dataclasses.replace(opts, encoder_buckets=16))
    assert np.abs(np.asarray(small) - np.asarray(full)).max() > 1e-1
    assert np.abs(np.asarray(small_scores) - np.asarray(full_scores)).max() > 1e-4


def test_decoding_fills_all_tokens_and_is_deterministic(setup):
    a, _, _ = run(setup, OPTS, seed=1)
    b, _, _ = run(setup, OPTS, seed=1)
    c, _, _ = run(setup, OPTS, seed=2)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.all(np.any(np.asarray(a) != 0, axis=-1)), "some token was never written"
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_sad_with_one_candidate_is_plain_decoding(setup):
    plain, _, _ = run(setup, OPTS)
    sad, scores, best = run(setup, dataclasses.replace(OPTS, num_candidates=1, sad_step=3))
    np.testing.assert_allclose(np.asarray(sad), np.asarray(plain), atol=1e-6)
    assert scores.shape == (3, 1) and np.all(np.asarray(best) == 0)


def test_sad_keeps_plain_decoding_where_candidate_zero_wins(setup):
    """Common random numbers: candidate 0 draws plain decoding's noise, and the winner continues with it."""
    opts = dataclasses.replace(OPTS, num_candidates=4, sad_step=3)
    kept = switched = 0
    for seed in range(4):
        plain, _, _ = run(setup, OPTS, seed=seed)
        sad, _, best = run(setup, opts, seed=seed)
        for i, b in enumerate(np.asarray(best)):
            # Kept: float noise of a 4x larger batch, amplified by the chain (<= 1e-4 of tokens ~10); switched: ~10.
            same = np.allclose(np.asarray(sad)[i], np.asarray(plain)[i], rtol=0, atol=1e-3)
            assert same == (b == 0), (seed, i, b)
            kept, switched = kept + (b == 0), switched + (b != 0)
    assert kept and switched, (kept, switched)


def test_candidate_noise_does_not_depend_on_the_candidate_count():
    key = jax.random.key(0)
    two = generate.candidate_normal(2, 3, key, (3 * 2 * 5, 4)).reshape(3, 2, 5, 4)
    four = generate.candidate_normal(4, 3, key, (3 * 4 * 5, 4)).reshape(3, 4, 5, 4)
    one = generate.candidate_normal(1, 3, key, (3 * 5, 4)).reshape(3, 1, 5, 4)
    np.testing.assert_array_equal(np.asarray(four[:, :2]), np.asarray(two))
    np.testing.assert_array_equal(np.asarray(one[:, 0]), np.asarray(two[:, 0]))
    many = generate.candidate_normal(4, 8, key, (8 * 4 * 64, 16))  # 32768 draws: std within 0.02 of 1
    assert abs(float(jnp.std(many)) - 1.0) < 0.02 and abs(float(jnp.mean(many))) < 0.02
    assert not np.allclose(np.asarray(four[:, 0]), np.asarray(four[:, 1]))


def test_cfg_one_is_the_conditional_branch(setup):
    """With cfg=1 the unconditional branch is skipped; guiding towards a copy of the prompt gives the same (at OPTS'
    scale, whose program the other tests compile)."""
    config, _, variables, frozen, (clip_ids, cond_ids, cond_mask) = setup
    one = dataclasses.replace(OPTS, cfg=1.0)
    base, _, _ = run(setup, one)
    # Make the unconditional prompt equal to prompt 0: then any guidance scale returns prompt 0's branch.
    same = frozen.replace(empty_cond=frozen_lib.cond_features(config, frozen, cond_ids[:1], cond_mask[:1])[0])
    guided, _, _ = run(setup, OPTS, frozen=same)
    np.testing.assert_allclose(np.asarray(guided)[0], np.asarray(base)[0], rtol=1e-3, atol=1e-3)
    assert not np.allclose(np.asarray(guided)[1], np.asarray(base)[1], rtol=1e-2, atol=1e-2)


def test_sad_choice_is_the_argmax_of_a_per_candidate_reference(setup):
    config, fc, variables, frozen, (clip_ids, cond_ids, cond_mask) = setup
    k, tc = 4, 3
    opts = dataclasses.replace(OPTS, num_candidates=k, sad_step=tc)
    _, scores, best = run(setup, opts, seed=5)
    # Reference: replay phase 1 with the sampler's own steps, then score every candidate alone (batch of 1); each
    # part under one jit, as the sampler's, instead of op by op.
    from dream_jax.models.dream import DREAM

    model = DREAM(config.model)
    b, length = clip_ids.shape[0], config.model.seq_len

    @jax.jit
    def phase_one(variables, frozen, cond_ids, cond_mask):
        order_rng, steps_rng = jax.random.split(jax.random.key(5))
        cap = generate.capacity(length, opts.num_iter)
        orders = generate.random_orders(order_rng, b, length)
        orders = jnp.concatenate([orders, jnp.full((b, cap), length, jnp.int32)], axis=1)
        text = model.apply(variables, frozen_lib.cond_features(fc, frozen, cond_ids, cond_mask),
                           method=DREAM.align_text)
        empty = model.apply(variables, frozen.empty_cond[None], method=DREAM.align_text)
        ctx = generate._Context(variables, jnp.repeat(text, k, 0), jnp.broadcast_to(empty, (b * k,) + empty.shape[1:]),
                                jnp.repeat(orders, k, 0), tokens_lib.x0_constraint(fc, frozen), k)
        tokens = jnp.zeros((b * k, length, config.model.token_dim))
        mask = jnp.ones((b * k, length), bool)
        return generate._run_steps(fc, opts, ctx, steps_rng, 0, tc, tokens, mask)

    tokens, mask = phase_one(variables, frozen, cond_ids, cond_mask)
    text_emb = model.apply(variables, clip_ids, method=DREAM.text_embedding)
    score_one = jax.jit(functools.partial(generate.sad_scores, fc))
    ref = np.zeros((b, k))
    for i in range(b):
        for j in range(k):
            n = i * k + j
            ref[i, j] = score_one(variables, tokens[n:n + 1], mask[n:n + 1], text_emb[i:i + 1])[0]
    np.testing.assert_allclose(np.asarray(scores), ref, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(best), ref.argmax(1))
    assert len(set(np.round(ref.ravel(), 6))) > b, "candidates should differ"
    # Candidates that share the order must have the same mask at T_c.
    m = np.asarray(mask).reshape(b, k, -1)
    assert np.all(m == m[:, :1])


def _runtime_in_chunks_of_4(setup):
    """(runtime on one device sampling in chunks of 4 rows, variables) of the module's model."""
    config, _, variables, frozen, _ = setup
    config = config.copy_and_resolve_references()
    config.sampling.batch_size = 4
    return runtime.Runtime(config, sharding.make_mesh(config, jax.devices()[:1]),
                           tokenizers_lib.make_tokenizers(config), frozen), variables


def test_sampler_compiles_once_per_job(setup):
    """sampler.sample_images over chunks of 4, 4 and 2 rows: the short last chunk is padded and runs the program
    compiled for the first (options of this test alone, so the first chunk compiles)."""
    rt, variables = _runtime_in_chunks_of_4(setup)
    opts = dataclasses.replace(OPTS, num_iter=4, temperature=0.9)
    prompts = ["a red circle", "a blue square", "a green cross", "a small red triangle", "a large blue circle"]
    before = generate.generate._cache_size()
    images, scores, _ = sampler.sample_images(rt, variables, prompts, 2, 0, opts, log=lambda _: None)
    assert generate.generate._cache_size() == before + 1
    assert images.shape[:2] == (5, 2) and scores.shape == (5, 2, 1)
    assert len({im.tobytes() for im in images.reshape((-1,) + images.shape[2:])}) == 10


def test_padded_job_has_the_same_samples_and_the_long_jobs_program(setup):
    """pad=True (the report's grid): a job of one short chunk runs on sampling.batch_size rows, the program a longer
    job compiled, and every row's samples are those of the unpadded job."""
    rt, variables = _runtime_in_chunks_of_4(setup)
    opts = dataclasses.replace(OPTS, num_iter=4, temperature=0.8)
    quiet = lambda _: None  # noqa: E731
    long_job = sampler.sample_images(rt, variables, ["a red circle"] * 5, 1, 0, opts, log=quiet)
    before = generate.generate._cache_size()
    padded = sampler.sample_images(rt, variables, ["a blue square", "a green cross"], 1, 0, opts, log=quiet, pad=True)
    assert generate.generate._cache_size() == before
    plain = sampler.sample_images(rt, variables, ["a blue square", "a green cross"], 1, 0, opts, log=quiet)
    assert generate.generate._cache_size() == before + 1
    assert long_job[0].shape[:2] == (5, 1) and padded[0].shape[:2] == (2, 1)
    for a, b in zip(padded, plain):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_configs_differing_outside_the_model_parts_share_programs():
    """The end-of-training report samples its grid with the train config and its alignment with final_config's:
    generate's static config is the same for both, so the second job reuses the first's compiled program."""
    from dream_jax.evaluation import report

    config = small_config()
    config.final_evals = ("alignment",)
    config.lock()  # as the command line's config is; final_config's copy is not
    final = report.final_config(config)
    assert final.evals.to_dict() != config.evals.to_dict()
    assert generate.freeze(final) == generate.freeze(config)
    assert hash(generate.freeze(final)) == hash(generate.freeze(config))
    config.diffusion.sampling_steps += 1
    assert generate.freeze(final) != generate.freeze(config)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="sad_step"):
        generate.Options(num_iter=8, num_candidates=3, sad_step=0).validate(64)
    with pytest.raises(ValueError, match="num_iter"):
        generate.Options(num_iter=65).validate(64)
    with pytest.raises(ValueError, match="cfg_schedule"):
        generate.Options(cfg_schedule="cosine").validate(64)
    with pytest.raises(ValueError, match="encoder_buckets"):
        generate.Options(encoder_buckets=0).validate(64)
    with pytest.raises(ValueError, match=r"cfg=-1\.0 and temperature=1\.0 must be >= 0"):
        generate.Options(cfg=-1.0).validate(64)
    with pytest.raises(ValueError, match=r"temperature=-0\.5 must be >= 0"):
        generate.Options(temperature=-0.5).validate(64)
    generate.Options(cfg=0.0, temperature=0.0).validate(64)  # the bounds themselves are valid


def _matmul_flops(jaxpr, times=1):
    """2 x multiply-adds of every dot_general in a jaxpr, a scan's body counted `length` times (generate's loops
    have static bounds, so they trace to scans; a while loop would have an unknown count)."""
    total = 0
    for eqn in jaxpr.eqns:
        assert eqn.primitive.name != "while", "a loop of unknown trip count"
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += times * 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[i] for i in contract])
        inner = times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    total += _matmul_flops(sub, inner)
    return int(total)


@pytest.mark.parametrize("candidates,sad_step,buckets", [(1, 0, 4), (4, 5, 4), (4, 5, 1), (3, 12, 16)])
def test_generation_flops_match_the_traced_matmuls(setup, candidates, sad_step, buckets):
    """flops.generation_flops (benchmarks/sampling.py's FLOP ratios) against the matmuls generate really runs.

    The traced count also holds the prompt's text parts (T5, aligner, CLIP tower: once per prompt, not counted)
    and z_proj on masked tokens, a few percent here."""
    config, fc, variables, frozen, text = setup
    opts = dataclasses.replace(OPTS, num_iter=16, num_candidates=candidates, sad_step=sad_step,
                               encoder_buckets=buckets)
    jaxpr = jax.make_jaxpr(functools.partial(generate.generate, fc, opts))(variables, frozen, *text,
                                                                            jax.random.key(0))
    traced = _matmul_flops(jaxpr.jaxpr)
    analytic = len(text[0]) * sum(flops.generation_flops(config, opts).values())
    assert analytic < traced < 1.05 * analytic, traced / analytic
