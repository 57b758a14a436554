"""DREAM's losses against independent float64 numpy references.

- Filtered InfoNCE: value, accuracy and gradients (both embeddings and logit_scale) on batches sharded over 8
  devices under jit, some with several samples filtered, == a numpy float64 reference of the authors' filter
  with hand-derived gradients (itself checked by finite differences). A sample with < 25% visible tokens loses
  its i2t query, its t2i query and its image as a negative; its text stays an i2t negative, so the loss is not
  the CLIP loss of the valid sub-batch.
- Diffusion constants (cosine betas, alphas_cumprod, posterior variance / mean coefficients, the 100-of-1000
  respacing) == the IDDPM formulas re-written here in float64 numpy.
- The diffusion loss counts only masked tokens and zeroes groups whose mask ratio is < 0.5.

Dimension letters: B batch, E embedding dim, G groups, L tokens, T token dim, D cond width, S diffusion steps.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dream_jax.models import contrastive, diffusion_head
from dream_jax.models import gaussian_diffusion as gd

# ------------------------------------------------------------------------------------------- contrastive


def _np_normalize(x):
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / n, n


def _np_logsumexp(z, axis):
    m = z.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _np_softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_clip_loss(img, txt, log_scale, valid):
    """float64 reference of the authors' filter; returns loss, accuracy, d/dimg, d/dtxt, d/dlog_scale.

    Written with index sets instead of -1e9 masks: the i2t queries are the valid images against all B texts,
    the t2i queries the valid texts against the valid images; each cross entropy is a mean over the n valid.
    """
    img, txt, valid = np.float64(img), np.float64(txt), np.asarray(valid, bool)
    idx = np.flatnonzero(valid)
    n = len(idx)
    a, na = _np_normalize(img)
    b, nb = _np_normalize(txt)
    s = math.exp(log_scale)
    z = s * a @ b.T  # [B_img, B_txt]
    i2t, t2i = z[idx], z[np.ix_(idx, idx)]  # [n, B], [n_img, n_txt]
    pos = z[idx, idx]
    loss = ((_np_logsumexp(i2t, 1) - pos).sum() + (_np_logsumexp(t2i, 0) - pos).sum()) / (2 * n)
    acc = np.mean(np.argmax(i2t, axis=1) == idx)
    # dL/dz of the mean of the two cross entropies: softmax minus one-hot in each direction, on its own entries.
    g = np.zeros_like(z)
    g[idx] += _np_softmax(i2t, 1)
    g[np.ix_(idx, idx)] += _np_softmax(t2i, 0)
    g[idx, idx] -= 2.0
    g /= 2 * n
    ga, gb = s * g @ b, s * g.T @ a
    g_scale = np.sum(g * z)
    # Through x / |x|: (g - u (u . g)) / |x|.
    g_img = (ga - a * np.sum(a * ga, -1, keepdims=True)) / na
    g_txt = (gb - b * np.sum(b * gb, -1, keepdims=True)) / nb
    return loss, acc, g_img, g_txt, g_scale


def np_sub_batch_clip_loss(img, txt, log_scale, valid):
    """The standard CLIP loss of the valid sub-batch (dream_jax's former, symmetric reading of the filter)."""
    keep = np.asarray(valid, bool)
    return np_clip_loss(np.float64(img)[keep], np.float64(txt)[keep], log_scale, np.ones(keep.sum(), bool))[0]


def _batch(seed, batch=16, dim=8):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((batch, dim)).astype(np.float32)
    # Correlated text so that the accuracy is neither 0 nor 1.
    txt = (img + 1.2 * rng.standard_normal((batch, dim))).astype(np.float32)
    return img, txt


def _valid_from_masked_counts(counts, length=256):
    # The authors' filter: a sample is kept when (1 - masked / L) >= 0.25.
    return (1.0 - np.asarray(counts) / length) >= 0.25


def test_reference_gradients_by_finite_differences():
    # The hand-written reference gradients are themselves checked, so they cannot share a mistake with JAX.
    img, txt = _batch(0, batch=6, dim=5)
    valid = np.array([True, False, True, True, False, True])
    img, txt = np.float64(img), np.float64(txt)
    _, _, g_img, g_txt, g_scale = np_clip_loss(img, txt, 1.3, valid)
    h = 1e-6
    # Rows 1 and 4 are filtered: their images get no gradient, their texts (i2t negatives) do.
    assert np.all(g_img[~valid] == 0) and np.all(np.abs(g_txt[~valid]).sum(-1) > 1e-3)
    for arr, grad in ((img, g_img), (txt, g_txt)):
        for i, j in [(0, 0), (1, 2), (3, 4), (4, 3), (5, 1)]:
            plus, minus = arr.copy(), arr.copy()
            plus[i, j] += h
            minus[i, j] -= h
            args_p = (plus, txt) if arr is img else (img, plus)
            args_m = (minus, txt) if arr is img else (img, minus)
            fd = (np_clip_loss(*args_p, 1.3, valid)[0] - np_clip_loss(*args_m, 1.3, valid)[0]) / (2 * h)
            assert abs(fd - grad[i, j]) < 1e-7
    fd = (np_clip_loss(img, txt, 1.3 + h, valid)[0] - np_clip_loss(img, txt, 1.3 - h, valid)[0]) / (2 * h)
    assert abs(fd - g_scale) < 1e-7


def _mesh8():
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 host devices"
    return Mesh(np.asarray(jax.devices()[:8]), ("data",))


@jax.jit
def _clip_value_and_grad(img, txt, log_scale, valid):
    def f(i, t, s):
        return contrastive.loss(i, t, s, valid)

    return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(img, txt, log_scale)


@pytest.mark.parametrize("counts", [
    # masked tokens per sample (of 256): 192 is exactly 25% visible (kept), 193 is just below (dropped).
    [0, 192, 193, 255, 256, 10, 100, 200, 64, 128, 191, 194, 0, 32, 250, 150],
    [0, 200, 64, 256, 128, 0, 193, 32],  # 3 of 8 filtered, one sample per device
    [0] * 16,
])
def test_contrastive_loss_sharded_matches_numpy(counts):
    img, txt = _batch(1, batch=len(counts))
    valid = _valid_from_masked_counts(counts)
    log_scale = np.float32(math.log(1 / 0.07))
    mesh = _mesh8()
    rows = NamedSharding(mesh, PartitionSpec("data"))
    args = (jax.device_put(img, rows), jax.device_put(txt, rows),
            jax.device_put(log_scale, NamedSharding(mesh, PartitionSpec())), jax.device_put(valid, rows))
    assert len(args[0].sharding.device_set) == 8
    (loss, acc), (g_img, g_txt, g_scale) = _clip_value_and_grad(*args)

    ref_loss, ref_acc, ref_img, ref_txt, ref_scale = np_clip_loss(img, txt, float(log_scale), valid)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(acc, ref_acc, rtol=1e-6)
    np.testing.assert_allclose(g_img, ref_img, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_txt, ref_txt, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_scale, ref_scale, rtol=1e-4, atol=1e-7)
    assert 0.0 < ref_acc < 1.0


def _filtered_batch():
    """8 samples of which 3 are filtered, at logit scale e^2."""
    img, txt = _batch(2, batch=8)
    return img, txt, np.float32(2.0), np.array([True, True, False, True, True, False, True, False])


def test_filtered_loss_is_the_authors_not_the_sub_batch_clip_loss():
    # The former symmetric reading of the filter, the valid sub-batch's CLIP loss, fails here (1.1157 vs 1.2360).
    img, txt, log_scale, valid = _filtered_batch()
    loss, acc = contrastive.loss(img, txt, log_scale, valid)
    ref_loss, ref_acc = np_clip_loss(img, txt, float(log_scale), valid)[:2]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(acc, ref_acc, rtol=1e-6)
    assert abs(ref_loss - np_sub_batch_clip_loss(img, txt, float(log_scale), valid)) > 1e-2
    # With every sample valid the two readings are one and the same CLIP loss.
    all_valid = np.ones(8, bool)
    np.testing.assert_allclose(contrastive.loss(img, txt, log_scale, all_valid)[0],
                               np_sub_batch_clip_loss(img, txt, float(log_scale), all_valid), rtol=1e-5)


def test_filtered_image_is_dropped_but_its_text_stays_a_negative():
    img, txt, log_scale, valid = _filtered_batch()
    base = contrastive.loss(img, txt, log_scale, valid)
    # A filtered image is neither a query nor a negative: moving it onto a valid text changes nothing.
    img2 = img.copy()
    img2[2] = txt[1] * 5
    img2[5] = txt[3]
    for got, want in zip(contrastive.loss(img2, txt, log_scale, valid), base):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # A filtered text is still a negative of the valid images' i2t queries: moving it onto one changes the loss.
    txt2 = txt.copy()
    txt2[2] = img[0] * 5
    moved = contrastive.loss(img, txt2, log_scale, valid)[0]
    assert float(moved) - float(base[0]) > 1e-2
    np.testing.assert_allclose(moved, np_clip_loss(img, txt2, float(log_scale), valid)[0], rtol=1e-5)


def test_l2_normalize_values_and_finite_gradient_at_zero():
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_allclose(contrastive.l2_normalize(x), x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-6)
    # A batch whose every example is fully masked: the projection's batch norm makes each image embedding exactly
    # 0 and no sample is valid. The loss is 0 and its gradient must be finite (|x|'s own gradient at 0 is 0/0,
    # which stopped a fixed-ratio-1.0 training run at its first step).
    img, txt = np.zeros((4, 6), np.float32), _batch(3, batch=4, dim=6)[1]
    none = np.zeros(4, bool)
    (loss, acc), grads = jax.value_and_grad(lambda a, b: contrastive.loss(a, b, jnp.float32(2.0), none),
                                            argnums=(0, 1), has_aux=True)(img, txt)
    assert float(loss) == 0.0 and float(acc) == 0.0
    for g in grads:
        assert np.all(np.asarray(g) == 0)
    # Control: zero rows among valid ones still get a finite, non-zero gradient.
    g = jax.grad(lambda a: contrastive.loss(a, txt, jnp.float32(2.0), np.ones(4, bool))[0])(img)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0


# -------------------------------------------------------------------------------------- diffusion constants


def np_cosine_betas(steps, max_beta=0.999):
    """IDDPM betas_for_alpha_bar with alpha_bar(t) = cos^2((t + s) / (1 + s) * pi / 2), s = 0.008."""
    t = np.arange(steps + 1, dtype=np.float64) / steps
    alpha_bar = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


def np_space_timesteps(steps, count):
    """IDDPM respace.space_timesteps(steps, str(count)) for a single section (running float stride)."""
    stride = (steps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return sorted(set(taken))


def np_respaced_betas(betas, use):
    """IDDPM SpacedDiffusion: new betas from the kept alphas_cumprod."""
    last, out = 1.0, []
    for i, acp in enumerate(np.cumprod(1.0 - betas)):
        if i in use:
            out.append(1.0 - acp / last)
            last = acp
    return np.array(out)


def np_constants(betas):
    alphas = 1.0 - betas
    acp = np.cumprod(alphas)
    prev = np.concatenate([[1.0], acp[:-1]])
    post_var = betas * (1.0 - prev) / (1.0 - acp)
    return {
        "sqrt_alphas_cumprod": np.sqrt(acp),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - acp),
        "sqrt_recip_alphas_cumprod": 1.0 / np.sqrt(acp),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / acp - 1.0),
        "posterior_log_variance_clipped": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        "posterior_mean_coef1": betas * np.sqrt(prev) / (1.0 - acp),
        "posterior_mean_coef2": (1.0 - prev) * np.sqrt(alphas) / (1.0 - acp),
        "log_betas": np.log(betas),
    }


