"""Bytes a sample takes in the latent cache of a config: one encoded record, and per record in an ArrayRecord file.

    python benchmarks/cache_size.py [--config=configs/dream_b.py] [--num_records=1000]

Random moments, so the compression the writer applies gains ~nothing: an upper bound for real latents
(docs/DATA.md, "What the cache costs").
"""

import argparse
import importlib
import os
import sys
import tempfile

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dream_jax.data import latent_cache  # noqa: E402


def record_bytes(config, moments_dtype="float16", caption_chars=100, num_records=64, directory=None):
    """Measured bytes a sample takes in an ArrayRecord file of this config's cache (random moments, so the
    compression the writer applies gains ~nothing: an upper bound for real latents)."""
    f = config.tokenizer.image_size // 8
    rs = np.random.RandomState(0)
    record = latent_cache.encode_record("000000000", "x" * caption_chars, rs.standard_normal((2, f, f, 8)).astype(moments_dtype),
                           np.zeros(config.model.text_tower.context_length), np.zeros(config.model.cond_len),
                           np.zeros(config.model.cond_len))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = os.path.join(tmp, "measure" + latent_cache.SUFFIX)
        writer = ArrayRecordWriter(path, latent_cache.WRITER_OPTIONS)
        for _ in range(num_records):
            writer.write(record)
        writer.close()
        return len(record), os.path.getsize(path) / num_records


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dream_b.py")
    parser.add_argument("--num_records", type=int, default=1000)
    args = parser.parse_args()
    module = os.path.splitext(args.config)[0].replace(os.sep, ".")
    config = importlib.import_module(module).get_config()
    for dtype in ("float16", "float32"):
        record, per_file = record_bytes(config, dtype, num_records=args.num_records)
        print(f"{args.config} moments {dtype}: record {record:,} bytes, {per_file:,.0f} bytes per record in the file")


if __name__ == "__main__":
    main()
