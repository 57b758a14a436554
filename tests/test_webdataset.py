"""Webdataset shards as a grain source: index, ADM crop, flips, bad samples skipped and counted, process sharding,
mid-shard restore, and the missing-file errors.

Dimension letters: b per-process batch, H/W image size.
"""

import io
import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

import data_helpers as dh
import train_helpers as th
from dream_jax import preflight
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.data import pipeline, webdataset


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return dh.make_shards(tmp_path_factory.mktemp("wds"))


def _config(path, batch_size=2, **extra):
    extra = {"data__num_workers": 0, **extra}
    return th.tiny_config(data__source="webdataset", data__path=path, batch_size=batch_size, **extra)


def _dataset(config, **kwargs):
    return pipeline.make_dataset(config, tokenizers_lib.make_tokenizers(config), **kwargs)


def _epoch(config, **kwargs):
    """One epoch of batches as a list."""
    return list(_dataset(config, num_epochs=1, **kwargs))


def test_source_reads_every_sample_in_order(shards, tmp_path):
    source = webdataset.WebDatasetSource(webdataset.shard_paths(shards), index_dir=str(tmp_path / "idx"))
    assert len(source) == dh.TOTAL
    assert [source[i]["key"] for i in range(dh.TOTAL)] == [f"{i:06d}" for i in range(dh.TOTAL)]
    for i in range(dh.TOTAL):
        sample = source[i]
        expected = dh.sample_members(i)[f"{i:06d}.jpg"]
        assert sample["image"] == expected
        if f"{i:06d}" in dh.BAD_CAPTIONS:
            assert sample["caption"] is None
        else:
            assert sample["caption"] == f"a photo number {i}"  # txt, or json when there is no txt
    assert len(os.listdir(tmp_path / "idx")) == dh.NUM_SHARDS + 1  # one index per shard + the combined one
    # Pickling (grain's worker processes) drops the memory map and reopens it.
    clone = pickle.loads(pickle.dumps(source))
    assert clone._index is None and clone[5] == source[5]
    # A second source reuses the indexes: nothing is rescanned or rewritten.
    before = {n: os.path.getmtime(tmp_path / "idx" / n) for n in os.listdir(tmp_path / "idx")}
    webdataset.WebDatasetSource(webdataset.shard_paths(shards), index_dir=str(tmp_path / "idx"))
    assert before == {n: os.path.getmtime(tmp_path / "idx" / n) for n in os.listdir(tmp_path / "idx")}