def test_cosine_betas():
    betas = np_cosine_betas(1000)
    schedule = gd.make_schedule(1000)
    assert schedule.betas.dtype == np.float64 and schedule.num_steps == 1000
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(schedule.timestep_map, np.arange(1000))
    # Landmarks of the cosine schedule: tiny first beta, clipped last beta, increasing in between.
    assert 1e-5 < betas[0] < 1e-4 and betas[-1] == 0.999 and np.all(np.diff(betas) > 0)


@pytest.mark.parametrize("sampling_steps", [None, 100, 50])
def test_schedule_constants(sampling_steps):
    betas = np_cosine_betas(1000)
    if sampling_steps is None:
        timesteps = np.arange(1000)
    else:
        timesteps = np.array(np_space_timesteps(1000, sampling_steps))
        betas = np_respaced_betas(betas, set(timesteps.tolist()))
    schedule = gd.make_schedule(1000, sampling_steps)
    ref = np_constants(betas)
    arrays = schedule._arrays()
    np.testing.assert_array_equal(arrays["timestep_map"], timesteps)
    np.testing.assert_allclose(schedule.betas, betas, rtol=1e-10)
    consts = schedule.constants()
    for name, value in ref.items():
        np.testing.assert_allclose(arrays[name], value, rtol=1e-10, err_msg=name)
        assert consts[name].dtype == jnp.float32
        np.testing.assert_allclose(consts[name], value, rtol=2e-6, err_msg=name)
    assert consts["timestep_map"].dtype == jnp.int32


