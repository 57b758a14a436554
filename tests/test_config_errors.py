"""Bad config values raise one clear ValueError naming the value; every shipped config validates.

Checked through `train.validate_config` (run before anything is built), `base_config.scale_config` and
`sharding.mesh_shape` / `sharding.make_mesh`.
"""

import importlib

import jax
import pytest

from configs import dream_tiny
from dream_jax import base_config, sharding
from dream_jax.training import train


@pytest.mark.parametrize("name", ["dream_b", "dream_l", "dream_h", "dream_g", "dream_tiny"])
def test_shipped_configs_validate(name):
    # Positive control: the errors below come from the bad value, not from a config that never validates.
    train.validate_config(importlib.import_module(f"configs.{name}").get_config())


@pytest.mark.parametrize("scale", ["X", "b", "XL", ""])
def test_unknown_scale(scale):
    with pytest.raises(ValueError, match=rf"unknown scale '{scale}'.*\['B', 'G', 'H', 'L'\]"):
        base_config.scale_config(scale)
    with pytest.raises(ValueError, match="unknown scale"):
        base_config.get_base_config(scale)


def _bad(path, value, base=dream_tiny.get_config):
    config = base()
    *parents, last = path.split(".")
    target = config
    for p in parents:
        target = target[p]
    target[last] = value
    return config


CASES = [
    # (config path, bad value, a regex the message must match)
    ("model.num_heads", 3, r"model\.width=128 is not divisible by model\.num_heads=3"),
    ("model.width", 130, r"model\.width=130 is not divisible by model\.num_heads=4"),
    ("model.text_tower.num_heads", 3, r"model\.text_tower\.width=64 is not divisible"),
    ("masking.fixed_ratio", 1.5, r"masking\.fixed_ratio=1\.5 is outside \[0, 1\]"),
    ("masking.fixed_ratio", -0.1, r"masking\.fixed_ratio=-0\.1 is outside \[0, 1\]"),
    ("masking.min_ratio", -0.2, r"masking\.min_ratio=-0\.2 is outside \[0, 1\]"),
    ("masking.max_ratio", 1.01, r"masking\.max_ratio=1\.01 is outside \[0, 1\]"),
    ("masking.mu_end", 2.0, r"masking\.mu_end=2\.0 is outside \[0, 1\]"),
    ("masking.std", 0.0, r"masking\.std=0\.0 must be > 0"),
    ("masking.kind", "cosine", r"masking\.kind='cosine'"),
    ("masking.num_groups", 0, r"masking\.num_groups=0 must be >= 1"),
    ("masking.num_groups", 5, r"batch_size=32 is not divisible by masking\.num_groups=5"),
    ("batch_size", 66, r"batch_size=66 is not divisible by masking\.num_groups=4"),
    ("model.seq_len", 100, r"gives 16 tokens of dim 32, but model\.seq_len=100"),
    ("model.token_dim", 16, r"gives 16 tokens of dim 32, but model\.seq_len=16 and model\.token_dim=16"),
    ("tokenizer.patch_size", 4, r"gives 64 tokens of dim 32"),
    ("tokenizer.pca_dim", 0, r"gives 16 tokens of dim 192"),
    ("tokenizer.image_size", 30, r"tokenizer \(pixels, image 30, patch 8\): the image size is not a multiple"),
    ("tokenizer.kind", "vae", r"tokenizer\.pca_dim=32 is fitted on the embedded shapes: it needs tokenizer\.kind"),
    ("tokenizer.kind", "jpeg", r"tokenizer\.kind='jpeg'"),
    ("optim.schedule", "linear", r"optim\.schedule='linear'"),
    ("model.remat", "sometimes", r"model\.remat='sometimes': expected one of 'none', 'full', 'save_dots'"),
    ("model.attention", "flash", r"model\.attention='flash': expected one of 'xla', 'cudnn'"),
    ("model.precision", "fp8", r"model\.precision='fp8': expected one of 'float32', 'bfloat16'"),
    ("optim.base_lr", -1e-3, r"optim\.base_lr=-0\.001 must be > 0"),
    ("optim.weight_decay", -0.1, r"optim\.weight_decay=-0\.1 must be >= 0"),
    ("optim.b2", 1.0, r"optim\.b2=1\.0 must be in \[0, 1\)"),
    ("optim.grad_clip", 0.0, r"optim\.grad_clip=0\.0 must be > 0"),
    ("optim.warmup_epochs", -1.0, r"optim\.warmup_epochs=-1\.0 must be >= 0"),
    ("optim.ema_rate", 1.0, r"optim\.ema_rate=1\.0 must be in \[0, 1\)"),
    ("total_steps", 0, r"total_steps=0 must be >= 1, or -1 for num_epochs x steps_per_epoch"),
    ("steps_per_epoch", 0, r"steps_per_epoch=0 must be >= 1"),
    ("log_every", 0, r"log_every=0 must be >= 1"),
    ("checkpoint_every", 0, r"checkpoint_every=0 must be >= 1"),
    ("keep_checkpoints", 0, r"keep_checkpoints=0 must be >= 1"),
    ("profile_steps", "5", r"profile_steps='5': expected two step numbers 'a,b'"),
    ("profile_steps", "a,b", r"profile_steps='a,b': expected two step numbers"),
    ("profile_steps", "0,3", r"profile_steps='0,3': need 1 <= a <= b <= total steps \(1920\)"),
    ("profile_steps", "10,1921", r"need 1 <= a <= b <= total steps \(1920\)"),
]


