"""The whitened patch PCA tokenizer (tokenizer.pca_dim): exact on full rank, whitened, reproducible, and the oracle
reads every attribute back from the embedded shapes after an encode/decode round trip at the dims it is used with.

Dimension letters: N patches, P patch features, K components.
"""

import jax
import numpy as np
import pytest

from configs import dream_tiny
from dream_jax import frontend, train
from dream_jax.data import oracle, synthetic
from dream_jax.models import patch_pca


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


def test_oracle_reads_round_tripped_shapes():
    config = _pca_config(8, 32)
    train.validate_config(config)
    frozen = {"pca": frontend.fit_pca(config)}
    source = synthetic.CaptionedShapes("heldout", num_examples=128, seed=5)
    items = [source[i] for i in range(128)]
    images = np.stack([it["image"] for it in items])
    tokens = frontend.images_to_tokens(config, frozen, images, jax.random.key(0))
    assert tokens.shape == (128, 16, 32)
    back = np.asarray(frontend.tokens_to_images(config, frozen, tokens))
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
