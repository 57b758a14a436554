"""The latent cache: webdataset shards encoded once through the frozen SD-VAE, stored as ArrayRecord.

    python -m dream_jax.data.latent_cache --config=configs/dream_b.py --output=DIR \
        --config.data.path='SHARDS/*.tar' --config.tokenizer.vae_path=... --config.text.t5_path=... \
        --config.text.clip_vocab_path=...

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
(frontend.images_to_tokens). `cache_info.json` records what the cache was made for; a config that does not
match it is a ValueError.

Dimension letters: B batch, H/W image size, h/w latent size (H/8), c latent channels, C CLIP context, Lt T5 length.
"""

import dataclasses
import glob
import json
import logging
import os
import sys
import time

import grain
import numpy as np
from flax import serialization

from dream_jax.data import webdataset

CACHE_INFO = "cache_info.json"
SUFFIX = ".array_record"
# group_size 1: every record is its own compressed chunk, so random access reads one record (grain needs this).
WRITER_OPTIONS = "group_size:1"
_FORMAT = 1
_SOURCE = "Write one with `python -m dream_jax.data.latent_cache --config=... --output=DIR` (see docs/DATA.md)."


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


# ---------------------------------------------------------------------------------------------------------------
# Writing.


def make_encoder(config, params, moments_dtype="float16"):
    """A jitted fn: uint8 [B, H, W, 3] -> moments [B, 2, h, w, 2c] (crop, flip); the batch split over the local
    devices (B must be a multiple of their count). The VAE runs in float32 whatever model.precision says."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from dream_jax import frontend

    module = frontend.vae(config, dtype=jnp.float32)
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("batch",))
    data = NamedSharding(mesh, PartitionSpec("batch"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

    @jax.jit
    def encode(params, images):
        x = frontend.normalize(images)
        mean, logvar = module.apply({"params": params}, jnp.concatenate([x, x[:, :, ::-1]]), method="encode")
        both = jnp.concatenate([mean, logvar], axis=-1)
        return jnp.stack(jnp.split(both, 2), axis=1).astype(moments_dtype)

    def run(images):
        return np.asarray(encode(params, jax.device_put(images, data)))

    run.num_devices = len(jax.local_devices())
    return run


def write_cache(config, output_dir, batch_size=64, moments_dtype="float16", num_threads=8, process_index=None,
                process_count=None):
    """Encodes this process's share of `config.data.path` into `output_dir`; returns the totals of its shards.

    Shards already written (a complete `.array_record`) are skipped; each written shard also gets a
    `.stats.json` with its sample and skip counts.
    """
    import jax

    from dream_jax import frontend, pretrained

    if config.tokenizer.kind != "vae":
        raise ValueError(f"tokenizer.kind={config.tokenizer.kind!r}: the latent cache encodes with the VAE ('vae')")
    if np.dtype(moments_dtype) not in (np.float16, np.float32):
        raise ValueError(f"moments_dtype={moments_dtype!r}; expected float16 or float32")
    if config.data.source != "webdataset":
        raise ValueError(f"data.source={config.data.source!r}: the latent cache reads webdataset shards "
                         "(data.source='webdataset', data.path their glob)")
    frontend.check_files(config)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    shards = webdataset.shard_paths(config.data.path)
    os.makedirs(output_dir, exist_ok=True)
    info = cache_info(config, moments_dtype)
    info_file = os.path.join(output_dir, CACHE_INFO)
    if os.path.isfile(info_file):
        with open(info_file) as f:
            if json.load(f) != info:
                raise ValueError(f"{info_file} was written for another config or dtype; use a new --output")
    elif process_index == 0:
        _write_json(info_file, info)

    tokenizers = frontend.make_tokenizers(config)
    encode = make_encoder(config, pretrained.load_vae(config.tokenizer.vae_path)[1], moments_dtype)
    batch_size = -(-batch_size // encode.num_devices) * encode.num_devices
    source = webdataset.WebDatasetSource(shards, config.data.index_dir, process_index, process_count)
    totals = {"shards": 0, "samples": 0, **dict.fromkeys(webdataset.COUNT_KEYS, 0)}
    for shard_id in range(process_index, len(shards), process_count):
        target = os.path.join(output_dir, _stem(shards[shard_id]) + SUFFIX)
        if os.path.isfile(target):
            continue
        start = time.monotonic()
        stats = _write_shard(source, shard_id, target, encode, tokenizers, config.tokenizer.image_size, batch_size,
                             num_threads)
        _write_json(target[: -len(SUFFIX)] + ".stats.json", stats)
        logging.info("cached %s: %s in %.1f s", shards[shard_id], stats, time.monotonic() - start)
        totals["shards"] += 1
        for k, v in stats.items():
            totals[k] += v
    return totals


def _write_shard(source, shard_id, target, encode, tokenizers, image_size, batch_size, num_threads):
    from array_record.python.array_record_module import ArrayRecordWriter

    start, stop = source.shard_rows(shard_id)
    stats = {"samples": 0, **dict.fromkeys(webdataset.COUNT_KEYS, 0)}
    if start == stop:
        elements = iter(())
    else:
        ds = grain.MapDataset.source(source)[start:stop].map(webdataset.Decode(image_size))
        elements = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=
                                                             2 * batch_size)))
    tmp = target + ".tmp"
    writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
    pending = []

    def flush():
        images = np.stack([e["image"] for e in pending])
        padded = np.concatenate([images, np.zeros((batch_size - len(images), *images.shape[1:]), np.uint8)])
        moments = encode(padded)
        captions = [e["caption"] for e in pending]
        clip_ids = tokenizers.clip_ids(captions)
        cond_ids, cond_mask = tokenizers.cond_ids(captions)
        for i, e in enumerate(pending):
            writer.write(encode_record(e["key"], e["caption"], moments[i], clip_ids[i], cond_ids[i], cond_mask[i]))
        stats["samples"] += len(pending)
        pending.clear()

    try:
        for element in elements:
            if webdataset.SKIP in element:
                stats[f"skipped_{element[webdataset.SKIP]}"] += 1
                continue
            pending.append(element)
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    finally:
        writer.close()
    os.replace(tmp, target)
    return stats


def _stem(path):
    return os.path.basename(path).removesuffix(".tar")


def _write_json(path, value):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def record_bytes(config, moments_dtype="float16", caption_chars=100, num_records=64, directory=None):
    """Measured bytes a sample takes in an ArrayRecord file of this config's cache (random moments, so the
    compression the writer applies gains ~nothing: an upper bound for real latents)."""
    import tempfile

    from array_record.python.array_record_module import ArrayRecordWriter

    f = config.tokenizer.image_size // 8
    rs = np.random.RandomState(0)
    record = encode_record("000000000", "x" * caption_chars, rs.standard_normal((2, f, f, 8)).astype(moments_dtype),
                           np.zeros(config.model.text_tower.context_length), np.zeros(config.model.cond_len),
                           np.zeros(config.model.cond_len))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = os.path.join(tmp, "measure" + SUFFIX)
        writer = ArrayRecordWriter(path, WRITER_OPTIONS)
        for _ in range(num_records):
            writer.write(record)
        writer.close()
        return len(record), os.path.getsize(path) / num_records


# ---------------------------------------------------------------------------------------------------------------
# Command line.


def _main(argv):
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments: {' '.join(argv[1:])}")
    try:
        totals = write_cache(FLAGS.config, FLAGS.output, FLAGS.batch_size, FLAGS.moments_dtype, FLAGS.num_threads)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(totals), flush=True)


def run():
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
    flags.DEFINE_string("output", None, "Directory for the cache (created; finished shards are kept).")
    flags.DEFINE_integer("batch_size", 64, "Images per VAE call (rounded up to a multiple of the local devices).")
    flags.DEFINE_enum("moments_dtype", "float16", ["float16", "float32"], "Storage dtype of the moments.")
    flags.DEFINE_integer("num_threads", 8, "Host threads reading and decoding images.")
    flags.mark_flags_as_required(["config", "output"])
    logging.getLogger().setLevel(logging.INFO)
    app.run(_main)


if __name__ == "__main__":
    run()
