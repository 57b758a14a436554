"""`--mode=cache`: webdataset shards encoded once through the frozen SD-VAE into the latent cache (its format and
reading: dream_jax/data/latent_cache.py).

    python -m dream_jax.main --mode=cache --config=configs/dream_b.py --workdir=DIR \
        --config.data.path='SHARDS/*.tar' --config.tokenizer.vae_path=... --config.text.t5_path=... \
        --config.text.clip_vocab_path=... [--moments_dtype=float16] [--cache_batch_size=64]

One `SHARD.array_record` per input shard, written to a temporary name and renamed when complete, so an interrupted
job resumes at the first unfinished shard; with several processes, process i takes shards i::n.

Dimension letters: B batch, H/W image size, h/w latent size (H/8), c latent channels.
"""

import json
import logging
import os
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from jax.sharding import NamedSharding, PartitionSpec

from dream_jax import preflight, tokens
from dream_jax.data import latent_cache, webdataset
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.interop import pretrained
from dream_jax.models import vae as vae_lib


def make_encoder(vae_config, params, moments_dtype="float16"):
    """A jitted fn: uint8 [B, H, W, 3] -> moments [B, 2, h, w, 2c] (crop, flip); the batch split over the local
    devices (B must be a multiple of their count). The VAE runs in float32 whatever model.precision says."""
    module = vae_lib.AutoencoderKL(vae_config, dtype=jnp.float32)
    mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()), ("batch",))
    data = NamedSharding(mesh, PartitionSpec("batch"))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))

    @jax.jit
    def encode(params, images):
        x = tokens.normalize(images)
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
    if config.tokenizer.kind != "vae":
        raise ValueError(f"tokenizer.kind={config.tokenizer.kind!r}: the latent cache encodes with the VAE ('vae')")
    if np.dtype(moments_dtype) not in (np.float16, np.float32):
        raise ValueError(f"moments_dtype={moments_dtype!r}; expected float16 or float32")
    if config.data.source != "webdataset":
        raise ValueError(f"data.source={config.data.source!r}: the latent cache reads webdataset shards "
                         "(data.source='webdataset', data.path their glob)")
    preflight.check_files(config)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    shards = webdataset.shard_paths(config.data.path)
    os.makedirs(output_dir, exist_ok=True)
    info = latent_cache.cache_info(config, moments_dtype)
    info_file = os.path.join(output_dir, latent_cache.CACHE_INFO)
    if os.path.isfile(info_file):
        with open(info_file) as f:
            if json.load(f) != info:
                raise ValueError(f"{info_file} was written for another config or dtype; use a new --output")
    elif process_index == 0:
        _write_json(info_file, info)

    tokenizers = tokenizers_lib.make_tokenizers(config)
    encode = make_encoder(*pretrained.load_vae(config.tokenizer.vae_path), moments_dtype)
    batch_size = -(-batch_size // encode.num_devices) * encode.num_devices
    source = webdataset.WebDatasetSource(shards, config.data.index_dir, process_index, process_count)
    totals = {"shards": 0, "samples": 0, **dict.fromkeys(webdataset.COUNT_KEYS, 0)}
    for shard_id in range(process_index, len(shards), process_count):
        target = os.path.join(output_dir, _stem(shards[shard_id]) + latent_cache.SUFFIX)
        if os.path.isfile(target):
            continue
        start = time.monotonic()
        stats = _write_shard(source, shard_id, target, encode, tokenizers, config.tokenizer.image_size, batch_size,
                             num_threads)
        _write_json(target[: -len(latent_cache.SUFFIX)] + ".stats.json", stats)
        logging.info("cached %s: %s in %.1f s", shards[shard_id], stats, time.monotonic() - start)
        totals["shards"] += 1
        for k, v in stats.items():
            totals[k] += v
    return totals


def _write_shard(source, shard_id, target, encode, tokenizers, image_size, batch_size, num_threads):
    start, stop = source.shard_rows(shard_id)
    stats = {"samples": 0, **dict.fromkeys(webdataset.COUNT_KEYS, 0)}
    if start == stop:
        elements = iter(())
    else:
        ds = grain.MapDataset.source(source)[start:stop].map(webdataset.Decode(image_size))
        elements = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=
                                                             2 * batch_size)))
    tmp = target + ".tmp"
    writer = ArrayRecordWriter(tmp, latent_cache.WRITER_OPTIONS)
    pending = []

    def flush():
        images = np.stack([e["image"] for e in pending])
        padded = np.concatenate([images, np.zeros((batch_size - len(images), *images.shape[1:]), np.uint8)])
        moments = encode(padded)
        captions = [e["caption"] for e in pending]
        clip_ids = tokenizers.clip_ids(captions)
        cond_ids, cond_mask = tokenizers.cond_ids(captions)
        for i, e in enumerate(pending):
            writer.write(latent_cache.encode_record(e["key"], e["caption"], moments[i], clip_ids[i], cond_ids[i],
                                                    cond_mask[i]))
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
