"""The latent cache: records round-trip exactly, the writer encodes the crop and its flip with the VAE and counts
bad samples, training reads the cache bit for bit; and one training step of a tiny DREAM through the real VAE
path (random-init diffusers-layout VAE) from shards and from the cache gives a finite loss.

Dimension letters: B batch, h/w latent size, c latent channels.
"""

import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import data_helpers as dh
import train_helpers as th
from dream_jax import sharding
from dream_jax import cache as cache_job
from dream_jax import frozen as frozen_lib
from dream_jax import tokens as tokens_lib
from dream_jax.data import latent_cache, pipeline, webdataset
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.training import train


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    shards = dh.make_shards(root / "shards")
    vae_path, _ = dh.make_vae_dir(root / "vae")
    return root, shards, vae_path


def _config(shards, vae_path, **extra):
    """The shrunken tiny DREAM on 32 px VAE latents: 4 x 4 x 4, patch 1 -> 16 tokens of dim 4."""
    values = dict(tokenizer__kind="vae", tokenizer__vae_path=vae_path, tokenizer__patch_size=1, tokenizer__pca_dim=0,
                  model__seq_len=16,
                  model__token_dim=4, data__source="webdataset", data__path=shards, data__num_workers=0,
                  batch_size=8, masking__num_groups=4)
    return th.tiny_config(**{**values, **extra})


@pytest.fixture(scope="module")
def cache(files):
    root, shards, vae_path = files
    output = str(root / "latents")
    totals = cache_job.write_cache(_config(shards, vae_path), output, batch_size=4, num_threads=2)
    return output, totals


def test_record_round_trip_is_exact():
    rs = np.random.RandomState(0)
    moments = rs.standard_normal((2, 4, 4, 8)).astype(np.float16)
    moments[0, 0, 0, :3] = [np.inf, -0.0, 6.1e-5]  # odd values survive too
    ids = rs.randint(0, 49408, 77).astype(np.int32)
    record = latent_cache.encode_record("k/0001", "ünïcode caption ✓", moments, ids, ids[:16], np.ones(16, np.int32))
    out = latent_cache.decode_record(record)
    assert out["key"] == "k/0001" and out["caption"] == "ünïcode caption ✓"
    for name, want in (("moments", moments), ("clip_ids", ids), ("cond_ids", ids[:16])):
        assert out[name].dtype == want.dtype and out[name].shape == want.shape
        assert out[name].tobytes() == want.tobytes()


def _records(directory):
    source = grain.sources.ArrayRecordDataSource(latent_cache.cache_files(directory))
    return [latent_cache.decode_record(source[i]) for i in range(len(source))]


def test_writer_encodes_crop_and_flip_and_counts_bad_samples(files, cache):
    root, shards, vae_path = files
    output, totals = cache
    assert totals == {"shards": 2, "samples": dh.GOOD, "skipped_image": len(dh.BAD_IMAGES),
                      "skipped_caption": len(dh.BAD_CAPTIONS)}
    stats = [json.loads((root / "latents" / f"shard-{s:05d}.stats.json").read_text()) for s in range(2)]
    assert sum(s["samples"] for s in stats) == dh.GOOD
    records = _records(output)
    assert [r["key"] for r in records] == [f"{i:06d}" for i in dh.good_indices()]
    assert [r["caption"] for r in records] == [f"a photo number {i}" for i in dh.good_indices()]

    config = _config(shards, vae_path)
    tokenizers = tokenizers_lib.make_tokenizers(config)
    captions = [r["caption"] for r in records]
    np.testing.assert_array_equal(np.stack([r["clip_ids"] for r in records]), tokenizers.clip_ids(captions))
    np.testing.assert_array_equal(np.stack([r["cond_ids"] for r in records]), tokenizers.cond_ids(captions)[0])
    np.testing.assert_array_equal(np.stack([r["cond_mask"] for r in records]), tokenizers.cond_ids(captions)[1])

    # The moments are the VAE's (mean, logvar) of the ADM crop and of its mirror image, stored as float16.
    source = webdataset.WebDatasetSource(webdataset.shard_paths(shards))
    crops = np.stack([webdataset.Decode(32).map(source[i])["image"] for i in dh.good_indices()])
    from dream_jax.interop import pretrained
    from dream_jax.models import vae as vae_lib

    cfg, params = pretrained.load_vae(vae_path)
    model = vae_lib.AutoencoderKL(cfg)
    encode = jax.jit(lambda x: model.apply({"params": params}, tokens_lib.normalize(x), method="encode"))
    for row, images in ((0, crops), (1, crops[:, :, ::-1])):
        mean, logvar = (np.asarray(a) for a in encode(images))
        stored = np.stack([r["moments"][row] for r in records])
        assert stored.dtype == np.float16 and stored.shape == (dh.GOOD, 4, 4, 8)
        np.testing.assert_allclose(stored.astype(np.float32), np.concatenate([mean, logvar], -1), rtol=2e-3,
                                   atol=2e-3)
    # A finished shard is never written again; a config the cache was not made for is refused.
    assert cache_job.write_cache(config, output, batch_size=4)["shards"] == 0
    with pytest.raises(ValueError, match=r"cond_len: cache 16, config 32"):
        latent_cache.check_matches(_config(shards, vae_path, model__cond_len=32), output)