def _adm_center_crop(pil_image, image_size):
    """guided-diffusion's image_datasets.center_crop_arr, as the authors' "mar" transform uses it."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


@pytest.mark.parametrize("size", [(70, 130), (33, 40), (300, 257), (64, 64)])
def test_center_crop_is_adm(size):
    rs = np.random.RandomState(0)
    image = Image.fromarray(rs.randint(0, 256, (*size, 3), dtype=np.uint8))
    ours = webdataset.center_crop_arr(image, 32)
    assert ours.shape == (32, 32, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, _adm_center_crop(image, 32))


def test_decode_converts_to_rgb_and_flags_bad_images():
    out = io.BytesIO()
    Image.fromarray(np.full((40, 50), 7, np.uint8)).save(out, format="PNG")
    grey = out.getvalue()
    out = webdataset.Decode(32).map({"key": "k", "image": grey, "caption": "c"})
    assert out["image"].shape == (32, 32, 3) and out["image"].dtype == np.uint8
    assert webdataset.Decode(32).map({"key": "k", "image": b"not an image", "caption": "c"}) == {
        webdataset.SKIP: "image", "key": "k"}
    assert webdataset.read_caption(None, b"{broken json") is None
    assert webdataset.read_caption(b"", b'{"caption": " x "}') == "x"


def test_bad_samples_are_skipped_and_counted(shards):
    config = _config(shards)
    batches = _epoch(config, process_index=0, process_count=1)
    assert len(batches) == dh.GOOD // 2
    seen = sorted(dh.identify(img)[0] for b in batches for img in b["image"])
    assert seen == dh.good_indices()
    for b in batches:
        assert b["image"].shape == (2, 32, 32, 3) and b["image"].dtype == np.uint8
        assert b["clip_ids"].shape == (2, 16) and b["cond_ids"].shape == (2, 16)
    counts = {k: sum(int(b[k].sum()) for b in batches) for k in webdataset.COUNT_KEYS}
    assert counts == {"skipped_image": len(dh.BAD_IMAGES), "skipped_caption": len(dh.BAD_CAPTIONS)}
    # The metric the train step logs: the sum over a batch.
    metrics = [pipeline.skip_metrics(b) for b in batches]
    assert sum(float(m["data_skipped_image"]) for m in metrics) == len(dh.BAD_IMAGES)


def test_processes_read_disjoint_shares(shards):
    config = _config(shards, batch_size=2)
    seen, skipped = [], 0
    for p in range(2):
        for b in _epoch(config, process_index=p, process_count=2):
            seen += [dh.identify(img)[0] for img in b["image"]]
            skipped += sum(int(b[k].sum()) for k in webdataset.COUNT_KEYS)
    assert sorted(seen) == dh.good_indices()  # each good sample exactly once
    assert skipped == len(dh.BAD_IMAGES) + len(dh.BAD_CAPTIONS)


def test_restore_mid_shard_resumes_at_the_same_sample(shards):
    config = _config(shards, batch_size=1)
    it = iter(_dataset(config, process_index=0, process_count=1))
    for _ in range(3):  # 3 of the 8 good samples of the first epoch: mid-shard
        next(it)
    state = it.get_state()
    json.dumps(state)  # what orbax saves
    expected = [next(it) for _ in range(12)]  # across the epoch boundary too
    restored = iter(_dataset(config, process_index=0, process_count=1))
    restored.set_state(state)
    for want, got in zip(expected, [next(restored) for _ in range(12)]):
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_array_equal(want[k], got[k])


def test_flips_are_seeded_per_sample_and_change_between_epochs(shards):
    config = _config(shards, batch_size=1)

    def run(epochs):
        batches = _dataset(config, process_index=0, process_count=1, num_epochs=epochs)
        return [dh.identify(b["image"][0]) for b in batches]

    first = run(1)
    assert first == run(1)  # deterministic
    assert {flipped for _, flipped in first} == {False, True}
    flips = {}
    for index, flipped in run(2):
        flips.setdefault(index, set()).add(flipped)
    assert any(len(f) == 2 for f in flips.values())  # a sample's flip is redrawn in the next epoch


def test_damaged_shard_keeps_what_it_can(tmp_path, caplog):
    dh.write_shard(tmp_path / "whole.tar", range(4))
    data = (tmp_path / "whole.tar").read_bytes()
    cut = webdataset.scan_shard(str(tmp_path / "whole.tar"))[2]["image_offset"] + 10  # inside sample 2's jpg
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    source = webdataset.WebDatasetSource([str(tmp_path / "cut.tar")])
    assert len(source) == 3
    out = [webdataset.Decode(32).map(source[i]) for i in range(3)]
    assert [dh.identify(o["image"])[0] for o in out[:2]] == [0, 1]
    assert webdataset.SKIP in out[2]
    (tmp_path / "gzip.tar").write_bytes(b"\x1f\x8b" + b"\0" * 600)  # not an uncompressed tar: no samples
    with pytest.raises(ValueError, match="hold no samples"):
        webdataset.WebDatasetSource([str(tmp_path / "gzip.tar")])
    assert "not a readable uncompressed tar" in caplog.text


def test_missing_files_name_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.data\.path is empty.*img2dataset"):
        webdataset.shard_paths("")
    pattern = str(tmp_path / "none-*.tar")
    with pytest.raises(FileNotFoundError, match=r"no webdataset shard matches config\.data\.path=.*none-\*\.tar"):
        pipeline.make_dataset(_config(pattern), None)
    config = _config(pattern)
    config.tokenizer.kind = "vae"
    config.tokenizer.vae_path = str(tmp_path / "no-vae")
    config.text.clip_tokenizer = "clip_bpe"
    with pytest.raises(FileNotFoundError) as e:
        preflight.check_files(config)
    message = str(e.value)
    assert "config.tokenizer.vae_path=" in message and "stabilityai/sd-vae-ft-ema" in message
    assert "config.text.clip_vocab_path='' is empty" in message and "bpe_simple_vocab_16e6.txt.gz" in message
    assert "none-*.tar" in message and "img2dataset" in message
    config.data.source = "latents"
    with pytest.raises(FileNotFoundError, match=r"holds no latent cache.*--mode=cache"):
        preflight.check_files(config)


def test_worker_processes_share_the_work_and_the_counts(shards):
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags; an app.run has parsed them
        flags.FLAGS.mark_as_parsed()
    config = _config(shards, batch_size=2, data__num_workers=2)
    it = iter(_dataset(config, process_index=0, process_count=1, num_epochs=1))
    batches = list(it)
    assert sorted(dh.identify(img)[0] for b in batches for img in b["image"]) == dh.good_indices()
    assert sum(int(b[k].sum()) for b in batches for k in webdataset.COUNT_KEYS) == (
        len(dh.BAD_IMAGES) + len(dh.BAD_CAPTIONS))
