"""img2dataset webdataset shards (CC12M layout) as a random-access grain source, with the authors' augmentation.

A shard is an uncompressed `*.tar` whose members are `KEY.jpg` (or .jpeg/.png/.webp) beside `KEY.txt` and/or
`KEY.json` (img2dataset writes the caption to both; the json's `caption` field is used when the txt is missing or
empty). Random access replaces webdataset's streaming: each shard's tar headers are scanned once into a small
per-shard index (`SHARD.tar.wdsidx.npy`, beside the shard or under `data.index_dir`), and the per-shard indexes are
concatenated into one memory-mapped index of every sample (`wds-<hash>.npy`, same place) that all processes and
grain workers share through the page cache. With a random-access source, grain's MapDataset gives a global
shuffle, process sharding (`ds[i::n]`), worker sharding and a checkpointable position (one integer) for free, so a
restored iterator resumes at the very sample it stopped at, mid-shard or not.

Augmentation is the authors' "mar" transform: ADM `center_crop_arr` to the resolution, then a horizontal flip
drawn per sample from grain's per-index generator (deterministic, different every epoch); images stay uint8 and
are normalised on device. A sample whose image cannot be decoded or whose caption is missing/empty becomes a
`{SKIP: reason}` marker instead of raising; `CountSkipped` drops markers and folds their count into the next good
sample (`skipped_image`, `skipped_caption`), so the counts travel with the batches to the training metrics (they
also survive grain's worker processes, which a global counter would not).

Shards must be local files or a mounted bucket (gcsfuse): reads are `seek` + `read` of single members.

Dimension letters: N samples, H/W image size.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import logging
import os
import tarfile

import grain
import numpy as np
from absl import logging as absl_logging
from PIL import Image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SKIP = "skip"
SKIP_REASONS = ("image", "caption")
COUNT_KEYS = tuple(f"skipped_{r}" for r in SKIP_REASONS)
_SHARD_INDEX_SUFFIX = ".wdsidx.npy"
_FIELDS = ("image", "txt", "json")
_SOURCE = (
    "Make CC12M webdataset shards by hand with img2dataset (https://github.com/rom1504/img2dataset, "
    "--output_format webdataset; docs/DATA.md has the command) and pass --config.data.path='DIR/*.tar'; "
    "dream_jax never downloads."
)


# ---------------------------------------------------------------------------------------------------------------
# Shard discovery and the index.


def shard_paths(pattern: str) -> list[str]:
    """Sorted shard files matching the glob `pattern`; FileNotFoundError naming it when none match."""
    if not pattern:
        raise FileNotFoundError(f"config.data.path is empty: it must be a glob of webdataset shards. {_SOURCE}")
    paths = sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))
    if not paths:
        raise FileNotFoundError(f"no webdataset shard matches config.data.path={pattern!r}. {_SOURCE}")
    return paths


def split_name(name: str) -> tuple[str, str]:
    """Webdataset's key/extension split: 'dir/000012.jpg' -> ('dir/000012', 'jpg'); the extension is lower-cased."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(directory, stem) if directory else stem), ext.lower() if dot else ""


def scan_shard(path: str) -> np.ndarray:
    """One pass over a shard's tar headers -> structured array [N] of (key, offset and size of each member).

    Samples keep their order of first appearance; a missing member has offset and size -1. A truncated or
    unreadable shard keeps the samples before the damage (with a warning); members cut short read short and are
    skipped as bad images when read.
    """
    members: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in _members(tar):
                key, ext = split_name(info.name)
                field = "image" if ext in IMAGE_EXTENSIONS else ext if ext in ("txt", "json") else None
                if field is not None and field not in members.setdefault(key, {}):
                    members[key][field] = (info.offset_data, info.size)
    except tarfile.ReadError as e:
        # One broken download must not stop a run over a thousand shards; the warning says what was lost.
        logging.warning("shard %s is not a readable uncompressed tar after %d samples (%s); using those. Random "
                        "access needs the raw .tar that img2dataset writes (not .tar.gz)", path, len(members), e)
    width = max([len(k.encode()) for k in members] + [1])
    dtype = [("key", f"S{width}")] + [(f"{f}_{p}", np.int64) for f in _FIELDS for p in ("offset", "size")]
    index = np.zeros(len(members), dtype)
    for row, (key, found) in enumerate(members.items()):
        index[row]["key"] = key.encode()
        for f in _FIELDS:
            index[row][f"{f}_offset"], index[row][f"{f}_size"] = found.get(f, (-1, -1))
    return index