@pytest.mark.parametrize("path, value, message", CASES, ids=[f"{p}={v}" for p, v, _ in CASES])
def test_bad_value_raises_one_clear_error(path, value, message):
    with pytest.raises(ValueError, match=message):
        train.validate_config(_bad(path, value))


def test_epochs_count_only_when_they_set_the_length():
    config = _bad("num_epochs", 0)
    train.validate_config(config)  # total_steps=1920 sets the length
    config.total_steps = -1
    with pytest.raises(ValueError, match=r"num_epochs=0 must be > 0 \(total_steps=-1 takes the length from it\)"):
        train.validate_config(config)


def test_min_above_max_ratio():
    config = _bad("masking.min_ratio", 0.8)
    config.masking.max_ratio = 0.7
    with pytest.raises(ValueError, match=r"masking\.min_ratio=0\.8 > max_ratio=0\.7"):
        train.validate_config(config)


def test_paper_scale_with_bad_tokenizer():
    # The 256-token VAE layout of the paper scales: a 512-px image would give 1024 tokens.
    with pytest.raises(ValueError, match=r"gives 1024 tokens of dim 16, but model\.seq_len=256"):
        train.validate_config(_bad("tokenizer.image_size", 512, lambda: base_config.get_base_config("G")))


@pytest.mark.parametrize("shape, devices, resolved", [
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((2, -1, 2), 8, (2, 2, 2)),
    ((1, 1, 1), 1, (1, 1, 1)),
    ((2, 4, 1), 8, (2, 4, 1)),
])
def test_mesh_shape_resolves(shape, devices, resolved):
    assert sharding.mesh_shape(shape, devices) == resolved


@pytest.mark.parametrize("shape, devices, message", [
    ((-1, -1, 1), 8, r"mesh\.shape=\(-1, -1, 1\) has more than one -1"),
    ((3, -1, 1), 8, r"mesh\.shape=\(3, -1, 1\) does not divide 8 devices"),
    ((2, 2, 1), 8, r"mesh\.shape=\(2, 2, 1\) needs 4 devices, 8 are present"),
    ((4, 4, 1), 8, r"needs 16 devices, 8 are present"),
    ((0, -1, 1), 8, r"mesh\.shape=\(0, -1, 1\): every entry must be a positive integer or -1"),
    ((-2, -1, 1), 8, r"every entry must be a positive integer or -1"),
    ((2.5, -1, 1), 8, r"every entry must be a positive integer or -1"),
])
def test_bad_mesh_shape(shape, devices, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(shape, devices)


def test_mesh_shape_length_must_match_axes():
    config = dream_tiny.get_config()
    config.mesh.shape = (8, 1)
    with pytest.raises(ValueError, match=r"mesh\.shape=\(8, 1\) has 2 entries but mesh\.axes=.* names 3"):
        sharding.make_mesh(config, jax.devices()[:8])
    config.mesh.shape = (2, -1, 2)
    assert sharding.make_mesh(config, jax.devices()[:8]).shape == {"data": 2, "fsdp": 2, "tensor": 2}
