"""Does the input pipeline keep up? Examples/s of one host against what one host of a v5p-128 needs.

    python benchmarks/input_pipeline.py [--config=configs/dream_b.py] [--workers=0,2] [--batches=8]

Measured on this machine, as one of the 16 processes of a v5p-128 (64 chips, 4 a host) at global batch 2048, so
each batch is the host's 128 examples (pipeline.make_dataset with process_count=16):
  - latents: a latent cache (`data.source=latents`, the fast path; ArrayRecord files of the config's image size
    with random float16 moments, written here by latent_cache.encode_record) read, decoded, flip-picked, batched;
  - webdataset: img2dataset-style tar shards (short side 256 px JPEGs, quality 95, as docs/DATA.md downloads
    them) read, decoded, center-cropped, flipped, tokenised and batched. Captions go through the embedded word
    tokenizers (no CLIP BPE vocabulary or T5 sentencepiece model is here); the VAE does not run on the host;
  - vae: the SD-VAE encoder (sd-vae-ft-ema's shape, random weights, float32) on this machine's CPU, images/s:
    the cost the webdataset path moves into the train step, and the rate of latent_cache's writer per CPU.
Each over `--workers` (data.num_workers: 0 = grain threads in this process, n > 1 = n worker processes).

Need: the host's 128 examples per train step, the step time being dream_jax.flops' training FLOPs of the scale's
global batch (mask ratio 0.5, frozen T5-Large included, the VAE not: the latent-cache step) over 64 chips of
459 TFLOP/s bf16 at 100% and at 45% MFU (issue 20's target), for B, L, H and G.
Printed: examples/s per source and worker count, per CPU core, the need per scale, the margin (rate / need) and
the cores a host needs at this machine's per-core rate (a v5p host has 208 vCPUs).

Dimension letters: b per-host batch, H/W image size.
"""

import argparse
import importlib
import io
import json
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
from absl import flags
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import jax  # noqa: E402

from dream_jax import flops, info  # noqa: E402
from dream_jax.data import latent_cache, pipeline  # noqa: E402
from dream_jax.models import vae as vae_lib  # noqa: E402

import host  # noqa: E402

GLOBAL_BATCH, CHIPS, HOSTS, PEAK, TARGET_MFU = 2048, 64, 16, 459e12, 0.45
CAPTION = "a photograph of a red vintage car parked on a cobblestone street at sunset"


def _config(name, source, path, workers):
    config = importlib.import_module(f"configs.{name}").get_config()
    config.data.update(dict(source=source, path=path, num_workers=workers))
    config.text.update(dict(clip_tokenizer="words", cond_encoder="tiny_t5"))
    config.batch_size = GLOBAL_BATCH
    return config


