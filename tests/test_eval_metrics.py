"""The evaluators' arithmetic on hand-made features: zero-shot accuracy, linear probe, few-shot episodes, FID, IS."""

import numpy as np
import pytest
import scipy.linalg

from dream_jax.evaluation import few_shot, fid, linear_probe, zero_shot


# --------------------------------------------------------------------------------------------------- zero-shot
def test_zero_shot_accuracy_on_hand_made_embeddings_is_exact():
    classes = np.eye(4, dtype=np.float32)  # class k's embedding is e_k
    # Images 0-5 point at their class; 6 and 7 point at a wrong one (second-best is the right one).
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    images = classes[labels].copy()
    images[6] = 0.9 * classes[0] + 0.4 * classes[2]
    images[7] = 0.9 * classes[1] + 0.4 * classes[3] + 0.1 * classes[0]
    assert zero_shot.accuracy(images, classes, labels, k=1) == 6 / 8
    assert zero_shot.accuracy(images, classes, labels, k=2) == 1.0


# ------------------------------------------------------------------------------------------------ linear probe
def _clusters(rng, n, classes, dim, spread):
    labels = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim)) * 3.0
    return (centres[labels] + spread * rng.normal(size=(n, dim))).astype(np.float32), labels


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    x, y = _clusters(rng, 800, 6, 16, 0.5)
    out = linear_probe.evaluate(x[:600], y[:600], x[600:], y[600:], 6, steps=200, batch_size=256)
    assert out["top1"] >= 0.99, out
    assert out["best_lr"] in (1e-3, 3e-3, 1e-2) and out["best_l2"] in (0.0, 1e-4, 1e-3)
    assert 0 <= out["holdout_top1"] <= 1 and out["top5"] == 1.0


def test_linear_probe_on_random_labels_is_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1400, 16)).astype(np.float32)
    y = rng.integers(0, 4, 1400)
    out = linear_probe.evaluate(x[:1000], y[:1000], x[1000:], y[1000:], 4, steps=200, batch_size=256)
    assert abs(out["top1"] - 0.25) < 0.08, out


def test_standardize_uses_train_statistics_only():
    train = np.array([[0.0, 10.0], [2.0, 30.0]], np.float32)
    test = np.array([[1.0, 20.0]], np.float32)
    a, b = linear_probe.standardize(train, test)
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(a.std(0), 1, atol=1e-3)
    np.testing.assert_allclose(b, [[0.0, 0.0]], atol=1e-6)


# ---------------------------------------------------------------------------------------------------- few-shot
def test_few_shot_episodes_are_reproducible_and_class_balanced():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, 600)
    labels[:3] = 99  # a class with too few examples is never drawn
    s1, q1, c1 = few_shot.episodes(labels, ways=5, shots=5, queries=4, num_episodes=50, seed=7)
    s2, q2, c2 = few_shot.episodes(labels, ways=5, shots=5, queries=4, num_episodes=50, seed=7)
    s3, _, _ = few_shot.episodes(labels, ways=5, shots=5, queries=4, num_episodes=50, seed=8)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(s1, s3)
    assert s1.shape == (50, 5, 5) and q1.shape == (50, 5, 4)
    for e in range(50):
        assert len(set(c1[e])) == 5 and 99 not in c1[e]
        for j in range(5):
            assert np.all(labels[s1[e, j]] == c1[e, j]) and np.all(labels[q1[e, j]] == c1[e, j])
        used = np.concatenate([s1[e].ravel(), q1[e].ravel()])
        assert len(np.unique(used)) == used.size  # support and queries never share an example


def test_few_shot_accuracy_and_interval():
    rng = np.random.default_rng(2)
    x, y = _clusters(rng, 1000, 10, 8, 0.3)
    for method in few_shot.METHODS:
        out = few_shot.evaluate(x, y, num_episodes=200, method=method)
        assert out["accuracy"] > 0.97 and 0 <= out["ci95"] < 0.02 and out["episodes"] == 200, (method, out)
    noise = few_shot.evaluate(rng.normal(size=(1000, 8)), y, num_episodes=300, seed=1)
    assert abs(noise["accuracy"] - 0.2) < 3 * noise["ci95"] + 0.02, noise
    with pytest.raises(ValueError, match="need 5 classes"):
        few_shot.evaluate(x, np.arange(1000) % 3, num_episodes=2)


# --------------------------------------------------------------------------------------------------------- FID
def _reference_fid(x, y):
    """Float64 FID from the definition, via eigenvalues: Tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    r1 = scipy.linalg.sqrtm(s1).real
    eig = np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(eig)))


def test_statistics_equal_numpy_and_merge_batches_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)) * rng.uniform(0.5, 2, 12) + 3.0
    acc = fid.GaussianStats()
    for part in np.array_split(x, 7):
        acc.add(part.astype(np.float32))
    mu, sigma = acc.result()
    np.testing.assert_allclose(mu, x.astype(np.float32).astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False), rtol=1e-10,
                               atol=1e-12)


def test_fid_equals_float64_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 24)) @ rng.normal(size=(24, 24))
    y = rng.normal(size=(500, 24)) @ rng.normal(size=(24, 24)) * 0.7 + 0.5
    got = fid.frechet_distance(*fid.statistics(x), *fid.statistics(y))
    assert got == pytest.approx(_reference_fid(x, y), rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_and_a_shift_adds_its_squared_norm():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32))
    stats = fid.statistics(x)
    assert abs(fid.frechet_distance(*stats, *stats)) < 1e-6
    shift = np.linspace(-1, 1, 32)
    shifted = fid.statistics(x + shift)
    assert fid.frechet_distance(*stats, *shifted) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_fid_with_singular_covariances_stays_finite():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) + 1.0  # fewer samples than dimensions
    value = fid.frechet_distance(*fid.statistics(x), *fid.statistics(y))
    assert np.isfinite(value) and value > 0


def test_inception_score_bounds():
    uniform = np.zeros((100, 1008))
    assert fid.inception_score(uniform, splits=10) == pytest.approx((1.0, 0.0), abs=1e-9)
    confident = np.full((100, 1008), -1e4)
    confident[np.arange(100), np.arange(100) % 10] = 0.0  # each split holds 10 images of 10 distinct classes
    mean, std = fid.inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6
