"""The whitened patch PCA tokenizer (tokenizer.pca_dim): exact on full rank, whitened, reproducible, and the oracle
reads every attribute back from the embedded shapes after an encode/decode round trip at the dims it is used with.

Dimension letters: N patches, P patch features, K components.
"""

import types

import jax
import numpy as np
import pytest

from configs import dream_tiny
from dream_jax import frozen as frozen_lib
from dream_jax import tokens as tokens_lib
from dream_jax.data import oracle, synthetic
from dream_jax.models import patch_pca
from dream_jax.training import train


def _patches(seed, n=500, p=12):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((p, p))
    return rng.standard_normal((n, p)) @ mixing + rng.standard_normal(p)


def test_full_rank_round_trip_is_exact_and_tokens_are_white():
    x = _patches(0)
    pca = patch_pca.fit(x, x.shape[1])
    tokens = np.asarray(patch_pca.encode(pca, x.astype(np.float32)))
    np.testing.assert_allclose(np.asarray(patch_pca.decode(pca, tokens)), x, atol=2e-4)
    np.testing.assert_allclose(np.cov(tokens, rowvar=False), np.eye(x.shape[1]), atol=2e-3)
    np.testing.assert_allclose(tokens.mean(axis=0), 0.0, atol=1e-4)


def test_components_are_sorted_and_signs_fixed():
    x = _patches(1)
    a, b = patch_pca.fit(x, 5), patch_pca.fit(-x + 0.0, 5)  # a mirrored cloud: eigh may flip signs
    assert np.all(np.diff(a["std"]) <= 0)
    np.testing.assert_allclose(np.abs(a["components"]), np.abs(b["components"]), atol=1e-5)
    cols = a["components"][np.argmax(np.abs(a["components"]), axis=0), np.arange(5)]
    assert np.all(cols > 0)


@pytest.mark.parametrize("k", [0, 13])
def test_bad_component_count(k):
    with pytest.raises(ValueError, match="pca_dim"):
        patch_pca.fit(_patches(2), k)


def _pca_config(patch, dim):
    c = dream_tiny.get_config()
    c.tokenizer.update(dict(patch_size=patch, pca_dim=dim, pca_examples=256))
    c.model.update(dict(seq_len=(32 // patch) ** 2, token_dim=dim))
    return c


def _pca_only(config):
    """The frozen components as far as the pixel tokenizer reads them (no text encoder needed here)."""
    return types.SimpleNamespace(pca=frozen_lib.fit_pca(config))


def test_oracle_reads_round_tripped_shapes():
    config = _pca_config(8, 32)
    train.validate_config(config)
    frozen = _pca_only(config)
    source = synthetic.CaptionedShapes("heldout", num_examples=128, seed=5)
    items = [source[i] for i in range(128)]
    images = np.stack([it["image"] for it in items])
    tokens = tokens_lib.images_to_tokens(config, frozen, images, jax.random.key(0))
    assert tokens.shape == (128, 16, 32)
    back = np.asarray(tokens_lib.tokens_to_images(config, frozen, tokens))
    rates = oracle.alignment(back, {a: np.array([it[a] for it in items]) for a in synthetic.ATTRIBUTES})
    assert rates["all"] >= 0.97, rates


def test_pca_needs_pixels_of_the_embedded_shapes():
    config = _pca_config(8, 32)
    config.data.source = "webdataset"
    with pytest.raises(ValueError, match="pca_dim=32 is fitted on the embedded shapes"):
        train.validate_config(config)
    config = _pca_config(8, 40)
    with pytest.raises(ValueError, match="tokens of dim 40, but model.seq_len=16 and model.token_dim=32"):
        config.model.token_dim = 32
        train.validate_config(config)


def test_x0_constraint_bounds_the_decoded_pixels():
    """diffusion.clip_denoised on PCA tokens: an estimate far outside the data decodes, once constrained, to pixels
    within [-1, 1] but for a small projection residual, and valid tokens barely move (clipping the whitened
    coefficients instead would distort them: the control); raw pixel tokens are clipped as IDDPM does; without
    clip_denoised there is no constraint."""
    config = _pca_config(8, 32)
    frozen = _pca_only(config)
    images = np.stack([synthetic.CaptionedShapes("train", num_examples=16, seed=1)[i]["image"] for i in range(16)])
    tokens = tokens_lib.images_to_tokens(config, frozen, images, jax.random.key(0)).reshape(-1, 32)
    constrain = tokens_lib.x0_constraint(config, frozen)
    decode = lambda t: np.asarray(patch_pca.decode(frozen.pca, t))  # noqa: E731
    excess = lambda t: np.abs(decode(t) - np.clip(decode(t), -1, 1)).mean()  # noqa: E731
    wild = 6.0 * tokens
    assert excess(wild) > 0.5 and excess(constrain(wild)) < 0.02
    assert np.abs(decode(constrain(tokens)) - decode(tokens)).mean() < 0.01
    assert np.abs(decode(np.clip(tokens, -1, 1)) - decode(tokens)).mean() > 0.05
    raw = _pca_config(8, 32)
    raw.tokenizer.pca_dim = 0
    np.testing.assert_array_equal(tokens_lib.x0_constraint(raw, None)(np.array([-3.0, 0.5, 2.0])), [-1.0, 0.5, 1.0])
    config.diffusion.clip_denoised = False
    assert tokens_lib.x0_constraint(config, frozen) is None