def write_latent_cache(config, directory, records, shards=2):
    """A cache of `records` random-moment records in `shards` files, with the cache_info the config expects."""
    from array_record.python.array_record_module import ArrayRecordWriter

    f, rs = config.tokenizer.image_size // 8, np.random.RandomState(0)
    m = config.model
    for s in range(shards):
        writer = ArrayRecordWriter(os.path.join(directory, f"shard-{s:05d}{latent_cache.SUFFIX}"),
                                   latent_cache.WRITER_OPTIONS)
        for i in range(records // shards):
            writer.write(latent_cache.encode_record(
                f"{s:04d}{i:05d}", CAPTION, rs.standard_normal((2, f, f, 8)).astype(np.float16),
                rs.randint(0, 49408, m.text_tower.context_length), rs.randint(0, 32128, m.cond_len),
                np.ones(m.cond_len)))
        writer.close()
    with open(os.path.join(directory, latent_cache.CACHE_INFO), "w") as out:
        json.dump(latent_cache.cache_info(config), out)


def _photo(rs, height, width):
    """A JPEG whose size and entropy resemble a photo's: smooth colour fields plus fine texture."""
    coarse = rs.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    image = np.clip(image + rs.normal(0, 12, image.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_shards(directory, records, shards=2):
    """img2dataset-like shards: KEY.jpg (short side 256, aspect 4:3 or 3:4), KEY.txt, KEY.json."""
    rs = np.random.RandomState(1)
    photos = [_photo(rs, *((256, 341) if k % 2 else (341, 256))) for k in range(16)]
    for s in range(shards):
        with tarfile.open(os.path.join(directory, f"shard-{s:05d}.tar"), "w") as tar:
            for i in range(records // shards):
                key = f"{s:04d}{i:05d}"
                members = {f"{key}.jpg": photos[i % len(photos)], f"{key}.txt": CAPTION.encode(),
                           f"{key}.json": json.dumps({"caption": CAPTION, "key": key}).encode()}
                for name, data in members.items():
                    member = tarfile.TarInfo(name)
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    return os.path.join(directory, "shard-*.tar")


def host_rate(config, batches):
    """Examples/s of process 0 of HOSTS reading per-host batches, after two warm-up batches (workers start)."""
    from dream_jax.data import tokenizers as tokenizers_lib

    it = iter(pipeline.make_dataset(config, tokenizers_lib.make_tokenizers(config), process_index=0,
                                    process_count=HOSTS))
    for _ in range(2):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    seconds = time.perf_counter() - start
    return batches * len(batch["clip_ids"]) / seconds


def vae_rate(image_size, batch=4, reps=3):
    """Images/s of the float32 SD-VAE encoder at `image_size` on the default device (jitted, warm)."""
    module = vae_lib.AutoencoderKL(vae_lib.VaeConfig())
    x = jax.random.uniform(jax.random.key(0), (batch, image_size, image_size, 3), minval=-1.0, maxval=1.0)
    params = jax.jit(lambda r: module.init(r, x[:1], method=module.encode))(jax.random.key(1))
    encode = jax.jit(lambda p, x: module.apply(p, x, method=module.encode))
    jax.block_until_ready(encode(params, x))
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(encode(params, x))
        best = min(best, time.perf_counter() - start)
    return batch / best


def need_per_host(scale):
    """Examples/s one host must deliver at 100% and at TARGET_MFU of the v5p-128's peak, for DREAM-`scale`."""
    config = importlib.import_module(f"configs.dream_{scale.lower()}").get_config()
    t5 = {k: info.T5_LARGE[k] for k in ("d_model", "d_kv", "num_heads", "d_ff", "num_layers")}
    step_flops = GLOBAL_BATCH * flops.train_flops_per_example(config, 0.5, t5)
    fastest = step_flops / (CHIPS * PEAK)
    per_host = GLOBAL_BATCH / HOSTS
    return per_host / fastest, per_host / (fastest / TARGET_MFU), fastest / TARGET_MFU


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="dream_b", help="configs/<name>.py whose image size the data has")
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--records", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    flags.FLAGS(sys.argv[:1])  # grain's worker processes read absl flags (dream_jax.main parses them in app.run)
    name = os.path.basename(args.config).removesuffix(".py")
    workers = [int(w) for w in args.workers.split(",")]
    cores = os.cpu_count()
    print(f"device: {host.device()}; per-host batch "
          f"{GLOBAL_BATCH // HOSTS} (global {GLOBAL_BATCH} over {HOSTS} hosts of a v5p-128)")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "latents")
        os.makedirs(cache)
        shards_dir = os.path.join(tmp, "shards")
        os.makedirs(shards_dir)
        write_latent_cache(_config(name, "latents", cache, 0), cache, args.records)
        shards = write_shards(shards_dir, args.records)
        for source, path in (("latents", cache), ("webdataset", shards)):
            for w in workers:
                rates[(source, w)] = host_rate(_config(name, source, path, w), args.batches)
                print(f"  {source:<10} workers={w}: {rates[(source, w)]:8.1f} examples/s "
                      f"({rates[(source, w)] / cores:.1f} per core)", flush=True)
    image_size = _config(name, "latents", "", 0).tokenizer.image_size
    vae = vae_rate(image_size)
    print(f"  SD-VAE encoder, float32, {image_size} px, on this CPU: {vae:.2f} images/s")
    print("need per host (examples/s) at 100% / 45% MFU, and the step time at 45%:")
    for scale in ("B", "L", "H", "G"):
        at_peak, at_target, step = need_per_host(scale)
        margin = ", ".join(f"{s} x{rates[(s, max(workers))] / at_peak:.2f} (cores for 100%: "
                           f"{at_peak / (rates[(s, max(workers))] / cores):.1f})" for s in ("latents", "webdataset"))
        print(f"  DREAM-{scale}: {at_peak:7.1f} / {at_target:7.1f} (step {step:.3f} s); this host at 100% MFU, "
              f"workers={max(workers)} on {cores} cores: {margin}")


if __name__ == "__main__":
    main()