def test_respaced_100_of_1000():
    kept = gd.respaced_timesteps(1000, 100)
    assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 999
    np.testing.assert_array_equal(kept, np_space_timesteps(1000, 100))
    # Strides of 10 or 11 (999 / 99 = 10.09).
    assert set(np.diff(kept).tolist()) <= {10, 11}
    new_betas = gd.make_schedule(1000, 100).betas
    # The respaced process reaches the same final alpha_bar as the full one.
    np.testing.assert_allclose(np.prod(1 - new_betas), np.prod(1 - np_cosine_betas(1000)), rtol=1e-10)


def test_respacing_rejects_bad_counts():
    for bad in (0, 1, 1001):
        with pytest.raises(ValueError, match=rf"diffusion\.sampling_steps={bad} must be in \[2, "
                                             r"diffusion\.num_steps=1000\]"):
            gd.respaced_timesteps(1000, bad)


# -------------------------------------------------------------------------------------------- diffusion loss

G, PER_GROUP, L, T, D, MUL = 4, 3, 16, 4, 6, 4


def _group_masks(masked_per_group, seed=0):
    """[G * PER_GROUP, L] masks with exactly masked_per_group[g] masked tokens in every sample of group g."""
    rng = np.random.default_rng(seed)
    rows = []
    for count in masked_per_group:
        for _ in range(PER_GROUP):
            row = np.zeros(L, bool)
            row[rng.permutation(L)[:count]] = True
            rows.append(row)
    return np.stack(rows)


