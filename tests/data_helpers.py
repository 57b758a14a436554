"""Helpers shared by the data tests: tiny img2dataset-style shards with known bad samples, and a tiny VAE directory.

Shards hold SAMPLES_PER_SHARD samples each; every good image has its own red level (so a sample is recognisable
after cropping, flipping and JPEG) and a left-to-right green ramp (so a flip is visible). The bad samples are
BAD_IMAGES (random bytes named .jpg; a JPEG cut in half) and BAD_CAPTIONS (no caption member at all; a blank
txt with a json that has no caption).

Dimension letters: H/W image size.
"""

import io
import json
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from dream_jax.interop import pretrained
from dream_jax.models import vae

SAMPLES_PER_SHARD = 6
NUM_SHARDS = 2
BAD_IMAGES = {"000002": "corrupt", "000009": "truncated"}
BAD_CAPTIONS = {"000007": "missing", "000010": "blank"}
TOTAL = SAMPLES_PER_SHARD * NUM_SHARDS
GOOD = TOTAL - len(BAD_IMAGES) - len(BAD_CAPTIONS)
# Sizes that exercise both branches of the ADM crop at 32 px: BOX halving (short side >= 64) and plain BICUBIC.
SIZES = [(70, 130), (40, 48), (64, 33), (150, 90), (33, 40), (48, 96)]
# A small diffusers-layout KL VAE with the SD stride of 8 (three downsamples): 32 px -> 4 x 4 latents.
TINY_VAE = {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4}


def red_level(index):
    return 12 + 20 * index


def image_bytes(index, fmt="JPEG"):
    h, w = SIZES[index % len(SIZES)]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = red_level(index)
    img[..., 1] = np.linspace(0, 255, w).astype(np.uint8)[None, :]
    img[..., 2] = 90
    out = io.BytesIO()
    Image.fromarray(img).save(out, format=fmt, quality=95)
    return out.getvalue()


def sample_members(index):
    """The tar members (name -> bytes) of sample `index`."""
    key = f"{index:06d}"
    members = {f"{key}.jpg": image_bytes(index)}
    caption = f"a photo number {index}"
    if index % 3 == 1:  # json only, as when img2dataset writes no txt
        members[f"{key}.json"] = json.dumps({"caption": caption, "key": key}).encode()
    else:
        members[f"{key}.txt"] = caption.encode()
        members[f"{key}.json"] = json.dumps({"caption": caption, "url": "http://x"}).encode()
    if BAD_IMAGES.get(key) == "corrupt":
        members[f"{key}.jpg"] = np.random.RandomState(index).bytes(300)
    if BAD_IMAGES.get(key) == "truncated":
        members[f"{key}.jpg"] = members[f"{key}.jpg"][: len(members[f"{key}.jpg"]) // 2]
    if BAD_CAPTIONS.get(key) == "missing":
        members = {f"{key}.jpg": members[f"{key}.jpg"]}
    if BAD_CAPTIONS.get(key) == "blank":
        members = {f"{key}.jpg": members[f"{key}.jpg"], f"{key}.txt": b"  \n",
                   f"{key}.json": json.dumps({"url": "http://x"}).encode()}
    return members


def write_shard(path, indices):
    with tarfile.open(path, "w") as tar:
        for index in indices:
            for name, data in sample_members(index).items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def make_shards(directory):
    """NUM_SHARDS shards `shard-0000{i}.tar` in `directory`; returns their glob."""
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(NUM_SHARDS):
        write_shard(directory / f"shard-{s:05d}.tar", range(s * SAMPLES_PER_SHARD, (s + 1) * SAMPLES_PER_SHARD))
    return str(directory / "shard-*.tar")


def good_indices():
    return [i for i in range(TOTAL) if f"{i:06d}" not in BAD_IMAGES and f"{i:06d}" not in BAD_CAPTIONS]


def identify(image):
    """(sample index, flipped) of a decoded uint8 [H, W, 3] test image."""
    index = round((float(image[..., 0].mean()) - 12) / 20)
    ramp = image[..., 1].astype(np.float32).mean(axis=0)
    return index, bool(ramp[0] > ramp[-1])


def make_vae_dir(directory, shape=TINY_VAE, seed=1):
    """A diffusers-layout AutoencoderKL directory (config.json + safetensors) of random weights, written from
    Flax params through the converter's inverse (no torch needed); returns (path, params)."""
    cfg = vae.VaeConfig(**shape)
    shapes = jax.eval_shape(vae.AutoencoderKL(cfg).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    rs = np.random.RandomState(seed)
    params = jax.tree.map(lambda s: (0.1 * rs.standard_normal(s.shape)).astype(np.float32), shapes)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "AutoencoderKL", "act_fn": "silu", **shape}
    config["block_out_channels"] = list(shape["block_out_channels"])
    (directory / "config.json").write_text(json.dumps(config))
    save_file(pretrained.to_state_dict(params), str(directory / pretrained.VAE_WEIGHTS))
    return str(directory), params
