"""evaluation/alignment.py's best-of-K reranking: each sample is the finished plain sample the model's own score
ranks first among K, and the modes that choose among candidates need K >= 2."""

import numpy as np
import pytest

from configs import dream_tiny
from dream_jax.evaluation import alignment, interface
from dream_jax.generation import generate

P, S, K = 3, 2, 4


def test_best_of_k_keeps_the_highest_scoring_sample(monkeypatch):
    config = dream_tiny.get_config()
    config.sampling.num_candidates = K
    rng = np.random.default_rng(0)
    drawn = rng.integers(0, 256, (P, S * K, 4, 4, 3)).astype(np.uint8)
    calls = {}

    def fake_sample(prompts, num_samples, seed, opts, log):
        calls.update(num_samples=num_samples, candidates=opts.num_candidates)
        return drawn, None, None

    def fake_scores(ctx, images, prompts):
        calls["prompts"] = prompts
        return images.reshape(len(images), -1).astype(np.float64).mean(axis=1)  # brighter = better

    monkeypatch.setattr(alignment, "own_scores", fake_scores)
    predict = interface.Predict(image_embedding=None, text_embedding=None, features=None, patch_features=None,
                                sample=fake_sample, clip_ids=None)
    ctx = interface.Context(config, "", None, 0, True, predict)
    prompts = [f"prompt {i}" for i in range(P)]
    best = alignment.best_of_k(ctx, prompts, S)
    assert calls["num_samples"] == S * K and calls["candidates"] == 1  # K plain decodes per sample
    assert calls["prompts"] == [p for p in prompts for _ in range(S * K)]
    grouped = drawn.reshape(P, S, K, 4, 4, 3)
    brightness = grouped.reshape(P, S, K, -1).mean(axis=-1)
    assert best.shape == (P, S, 4, 4, 3)
    np.testing.assert_array_equal(best, grouped[np.arange(P)[:, None], np.arange(S)[None], brightness.argmax(-1)])


@pytest.mark.parametrize("mode", ["sad", "rerank"])
def test_choosing_modes_need_two_candidates(mode):
    config = dream_tiny.get_config()
    config.sampling.num_candidates = 1
    with pytest.raises(ValueError, match=f"alignment mode '{mode}' needs sampling.num_candidates >= 2, got 1"):
        generate.mode_options(config, mode)
    assert generate.mode_options(config, "plain").num_candidates == 1