def _members(tar):
    """The file members of an open tar; any read error (a truncated shard) is a tarfile.ReadError."""
    while True:
        try:
            info = tar.next()
        except (tarfile.ReadError, EOFError, OSError) as e:
            raise tarfile.ReadError(str(e)) from e
        if info is None:
            return
        if info.isfile():
            yield info


def _index_location(shard: str, index_dir: str) -> str:
    if not index_dir:
        return shard + _SHARD_INDEX_SUFFIX
    tag = hashlib.sha1(os.path.dirname(os.path.abspath(shard)).encode()).hexdigest()[:8]
    return os.path.join(index_dir, f"{os.path.basename(shard)}.{tag}{_SHARD_INDEX_SUFFIX}")


def _fresh(index_file: str, shard: str) -> bool:
    return os.path.isfile(index_file) and os.path.getmtime(index_file) >= os.path.getmtime(shard)


def _save_atomically(path: str, array: np.ndarray):
    """Writes then renames, so processes building the same index concurrently never read a partial file."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}-{id(array)}"
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"cannot write the webdataset index {path!r} ({e}); set --config.data.index_dir to a "
                      "writable directory") from e


def build_index(shards: list[str], index_dir: str = "", process_index: int = 0, process_count: int = 1) -> str:
    """Scans the shards that have no fresh index and writes the combined index; returns its path.

    Every process may call this at once: each starts its scan at a different shard (rotated by its index) and
    skips shards another process has indexed meanwhile, so the scans split the work without a barrier.
    """
    start = process_index * len(shards) // max(1, process_count)
    for shard in shards[start:] + shards[:start]:
        location = _index_location(shard, index_dir)
        if not _fresh(location, shard):
            _save_atomically(location, scan_shard(shard))
    parts = [np.load(_index_location(s, index_dir), allow_pickle=False) for s in shards]
    digest = hashlib.sha1(json.dumps([(os.path.abspath(s), os.path.getmtime(_index_location(s, index_dir)))
                                      for s in shards]).encode()).hexdigest()[:16]
    combined = os.path.join(index_dir or os.path.dirname(os.path.abspath(shards[0])), f"wds-{digest}.npy")
    if not os.path.isfile(combined):
        width = max([p.dtype["key"].itemsize for p in parts] + [1])
        dtype = [("shard", np.int32), ("key", f"S{width}")] + [(n, np.int64) for n in parts[0].dtype.names[1:]]
        index = np.zeros(sum(len(p) for p in parts), dtype)
        row = 0
        for shard_id, part in enumerate(parts):
            rows = slice(row, row + len(part))
            index["shard"][rows] = shard_id
            for name in part.dtype.names:
                index[name][rows] = part[name]
            row += len(part)
        _save_atomically(combined, index)
    return combined


# ---------------------------------------------------------------------------------------------------------------
# The source.


class WebDatasetSource:
    """Random access to every sample of the shards: index -> {key, image (bytes or None), caption (str or None)}.

    Decoding happens in `Decode`, so grain's reader threads overlap the reads with it. Pickles without its
    memory map (grain workers reopen it).
    """

    def __init__(self, shards: list[str], index_dir: str = "", process_index: int = 0, process_count: int = 1):
        self.shards = list(shards)
        self.index_file = build_index(self.shards, index_dir, process_index, process_count)
        self._index = None
        self._len = len(self._rows())
        if not self._len:
            raise ValueError(f"the {len(self.shards)} shards from {self.shards[0]!r} on hold no samples")

    def shard_rows(self, shard_id: int) -> tuple[int, int]:
        """[start, stop) of the rows of one shard (rows are grouped by shard, in shard order)."""
        ids = self._rows()["shard"]
        return int(np.searchsorted(ids, shard_id, "left")), int(np.searchsorted(ids, shard_id, "right"))

    def _rows(self) -> np.ndarray:
        if self._index is None:
            self._index = np.load(self.index_file, mmap_mode="r", allow_pickle=False)
        return self._index

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        row = self._rows()[int(index)]
        shard = self.shards[int(row["shard"])]
        raw = {}
        try:
            with open(shard, "rb") as f:
                for field in _FIELDS:
                    raw[field] = _read(f, int(row[f"{field}_offset"]), int(row[f"{field}_size"]))
        except OSError as e:  # a flaky mount must not end the run: the sample is skipped and counted
            logging.warning("cannot read sample %d from %s: %s", index, shard, e)
            raw = {}
        return {"key": row["key"].decode(), "image": raw.get("image"),
                "caption": read_caption(raw.get("txt"), raw.get("json"))}

    def __getstate__(self):
        return {**self.__dict__, "_index": None}

    def __repr__(self) -> str:
        return f"WebDatasetSource({len(self.shards)} shards, {self._len} samples)"


def _read(f, offset: int, size: int) -> bytes | None:
    if offset < 0:
        return None
    f.seek(offset)
    return f.read(size)


def read_caption(txt: bytes | None, meta: bytes | None) -> str | None:
    """The caption of `KEY.txt`, else the `caption` field of `KEY.json`; None when both are missing or empty."""
    if txt is not None:
        caption = txt.decode("utf-8", errors="replace").strip()
        if caption:
            return caption
    if meta is not None:
        try:
            caption = json.loads(meta).get("caption")
        except (ValueError, AttributeError):
            return None
        if isinstance(caption, str) and caption.strip():
            return caption.strip()
    return None


# ---------------------------------------------------------------------------------------------------------------
# Decoding and augmentation.


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM's (guided-diffusion) center crop: BOX-halve while the short side >= 2*size, BICUBIC-resize the short
    side to `size`, then cut the central size x size square. uint8 [size, size, C]."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> center-cropped RGB uint8 [size, size, 3]; raises on anything unreadable."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decode now, so a truncated file fails here and not later
        return np.ascontiguousarray(center_crop_arr(image.convert("RGB"), size), dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class Decode(grain.transforms.Map):
    """Raw sample -> {key, image uint8 [H, W, 3] (center crop), caption}, or a {SKIP: reason, key} marker."""

    image_size: int

    def map(self, element):
        if element["caption"] is None:
            return {SKIP: "caption", "key": element["key"]}
        if element["image"] is None:
            return {SKIP: "image", "key": element["key"]}
        try:
            image = decode_image(element["image"], self.image_size)
        except Exception as e:  # noqa: BLE001 - any undecodable image (PIL raises many types) is skipped
            logging.debug("undecodable image %s: %s", element["key"], e)
            return {SKIP: "image", "key": element["key"]}
        return {"key": element["key"], "image": image, "caption": element["caption"]}


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
    """Horizontal flip with probability 1/2, from grain's per-sample generator (markers pass through)."""

    def random_map(self, element, rng):
        if SKIP in element or rng.random() >= 0.5:
            return element
        return {**element, "image": np.ascontiguousarray(element["image"][:, ::-1])}


# ---------------------------------------------------------------------------------------------------------------
# Counting what was skipped.


class CountSkipped(grain.IterDataset):
    """Drops SKIP markers; each good element gets `skipped_<reason>` = markers dropped just before it (int32).

    Summed over the batches consumed, the counts equal the bad samples passed over; the iterator's state is its
    parent's, since no count is pending between two elements.
    """

    def __init__(self, parent: grain.IterDataset):
        super().__init__(parent)

    def __iter__(self):
        return _CountSkippedIterator(self._parent.__iter__())

    def __str__(self) -> str:
        return "CountSkipped"


class _CountSkippedIterator(grain.DatasetIterator):
    def __next__(self):
        counts = dict.fromkeys(SKIP_REASONS, 0)
        while True:
            element = next(self._parent)
            reason = element.get(SKIP)
            if reason is None:
                break
            counts[reason] += 1
            absl_logging.log_every_n_seconds(logging.WARNING, "skipping sample %s: bad %s (logged every 60 s)", 60,
                                             element.get("key"), reason)
        return {**element, **{f"skipped_{r}": np.int32(c) for r, c in counts.items()}}

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)

