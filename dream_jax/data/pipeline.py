"""grain input pipelines: a seeded, per-process-sharded, checkpointable stream of tokenised batches.

Each process reads its slice of the source (index `process_index::process_count`), shuffles with the config's
seed (reshuffled every epoch), tokenises captions on the host, and batches its share of the global batch; the
train loop turns those into global arrays. The iterator's state is a few integers, saved beside the train state.

Dimension letters: b per-process batch, H/W image size, C CLIP context, Lt cond length.
"""

import dataclasses

import grain
import jax
import numpy as np

from dream_jax.data import synthetic


def make_source(config, split):
    """The random-access source the config names."""
    d = config.data
    if d.source == "shapes":
        return synthetic.CaptionedShapes(split=split, num_examples=d.num_examples, seed=d.shuffle_seed,
                                         image_size=config.tokenizer.image_size)
    raise ValueError(f"data.source={d.source!r}; expected 'shapes'")


@dataclasses.dataclass(frozen=True)
class Tokenize(grain.transforms.Map):
    """Caption -> CLIP ids and cond ids/mask; image stays uint8 (normalised on device)."""

    tokenizers: object

    def map(self, element):
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


def per_process_batch(config):
    batch, count = config.batch_size, jax.process_count()
    if batch % count:
        raise ValueError(f"batch_size={batch} is not divisible by {count} processes")
    return batch // count


def make_dataset(config, tokenizers, split="train", process_index=None, process_count=None):
    """An IterDataset of per-process batches (infinite for train)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    ds = grain.MapDataset.source(make_source(config, split))
    ds = ds[process_index::process_count].seed(config.data.shuffle_seed).shuffle().repeat()
    ds = ds.map(Tokenize(tokenizers)).batch(config.batch_size // process_count, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, config.data.num_workers), prefetch_buffer_size=4))
    if config.data.num_workers > 1:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers))
    return it
