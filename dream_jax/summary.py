"""Metrics out, without TensorFlow: TensorBoard events (tensorboardX), a JSONL log, and a progress line.

Only process 0 writes (`enabled`); other processes get a writer that does nothing, as flax's examples do.
A run resumed from a checkpoint at step s drops what an interrupted run logged after s (JSONL records, and
TensorBoard events via its purge step), so every step appears once in both.
"""

import json
import os
import sys
import time

import numpy as np


class Writer:
    """Scalars to `workdir/tensorboard` (event files) and `workdir/metrics.jsonl`; images as PNG files."""

    def __init__(self, workdir, enabled=True, resume_step=None):
        """`resume_step`: the step training restarts from (0 for a fresh start); None keeps everything logged."""
        self.enabled = enabled
        self.workdir = workdir
        self._tb = None
        self._jsonl = None
        if enabled:
            path = os.path.join(workdir, "metrics.jsonl")
            purge_step = None
            if _is_remote(workdir):  # gs://: tensorboardX writes it itself (google-cloud-storage, the gcs extra)
                self._jsonl = _RemoteLines(path, resume_step)
                purge_step = None if resume_step is None else resume_step + 1
            else:
                os.makedirs(workdir, exist_ok=True)
                if resume_step is not None:
                    _drop_records_after(path, resume_step)
                    purge_step = resume_step + 1
                self._jsonl = open(path, "a")
            self._tb = _summary_writer_class()(os.path.join(workdir, "tensorboard"), purge_step=purge_step)

    def scalars(self, step, values):
        if not self.enabled:
            return
        for name, value in values.items():
            self._tb.add_scalar(name, float(value), step)
        self._jsonl.write(json.dumps({"step": int(step), **{k: float(v) for k, v in values.items()}}) + "\n")
        self._jsonl.flush()
        self._tb.flush()

    def write_config(self, config):
        if self.enabled:
            from etils import epath

            epath.Path(self.workdir, "config.json").write_text(config.to_json_best_effort(indent=2))

    def close(self):
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported with torch hidden where torch is not loaded yet: tensorboardX imports
    torch when it is installed (the export extra; 3.4 s at the start of every run here) only to accept torch
    tensors, and this writer passes floats."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, as where torch is not installed
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _is_remote(path):
    return "://" in str(path)


class _RemoteLines:
    """The JSONL log in object storage (no appends there): kept in memory and rewritten whole at each flush."""

    def __init__(self, path, resume_step):
        from etils import epath

        self._path = epath.Path(path)
        lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
        if resume_step is not None:
            lines = [line.rstrip("\n") + "\n" for line in lines if line.strip() and _record_step(line) <= resume_step]
        self._lines = lines

    def write(self, text):
        self._lines.append(text)

    def flush(self):
        self._path.write_text("".join(self._lines))

    def close(self):
        self.flush()


def _drop_records_after(path, step):
    """Rewrites the JSONL log without records of steps after `step` (logged by a run that was interrupted)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = [line.rstrip("\n") + "\n" for line in lines if line.strip() and _record_step(line) <= step]
    if kept == lines:
        return
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


def _record_step(line):
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return float("inf")


def format_seconds(seconds):
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Steps/s, examples/s and ETA between successive updates, leaving out the time handed to `pause`.

    The train loop hands in the seconds it spent compiling a step (and evaluating), so the first line's rate is
    the steady one and the ETA (remaining steps at the median rate of the last 5 intervals) holds from the start.
    """

    def __init__(self, start_step, total_steps, batch_size, clock=time.monotonic):
        self.total = total_steps
        self.batch_size = batch_size
        self._clock = clock
        self._last_step = start_step
        self._last_time = clock()
        self._paused = 0.0
        self._rates = []

    def pause(self, seconds):
        """Leaves `seconds` of the current interval out of its rate (compilation, evaluation)."""
        self._paused += max(0.0, seconds)

    def update(self, step):
        now = self._clock()
        rate = (step - self._last_step) / max(now - self._last_time - self._paused, 1e-9)
        self._last_step, self._last_time, self._paused = step, now, 0.0
        self._rates.append(rate)
        recent = float(np.median(self._rates[-5:]))
        return {"steps_per_sec": rate, "examples_per_sec": rate * self.batch_size,
                "eta_sec": (self.total - step) / max(recent, 1e-9)}

    def line(self, step, values):
        shown = " ".join(f"{k}={values[k]:.4g}" for k in ("loss", "gen_loss", "clip_loss", "clip_acc", "lr")
                         if k in values)
        return (f"step {step}/{self.total} ({100 * step / self.total:.1f}%) {shown} "
                f"{values['steps_per_sec']:.2f} steps/s ETA {format_seconds(values['eta_sec'])}")
