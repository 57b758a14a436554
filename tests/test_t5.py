"""T5 encoder in Flax: equal to transformers' T5EncoderModel (both feed-forward variants, padded batches).

Dimension letters: B batch, L tokens, D width.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from dream_jax.interop import pretrained
from dream_jax.models import t5

TOL = 1e-4
TINY = {
    "vocab_size": 99,
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 48,
    "num_layers": 3,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 20,
}


def _batch(length=40, vocab=99):
    """ids [3, L] with one full row, one padded at 25 and one with only 3 tokens."""
    rs = np.random.RandomState(0)
    ids = rs.randint(2, vocab, (3, length)).astype(np.int32)
    mask = np.ones((3, length), np.int32)
    mask[1, 25:] = 0
    mask[2, 3:] = 0
    return np.where(mask == 1, ids, 0), mask


def _run(cfg, params, ids, mask):
    model = t5.T5EncoderModel(cfg)
    return np.asarray(jax.jit(model.apply)({"params": params}, ids, mask))


def _reference(tmp_path, feed_forward_proj, full_model=False):
    """A random-init transformers T5 saved as safetensors; returns (dir, its encoder as a torch module)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(feed_forward_proj=feed_forward_proj, dropout_rate=0.0, **TINY)
    cls = transformers.T5ForConditionalGeneration if full_model else transformers.T5EncoderModel
    model = cls(config).eval()
    with torch.no_grad():
        # Layer norms start at 1; perturb them so a misplaced norm weight would show.
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    path = tmp_path / f"t5_{feed_forward_proj}"
    model.save_pretrained(path, safe_serialization=True)
    return path, model.get_encoder() if full_model else model


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_matches_transformers(tmp_path, feed_forward_proj):
    torch = pytest.importorskip("torch")
    path, ref = _reference(tmp_path, feed_forward_proj)
    cfg, params = pretrained.load_t5(str(path))
    assert cfg.feed_forward_proj == feed_forward_proj
    ids, mask = _batch()
    out = _run(cfg, params, ids, mask)
    with torch.no_grad():
        expected = ref(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        ).last_hidden_state.numpy()
    assert out.dtype == np.float32 and out.shape == (3, 40, TINY["d_model"])
    err = np.abs(out - expected).max()
    print(f"T5 {feed_forward_proj} max abs error vs transformers: {err:.3g}")
    assert err <= TOL


def test_full_checkpoint_loads_encoder_only(tmp_path):
    """A T5ForConditionalGeneration file (as google-t5/t5-large ships) loads; its decoder is skipped."""
    torch = pytest.importorskip("torch")
    path, encoder = _reference(tmp_path, "relu", full_model=True)
    assert any(k.startswith("decoder.") for k in load_file(str(path / pretrained.T5_WEIGHTS)))
    cfg, params = pretrained.load_t5(str(path))
    ids, mask = _batch()
    with torch.no_grad():
        expected = encoder(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
        ).last_hidden_state.numpy()
    assert np.abs(_run(cfg, params, ids, mask) - expected).max() <= TOL


def test_relative_position_buckets_match_transformers():
    """Bucket edges are exact integers, so a float rounding difference would move whole rows of the bias."""
    pytest.importorskip("torch")
    modeling_t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    import torch

    for buckets, distance in [(32, 128), (8, 20), (16, 32), (64, 256)]:
        pos = torch.arange(300)
        expected = modeling_t5.T5Attention._relative_position_bucket(
            pos[None, :] - pos[:, None], bidirectional=True, num_buckets=buckets, max_distance=distance
        ).numpy()
        np.testing.assert_array_equal(t5.relative_position_buckets(300, buckets, distance), expected)


def _flax_dir(tmp_path, feed_forward_proj="gated-gelu"):
    cfg = t5.T5Config(feed_forward_proj=feed_forward_proj, **TINY)
    # Random numpy values of the init shapes: eager Flax init would compile op by op (slow).
    rs = np.random.RandomState(1)
    shapes = jax.eval_shape(t5.T5EncoderModel(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    params = jax.tree.map(lambda s: (0.3 * rs.standard_normal(s.shape)).astype(np.float32), shapes["params"])
    path = tmp_path / "t5"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "t5", **dataclasses.asdict(cfg)}))
    save_file(pretrained.to_state_dict(params), str(path / pretrained.T5_WEIGHTS))
    return path, params