def test_training_reads_what_was_written(files, cache):
    _, _, vae_path = files
    output, _ = cache
    records = _records(output)
    by_moments = {r["moments"][row].tobytes(): (r, row) for r in records for row in (0, 1)}
    config = _config(output, vae_path, data__source="latents", batch_size=2)
    batches = list(pipeline.make_dataset(config, tokenizers_lib.make_tokenizers(config), process_index=0, process_count=1,
                                         num_epochs=1))
    seen, rows = [], set()
    for b in batches:
        assert b["image"].dtype == np.float16 and b["image"].shape == (2, 4, 4, 8)
        for i in range(2):
            r, row = by_moments[b["image"][i].tobytes()]  # bit-exact: the crop's or the flip's moments
            np.testing.assert_array_equal(b["clip_ids"][i], r["clip_ids"])
            np.testing.assert_array_equal(b["cond_ids"][i], r["cond_ids"])
            np.testing.assert_array_equal(b["cond_mask"][i], r["cond_mask"])
            seen.append(r["key"])
            rows.add(row)
    assert sorted(seen) == [r["key"] for r in records]
    assert rows == {0, 1}  # the flip is chosen per sample


def _one_step(config):
    """One jitted train step on one device (as train_and_evaluate runs it): (metrics, tokens of the batch)."""
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    tokenizers = tokenizers_lib.make_tokenizers(config)
    frozen = jax.device_put(frozen_lib.load(config, tokenizers), sharding.replicated(mesh))
    batch = next(iter(pipeline.make_dataset(config, tokenizers, process_index=0, process_count=1)))
    batch = sharding.global_batch(batch, mesh, config)
    state = train.create_state(config, mesh)
    state, metrics = train.compile_step(config, mesh, frozen, batch)(state, frozen, batch)
    return jax.device_get(metrics), batch


def test_one_training_step_through_the_real_vae(files):
    _, shards, vae_path = files
    metrics, batch = _one_step(_config(shards, vae_path))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (8, 32, 32, 3)
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"]) and metrics["gen_loss"] > 0, metrics


def test_cached_moments_become_tokens_as_pixels_do(files, cache):
    """The latents path of the train step: moments -> posterior draw -> patchified tokens, the VAE path's math."""
    _, _, vae_path = files
    config = _config(cache[0], vae_path, data__source="latents")
    rs = np.random.RandomState(0)
    mean, logvar = rs.standard_normal((2, 2, 4, 4, 4)).astype(np.float32)
    moments = np.concatenate([mean, logvar], -1).astype(np.float16)
    rng = jax.random.key(0)
    tokens = tokens_lib.images_to_tokens(config, None, jnp.asarray(moments), rng)
    mean, logvar = np.split(moments.astype(np.float32), 2, -1)
    expected = tokens_lib.moments_to_tokens(config, jnp.asarray(mean), jnp.asarray(logvar), rng)
    assert tokens.shape == (2, 16, 4)
    np.testing.assert_array_equal(tokens, expected)
