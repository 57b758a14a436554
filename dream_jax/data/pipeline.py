"""grain input pipelines: a seeded, per-process-sharded, checkpointable stream of tokenised batches.

The source is shuffled globally with the config's seed (reshuffled every epoch); each process reads, decodes and
tokenises only its chunk of every global batch (ProcessChunks), so the global batches are the same whatever the
number of processes; the train loop turns the per-process batches into global arrays. The iterator's state is a
few integers, saved beside the train state.

Sources (`config.data.source`, with `config.data.path`):
  - `shapes`: the embedded captioned-shapes set (no path);
  - `webdataset`: img2dataset tar shards, `path` a glob (data/webdataset.py); bad samples are skipped and each
    batch carries how many (`skipped_image`, `skipped_caption` per element; `skip_metrics` sums them);
  - `latents`: a latent cache directory written by data/latent_cache.py; `image` then holds the VAE posterior
    moments of the crop or its flip (float) instead of uint8 pixels.

Dimension letters: b per-process batch, H/W image size, h/w latent size, C CLIP context, Lt cond length.
"""

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np

from dream_jax.data import latent_cache, synthetic, webdataset

SOURCES = ("shapes", "webdataset", "latents")


def _check_source(config, split):
    d = config.data
    if d.source not in SOURCES:
        raise ValueError(f"data.source={d.source!r}; expected one of {SOURCES}")
    if d.source != "shapes" and split != "train":
        raise ValueError(f"data.source={d.source!r} has one split, 'train' (got {split!r}); point data.path at "
                         "held-out shards to read them")


def check_data_path(config):
    """FileNotFoundError naming `config.data.path` when the source needs files that are not there."""
    d = config.data
    if d.source == "webdataset":
        webdataset.shard_paths(d.path)
    elif d.source == "latents":
        latent_cache.cache_files(d.path)


def make_source(config, split, process_index=0, process_count=1):
    """The random-access source the config names."""
    _check_source(config, split)
    d = config.data
    if d.source == "shapes":
        return synthetic.CaptionedShapes(split=split, num_examples=d.num_examples, seed=d.shuffle_seed,
                                         image_size=config.tokenizer.image_size)
    if d.source == "webdataset":
        return webdataset.WebDatasetSource(webdataset.shard_paths(d.path), d.index_dir, process_index,
                                           process_count)
    latent_cache.check_matches(config, d.path)
    return grain.sources.ArrayRecordDataSource(latent_cache.cache_files(d.path))


@dataclasses.dataclass(frozen=True)
class Tokenize(grain.transforms.Map):
    """Caption -> CLIP ids and cond ids/mask; image stays uint8 (normalised on device)."""

    tokenizers: object

    def map(self, element):
        if webdataset.SKIP in element:
            return element
        caption = [element["caption"]]
        cond_ids, cond_mask = self.tokenizers.cond_ids(caption)
        out = {
            "image": np.asarray(element["image"], np.uint8),
            "clip_ids": self.tokenizers.clip_ids(caption)[0],
            "cond_ids": cond_ids[0],
            "cond_mask": cond_mask[0],
        }
        for key in ("shape", "color", "position", "size"):
            if key in element:
                out[key] = np.int32(element[key])
        return out


class ProcessChunks(grain.MapDataset):
    """Process `index`'s share of a global stream, in chunks of its per-process batch `chunk`.

    Element i of the share is element (i // chunk * count + index) * chunk + i % chunk of the parent, so global
    batch s (the processes' batches s side by side, in process order, as jax.make_array_from_process_local_data
    lays them out) holds the same examples in the same order whatever the number of processes: a run on 2 hosts
    sees the batches of a run on 1. Maps and random maps run before it, on global indices, for the same reason.
    """

    def __init__(self, parent, chunk, index, count):
        super().__init__(parent)
        self._chunk, self._index, self._count = chunk, index, count

    def __len__(self):
        full, rest = divmod(len(self._parent), self._chunk * self._count)
        return full * self._chunk + min(max(rest - self._index * self._chunk, 0), self._chunk)

    def _parent_index(self, i):
        block, offset = divmod(i, self._chunk)
        return (block * self._count + self._index) * self._chunk + offset

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        return self._parent[self._parent_index(i)]

    def __str__(self):
        return f"ProcessChunks(chunk={self._chunk}, index={self._index}, count={self._count})"


def make_dataset(config, tokenizers, split="train", process_index=None, process_count=None, num_epochs=None):
    """An IterDataset of per-process batches (infinite unless `num_epochs`)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    d = config.data
    ds = grain.MapDataset.source(make_source(config, split, process_index, process_count))
    ds = ds.seed(d.shuffle_seed).shuffle().repeat(num_epochs)
    if d.source == "latents":
        ds = ds.random_map(latent_cache.DecodeRecord())
    else:
        if d.source == "webdataset":
            ds = ds.map(webdataset.Decode(config.tokenizer.image_size)).random_map(webdataset.RandomFlip())
        ds = ds.map(Tokenize(tokenizers))
    ds = ProcessChunks(ds, config.batch_size // process_count, process_index, process_count)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, d.num_workers), prefetch_buffer_size=4))
    if d.source == "webdataset":
        it = webdataset.CountSkipped(it)
    it = it.batch(config.batch_size // process_count, drop_remainder=True)
    if d.num_workers > 1:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers))
    return it


def skip_metrics(batch):
    """Bad samples skipped while reading this (global) batch, per reason; empty for sources that skip nothing."""
    return {f"data_{k}": jnp.sum(batch[k]) for k in webdataset.COUNT_KEYS if k in batch}