def test_round_trip_padding_and_bf16(tmp_path):
    path, params = _flax_dir(tmp_path)
    cfg, loaded = pretrained.load_t5(str(path))
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    ids, mask = _batch(length=12)
    out = _run(cfg, loaded, ids, mask)
    # Padding must not leak into real tokens: row 2's 3 tokens equal running those 3 tokens alone.
    alone = _run(cfg, loaded, ids[2:3, :3], mask[2:3, :3])
    np.testing.assert_allclose(out[2:3, :3], alone, atol=1e-5)
    out16 = np.asarray(jax.jit(t5.T5EncoderModel(cfg, dtype=jnp.bfloat16).apply)({"params": loaded}, ids, mask))
    assert out16.dtype == np.float32
    assert np.abs(out16 - out).max() <= 0.1 * (1 + np.abs(out).max())


def test_bf16_checkpoint_loads(tmp_path):
    """safetensors' numpy reader lacks bfloat16; bf16 T5 files (common for v1.1 variants) still load."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    path, params = _flax_dir(tmp_path)
    state = load_file(str(path / pretrained.T5_WEIGHTS))
    state = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()}
    save_torch(state, str(path / pretrained.T5_WEIGHTS))
    _, loaded = pretrained.load_t5(str(path))
    as_bf16 = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), params)
    jax.tree.map(np.testing.assert_array_equal, loaded, as_bf16)


def test_missing_and_extra_keys_are_named(tmp_path):
    path, _ = _flax_dir(tmp_path)
    weights = str(path / pretrained.T5_WEIGHTS)
    state = load_file(weights)
    state.pop("encoder.block.1.layer.1.DenseReluDense.wi_1.weight")
    state["encoder.block.1.layer.2.layer_norm.weight"] = np.ones(32, np.float32)
    save_file(state, weights)
    with pytest.raises(ValueError) as info:
        pretrained.load_t5(str(path))
    assert "'encoder.block.1.layer.1.DenseReluDense.wi_1.weight'" in str(info.value)
    assert "'encoder.block.1.layer.2.layer_norm.weight'" in str(info.value)


def test_missing_files_and_bad_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="google-t5/t5-large"):
        pretrained.load_t5(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="feed_forward_proj"):
        t5.T5Config(feed_forward_proj="gated-swish-x")
    with pytest.raises(ValueError, match="model_type"):
        pretrained.t5_config_from_dict({"model_type": "bert"})


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])
def test_fresh_init_draws_like_transformers(feed_forward_proj):
    """A fresh Flax init (the tiny config's random stand-in) has, weight by weight, the spread of transformers'
    random init (T5PreTrainedModel._init_weights): std within sampling error, layer norms at 1. Flax's defaults
    (embedding std D^-1/2, lecun kernels) differ by 2-8x on the embedding, q and the relative-position bias."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    shape = dict(TINY, vocab_size=400, d_model=64, d_kv=16, d_ff=128, num_layers=2, relative_attention_num_buckets=32)
    torch.manual_seed(0)
    reference = transformers.T5EncoderModel(transformers.T5Config(feed_forward_proj=feed_forward_proj, **shape))
    expected = {k: v.numpy() for k, v in reference.state_dict().items() if k != "encoder.embed_tokens.weight"}
    cfg = t5.T5Config(feed_forward_proj=feed_forward_proj, **shape)
    params = jax.jit(t5.T5EncoderModel(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    ours = pretrained.to_state_dict(jax.device_get(params))
    assert set(ours) == set(expected)
    for name, ref in expected.items():
        got = np.asarray(ours[name])
        assert got.shape == ref.shape, name
        if "layer_norm" in name:
            np.testing.assert_array_equal(got, ref, err_msg=name)
            continue
        # Two independent std estimates of n draws: their ratio's standard error is about (1 / n)^1/2.
        ratio, tol = got.std() / ref.std(), 5.0 / np.sqrt(got.size)
        assert abs(ratio - 1.0) < tol, f"{name}: std {got.std():.4f} vs transformers' {ref.std():.4f}"
        assert abs(got.mean()) < 5.0 * ref.std() / np.sqrt(got.size), name
