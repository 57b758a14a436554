"""The `clip_score` evaluator: the formula, its settings' errors, the score of fixed images against transformers'
CLIPModel, and one `--mode=eval` run on a tiny initial checkpoint with a tiny random CLIP.

Dimension letters: N images, E embedding dim, P prompts, S samples per prompt.
"""

import dataclasses

import ml_collections
import numpy as np
import pytest

import clip_reference as ref
import train_helpers as th
from dream_jax import checkpoint, sharding, state
from dream_jax.data.clip_tokenizer import ClipTokenizer, clean
from dream_jax.evaluation import clip_score, interface, prompts, registry, run
from dream_jax.models import clip

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_clip_score_formula():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    want = [100 * max(np.dot(x, y) / np.sqrt(np.dot(x, x) * np.dot(y, y)), 0) for x, y in zip(a, b)]
    got = clip_score.clip_score(a * 3.0, b)  # the scale of either embedding does not matter
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert (got == 0).sum() > 10 and got.max() <= 100
    np.testing.assert_allclose(clip_score.clip_score(a, a), 100.0)
    np.testing.assert_allclose(clip_score.clip_score(a, -a), 0.0)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """A tiny random CLIP in OpenAI's layout (.safetensors), its transformers original, and a bpe vocabulary of the
    shapes captions' words."""
    folder = tmp_path_factory.mktemp("clip")
    words = sorted({w for t in prompts.shapes_prompts(64)[0] for w in clean(t).split()})
    bpe = ref.write_bpe(folder / "bpe_simple_vocab_16e6.txt.gz", ref.left_to_right_merges(words))
    c = clip.ARCHITECTURES["tiny"]
    config = ref.hf_config(transformers, (c.vision_width, c.vision_layers, c.vision_heads, c.image_size,
                                          c.patch_size), (c.text_width, c.text_layers, c.text_heads), c.embed_dim,
                           eos_token_id=ClipTokenizer(str(bpe)).eot_id)
    model = ref.random_clip(transformers, torch, config, seed=3)
    from safetensors.torch import save_file

    weights = folder / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.openai_state_dict(model.state_dict(), torch).items()}, str(weights))
    return model, str(weights), str(bpe)


def _settings(clip_files, **extra):
    _, weights, bpe = clip_files
    return registry.settings("clip_score", enabled=True, weights=weights, model="tiny", bpe_vocab=bpe,
                             prompts="shapes", **extra)


def test_score_of_fixed_images_matches_transformers(clip_files):
    """run() on images a stub sampler returns equals transformers' CLIPModel on the same images and prompts."""
    model, _, bpe = clip_files
    config = th.tiny_config()
    images = ref.tiny_images(6, 32, seed=1).reshape(3, 2, 32, 32, 3)
    calls = []

    def sample(texts, num_samples, seed, opts, log=print):
        done = sum(len(c[0]) for c in calls)
        calls.append((list(texts), num_samples, seed, opts.num_candidates))
        return images[done:done + len(texts)], None, None

    predict = interface.Predict(**{f.name: None for f in dataclasses.fields(interface.Predict)} | {"sample": sample})
    ctx = interface.Context(config, "", sharding.make_mesh(config), 0, True, predict, log=lambda *_: None)
    s = ml_collections.ConfigDict(_settings(clip_files, num_prompts=3, samples_per_prompt=2, batch_size=4, chunk=2,
                                            sad=False, seed=5))
    out = clip_score.run(ctx, "clip_score", s)
    texts = prompts.shapes_prompts(3, seed=5)[0]
    assert [c[:3] for c in calls] == [(texts[:2], 2, 5), (texts[2:], 2, 7)] and calls[0][3] == 1

    pixels = (images.reshape(6, 32, 32, 3) / 255.0 - clip.MEAN) / clip.STD
    with torch.no_grad():
        img = model.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)).float())
        txt = model.get_text_features(input_ids=torch.from_numpy(ClipTokenizer(bpe).encode(texts)).long())
    img, txt = img.pooler_output, txt.pooler_output.repeat_interleave(2, dim=0)
    want = 100 * torch.clamp(torch.nn.functional.cosine_similarity(img, txt), min=0).numpy()
    assert out["num_samples"] == 6
    assert out["clip_score"] == pytest.approx(want.mean(), abs=1e-3)
    assert out["clip_score_std"] == pytest.approx(want.std(), abs=1e-3)


@pytest.mark.parametrize("change,message", [
    (dict(weights=""), "config.evals.clip_score.weights is not set; provide a local OpenAI CLIP TorchScript .pt"),
    (dict(weights="/no/ViT-L-14.pt"), "config.evals.clip_score.weights='/no/ViT-L-14.pt' does not exist; provide"),
    (dict(bpe_vocab=""), "config.evals.clip_score.bpe_vocab is not set; provide bpe_simple_vocab_16e6.txt.gz"),
    (dict(model="ViT-Q-1"), "config.evals.clip_score.model='ViT-Q-1': expected one of 'ViT-B-32'"),
    (dict(activation="relu"), "config.evals.clip_score.activation='relu': expected one of 'gelu', 'quick_gelu'"),
    (dict(prompts="/no/prompts.txt"), "config.evals.clip_score.prompts='/no/prompts.txt' does not exist"),
])
def test_missing_inputs_are_named_in_one_line_before_restoring(clip_files, change, message, tmp_path):
    config = th.tiny_config()
    config.evals = ml_collections.ConfigDict({"clip_score": {**_settings(clip_files), **change}})
    with pytest.raises((FileNotFoundError, ValueError)) as info:
        run.evaluate_workdir(config, str(tmp_path / "empty_workdir"))  # no checkpoint: validation comes first
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_eval_mode_on_a_tiny_checkpoint(clip_files, tmp_path):
    config = th.tiny_config()
    config.sampling.update(dict(num_iter=2, batch_size=8))  # as test_eval_fid_run.py: one compile of the sampler
    config.diffusion.sampling_steps = 3
    config.mesh.num_devices = 1  # the 8 fake devices would split 2 cores
    config.evals = ml_collections.ConfigDict({"clip_score": _settings(clip_files, num_prompts=4, samples_per_prompt=2,
                                                                      sad=False, batch_size=4)})
    workdir = str(tmp_path / "run")
    manager = checkpoint.Manager(workdir, config)
    manager.save(1, state.create_state(config, sharding.make_mesh(config)))
    manager.close()
    metrics = run.evaluate_workdir(config, workdir)
    assert set(metrics) == {"clip_score/clip_score", "clip_score/clip_score_std", "clip_score/num_samples"}
    assert metrics["clip_score/num_samples"] == 8
    assert 0 <= metrics["clip_score/clip_score"] <= 100 and metrics["clip_score/clip_score_std"] >= 0
