"""The latent cache's format and reading: webdataset shards encoded once through the frozen SD-VAE, stored as
ArrayRecord (written by `--mode=cache`, dream_jax/cache.py).

One record per good sample, in shard order, one `SHARD.array_record` per input shard (written to a temporary name
and renamed when complete, so an interrupted job resumes at the first unfinished shard; with several processes,
process i takes shards i::n). A record is a msgpack map (flax.serialization) of
  key        str        the sample's key in its shard
  caption    str        the caption as read (txt, else json)
  moments    [2, h, w, 2c] float16 (or --moments_dtype=float32): VAE posterior mean then logvar of the ADM center
             crop (row 0) and of its horizontal flip (row 1), as the authors' cache keeps both
  clip_ids   int32 [C]   the CLIP text tower's ids
  cond_ids   int32 [Lt]  the frozen T5 encoder's ids, and cond_mask int32 [Lt] its attention mask.
Unlike the authors' cache (fp16 T5 features, ~256 KB a sample), the T5 ids are stored and T5 runs in the train
step: ~34 KB a sample instead of ~320 KB (docs/DATA.md has the measured numbers). float16 moments keep ~3
significant digits: the rounding (relative 2^-11) is far below the posterior noise the train step adds.

Training reads the cache with `data.source='latents'` and `data.path=DIR`: each sample picks the crop or the
flip from grain's per-sample generator and the train step samples the posterior from the moments
(tokens.images_to_tokens). `cache_info.json` records what the cache was made for; a config that does not
match it is a ValueError.

Dimension letters: B batch, H/W image size, h/w latent size (H/8), c latent channels, C CLIP context, Lt T5 length.
"""

import dataclasses
import glob
import json
import logging
import os

import grain
import numpy as np
from flax import serialization


CACHE_INFO = "cache_info.json"
SUFFIX = ".array_record"
# group_size 1: every record is its own compressed chunk, so random access reads one record (grain needs this).
WRITER_OPTIONS = "group_size:1"
_FORMAT = 1
_SOURCE = "Write one with `python -m dream_jax.main --mode=cache --config=... --workdir=DIR` (see docs/DATA.md)."


# ---------------------------------------------------------------------------------------------------------------
# Records.


def encode_record(key, caption, moments, clip_ids, cond_ids, cond_mask) -> bytes:
    return serialization.msgpack_serialize({
        "key": str(key),
        "caption": str(caption),
        "moments": np.asarray(moments),
        "clip_ids": np.asarray(clip_ids, np.int32),
        "cond_ids": np.asarray(cond_ids, np.int32),
        "cond_mask": np.asarray(cond_mask, np.int32),
    })


def decode_record(record: bytes) -> dict:
    return serialization.msgpack_restore(record)


@dataclasses.dataclass(frozen=True)
class DecodeRecord(grain.transforms.RandomMap):
    """Record bytes -> a training element; `image` is the moments of the crop or of its flip (1/2 each)."""

    def random_map(self, record, rng):
        r = decode_record(record)
        return {
            "image": r["moments"][int(rng.integers(2))],
            "clip_ids": r["clip_ids"],
            "cond_ids": r["cond_ids"],
            "cond_mask": r["cond_mask"],
        }


# ---------------------------------------------------------------------------------------------------------------
# Reading.


def cache_files(path: str) -> list[str]:
    """The cache's ArrayRecord files, sorted; FileNotFoundError naming `path` when there are none."""
    if not path:
        raise FileNotFoundError(f"config.data.path is empty: with data.source='latents' it is a latent cache "
                                f"directory. {_SOURCE}")
    files = sorted(glob.glob(os.path.join(os.path.expanduser(path), "*" + SUFFIX)))
    if not files or not os.path.isfile(os.path.join(os.path.expanduser(path), CACHE_INFO)):
        raise FileNotFoundError(f"config.data.path={path!r} holds no latent cache (*{SUFFIX} files and "
                                f"{CACHE_INFO}). {_SOURCE}")
    return files


def cache_info(config, moments_dtype="float16") -> dict:
    """What a cache written for `config` holds; training compares the stored one with its own config's."""
    t = config.tokenizer
    return {
        "format": _FORMAT,
        "image_size": int(t.image_size),
        "vae_path": os.path.abspath(t.vae_path) if t.vae_path else "",
        "moments_dtype": str(np.dtype(moments_dtype)),
        "clip_tokenizer": config.text.clip_tokenizer,
        "clip_context": int(config.model.text_tower.context_length),
        "cond_encoder": config.text.cond_encoder,
        "cond_len": int(config.model.cond_len),
    }


def check_matches(config, path):
    """ValueError naming every field where the cache in `path` was made for another config."""
    cache_files(path)
    with open(os.path.join(os.path.expanduser(path), CACHE_INFO)) as f:
        stored = json.load(f)
    wanted = cache_info(config, stored.get("moments_dtype", "float16"))
    wrong = [f"{k}: cache {stored.get(k)!r}, config {v!r}" for k, v in wanted.items()
             if k != "vae_path" and stored.get(k) != v]
    if wrong:
        raise ValueError(f"the latent cache in {path!r} was written for another config ({'; '.join(wrong)}); "
                         "write a new cache for this config")
    if wanted["vae_path"] and stored.get("vae_path") != wanted["vae_path"]:
        logging.warning("latent cache %s was written with the VAE in %s, the config names %s", path,
                        stored.get("vae_path"), wanted["vae_path"])
