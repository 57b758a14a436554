"""SD-VAE in Flax: equal to diffusers' AutoencoderKL on the same random weights; the converter fails loudly.

Dimension letters: B batch, H/W pixels, h/w latent cells, C channels.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from dream_jax.interop import pretrained
from dream_jax.models import vae

TOL = 1e-4
# Two shapes: the brief's small two-block VAE, and a narrow copy of the SD KL-f8 layout (4 blocks, 2 layers).
SMALL = {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 16}
F8 = {"block_out_channels": (16, 16, 32, 32), "layers_per_block": 2, "norm_num_groups": 8}


def _diffusers_dir(tmp_path, shape, seed=0):
    """A random-init diffusers AutoencoderKL saved as safetensors; returns (dir, torch model)."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(seed)
    n = len(shape["block_out_channels"])
    model = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        sample_size=32,
        **shape,
    ).eval()
    with torch.no_grad():
        # Default init leaves norms at 1/0 and biases at small values; perturb them so every tensor matters.
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn_like(p))
    path = tmp_path / "vae"
    model.save_pretrained(path, safe_serialization=True)
    return path, model


def _flax_dir(tmp_path, shape=SMALL, name="vae"):
    """A checkpoint written from random Flax params through to_state_dict: no torch needed."""
    cfg = vae.VaeConfig(**shape)
    params = _random_params(vae.AutoencoderKL(cfg), jnp.zeros((1, 8, 8, 3)))
    path = tmp_path / name
    path.mkdir()
    config = {"_class_name": "AutoencoderKL", "act_fn": "silu", **shape}
    config["block_out_channels"] = list(shape["block_out_channels"])
    (path / "config.json").write_text(json.dumps(config))
    save_file(pretrained.to_state_dict(params), str(path / pretrained.VAE_WEIGHTS))
    return path, params


def _random_params(model, *dummy):
    """Random params of the model's shapes, drawn in numpy: eager Flax init would compile op by op (slow)."""
    rs = np.random.RandomState(1)
    shapes = jax.eval_shape(model.init, jax.random.key(0), *dummy)["params"]
    return jax.tree.map(lambda s: (0.2 * rs.standard_normal(s.shape)).astype(np.float32), shapes)


def _encode(cfg, params, x, dtype=jnp.float32):
    model = vae.AutoencoderKL(cfg, dtype=dtype)
    return jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))(params, x)


def _decode(cfg, params, z):
    model = vae.AutoencoderKL(cfg)
    return jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))(params, z)


@pytest.mark.parametrize("shape", [SMALL, F8], ids=["small", "f8"])
def test_matches_diffusers(tmp_path, shape):
    torch = pytest.importorskip("torch")
    path, ref = _diffusers_dir(tmp_path, shape)
    cfg, params = pretrained.load_vae(str(path))
    assert cfg.block_out_channels == shape["block_out_channels"]
    f = cfg.downsample_factor
    rs = np.random.RandomState(0)
    x = rs.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    z = rs.randn(2, 32 // f, 32 // f, 4).astype(np.float32)

    mean, logvar = _encode(cfg, params, x)
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x).permute(0, 3, 1, 2)).latent_dist
        decoded = ref.decode(torch.from_numpy(z).permute(0, 3, 1, 2)).sample
    nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
    assert mean.shape == (2, 32 // f, 32 // f, 4)
    errors = {
        "mean": np.abs(np.asarray(mean) - nhwc(dist.mean)).max(),
        "logvar": np.abs(np.asarray(logvar) - nhwc(dist.logvar)).max(),
        "decode": np.abs(np.asarray(_decode(cfg, params, z)) - nhwc(decoded)).max(),
    }
    print(f"VAE {shape['block_out_channels']} max abs errors vs diffusers: {errors}")
    assert max(errors.values()) <= TOL, errors


def test_legacy_attention_names_load(tmp_path):
    """Older diffusers checkpoints name the attention query/key/value/proj_attn; those load to the same params."""
    path, params = _flax_dir(tmp_path)
    weights = path / pretrained.VAE_WEIGHTS
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in load_file(str(weights)).items():
        for new, old in legacy.items():
            key = key.replace(f".attentions.0.{new}.", f".attentions.0.{old}.")
        state[key] = value
    assert any(".query." in k for k in state)
    save_file(state, str(weights))
    _, loaded = pretrained.load_vae(str(path))
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_round_trip_and_posterior(tmp_path):
    path, params = _flax_dir(tmp_path)
    cfg, loaded = pretrained.load_vae(str(path))
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    x = jnp.asarray(np.random.RandomState(2).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
    mean, logvar = _encode(cfg, loaded, x)
    rng = jax.random.key(3)
    sample = vae.sample_posterior(rng, mean, logvar)
    eps = jax.random.normal(rng, mean.shape)
    np.testing.assert_allclose(sample, mean + jnp.exp(0.5 * logvar) * eps, rtol=1e-6, atol=1e-6)
    assert vae.SCALE == 0.18215
    # The bf16 option runs and stays near fp32 (params stay fp32; only compute is bf16).
    mean16, _ = _encode(cfg, loaded, x, dtype=jnp.bfloat16)
    assert mean16.dtype == jnp.float32
    assert np.abs(np.asarray(mean16) - np.asarray(mean)).max() <= 0.05 * (1 + np.abs(np.asarray(mean)).max())


def _rewrite(path, edit):
    weights = path / pretrained.VAE_WEIGHTS
    state = load_file(str(weights))
    edit(state)
    save_file(state, str(weights))


def test_missing_key_is_named(tmp_path):
    path, _ = _flax_dir(tmp_path)
    key = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"
    _rewrite(path, lambda s: s.pop(key))
    with pytest.raises(ValueError, match=re.escape(f"missing tensors ['{key}']")):
        pretrained.load_vae(str(path))


def test_extra_key_is_named(tmp_path):
    path, _ = _flax_dir(tmp_path)
    _rewrite(path, lambda s: s.update({"encoder.mid_block.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected \(unused\) tensors \['encoder\.mid_block\.extra\.weight'\]"):
        pretrained.load_vae(str(path))


def test_wrong_shape_is_named(tmp_path):
    path, _ = _flax_dir(tmp_path)
    _rewrite(path, lambda s: s.update({"quant_conv.weight": np.zeros((8, 8, 3, 3), np.float32)}))
    with pytest.raises(ValueError, match=r"quant_conv\.weight: got \(8, 8, 3, 3\), expected \(8, 8, 1, 1\)"):
        pretrained.load_vae(str(path))


def test_missing_files_say_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="stabilityai/sd-vae-ft-ema"):
        pretrained.load_vae(str(tmp_path / "nowhere"))
    path, _ = _flax_dir(tmp_path)
    (path / pretrained.VAE_WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        pretrained.load_vae(str(path))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="up_block_types"):
        pretrained.vae_config_from_dict({"block_out_channels": [8, 16], "up_block_types": ["UpDecoderBlock2D"]})
    with pytest.raises(ValueError, match="norm_num_groups"):
        vae.VaeConfig(block_out_channels=(12,), norm_num_groups=8)