def _denoise(w):
    # A small deterministic "head" with a parameter, so gradients can be checked.
    def f(x_t, t, z):
        eps = jnp.tanh(x_t * w[0] + z[:, :T] * w[1] + t[:, None] / 1000.0)
        var = jnp.tanh(z[:, T - 2:2 * T - 2] * w[2])
        return jnp.concatenate([eps, var], axis=-1)

    return f


def _loss_inputs(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.uniform(-1, 1, (G * PER_GROUP, L, T)).astype(np.float32)
    z = rng.standard_normal((G * PER_GROUP, L, D)).astype(np.float32)
    return tokens, z


CONSTANTS = gd.make_schedule(1000).constants()


def _diff_loss(w, tokens, z, mask):
    return diffusion_head.loss(_denoise(w), jax.random.key(3), tokens, z, mask, 1000, G, MUL, 0.5)


def test_diffusion_loss_value_and_gating():
    # Group ratios 4/16 (off), 8/16 = 0.5 (on: ">= 50%"), 7/16 (off), 12/16 (on).
    masked = [4, 8, 7, 12]
    mask = _group_masks(masked)
    tokens, z = _loss_inputs()
    w = jnp.array([0.7, 0.3, 0.5])
    loss, metrics = _diff_loss(w, tokens, z, mask)

    # Reference aggregation from the per-token losses of the same draws.
    x0, zz, _, t, noise = diffusion_head.targets(jax.random.key(3), tokens, z, mask, MUL, 1000)
    assert x0.shape == (MUL * G * PER_GROUP * L, T) and t.min() >= 0 and t.max() < 1000
    x_t = gd.q_sample(CONSTANTS, x0, t, noise)
    per_token = np.asarray(gd.training_loss(CONSTANTS, x0, x_t, t, noise, _denoise(w)(x_t, t, zz)), np.float64)
    per_token = per_token.reshape(MUL, G, PER_GROUP * L)
    m = mask.reshape(G, PER_GROUP * L)
    group_loss = np.array([(per_token[:, g] * m[g]).sum() / (MUL * m[g].sum()) for g in range(G)])
    active = np.array([c / L >= 0.5 for c in masked])
    np.testing.assert_allclose(loss, np.sum(group_loss * active) / G, rtol=1e-5)
    np.testing.assert_allclose(metrics["gen_loss_active"], group_loss[active].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["gen_active_frac"], 0.5)
    # The copies draw independent timesteps.
    t = np.asarray(t).reshape(MUL, -1)
    assert (t[0] != t[1]).mean() > 0.9


def test_diffusion_loss_only_masked_tokens_of_active_groups():
    masked = [4, 8, 7, 12]
    mask = _group_masks(masked, seed=1)
    tokens, z = _loss_inputs(1)
    w = jnp.array([0.7, 0.3, 0.5])
    base = _diff_loss(w, tokens, z, mask)[0]

    group_of = np.repeat(np.arange(G), PER_GROUP)
    active = np.array([c / L >= 0.5 for c in masked])[group_of][:, None]
    counted = mask & active  # [B, L]
    rng = np.random.default_rng(5)
    tokens2 = np.where(counted[..., None], tokens, rng.uniform(-1, 1, tokens.shape)).astype(np.float32)
    z2 = np.where(counted[..., None], z, 10 * rng.standard_normal(z.shape)).astype(np.float32)
    np.testing.assert_allclose(_diff_loss(w, tokens2, z2, mask)[0], base, rtol=1e-6)

    # Control: changing one counted token does change the loss.
    b, l = map(int, np.argwhere(counted)[0])
    z3 = z.copy()
    z3[b, l] += 3.0
    assert abs(float(_diff_loss(w, tokens, z3, mask)[0]) - float(base)) > 1e-6

    # Gradient w.r.t. z is exactly zero outside masked tokens of active groups, non-zero inside.
    gz = np.asarray(jax.grad(lambda zz: _diff_loss(w, tokens, zz, mask)[0])(jnp.asarray(z)))
    assert np.all(gz[~counted] == 0)
    assert np.all(np.abs(gz[counted]).sum(-1) > 0)


def test_diffusion_loss_all_groups_below_half_is_zero():
    mask = _group_masks([0, 7, 3, 1])
    tokens, z = _loss_inputs(2)
    loss, metrics = _diff_loss(jnp.array([0.7, 0.3, 0.5]), tokens, z, mask)
    assert float(loss) == 0.0 and float(metrics["gen_active_frac"]) == 0.0
