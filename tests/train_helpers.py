"""Helpers shared by the training-system tests: one shrunken tiny config and `python -m dream_jax.main` runs.

The same overrides serve in-process configs and subprocess command lines, so both compile the same train step.
Subprocesses see one CPU device (a bit-exact resume needs no mesh; the fsdp restore test covers topologies) and
share a persistent compilation cache in pytest's cache directory, so only the first run of a session compiles.
"""

import contextlib
import json
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np

import xla_flags
from configs import dream_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = "configs/dream_tiny.py"

# A one-block DREAM at width 64; fixed 60% masking keeps both losses active from step 1 (the warmup schedule
# masks ~0% early on, which gates the generation loss off), and a constant LR without warmup lets it learn fast.
OVERRIDES = {
    "batch_size": 16,
    "model.width": 64,
    "model.num_heads": 2,
    "model.mlp_dim": 128,
    "model.encoder_depth": 1,
    "model.decoder_depth": 1,
    "model.text_tower.depth": 1,
    "model.text_tower.width": 32,
    "model.embed_dim": 32,
    "model.proj_hidden_dim": 64,
    "model.diffloss_depth": 1,
    "model.diffloss_width": 64,
    "text.tiny_t5.num_layers": 1,
    "masking.kind": "fixed",
    "masking.fixed_ratio": 0.6,
    "optim.warmup_epochs": 0.0,
    "optim.base_lr": 0.016,
    # AdamW's moments as two flat vectors: the step compiles in 0.6x the time (benchmarks/compile_split.py);
    # the leaf-by-leaf optimiser stays covered by the tests that build on dream_tiny's own config.
    "optim.flat_update": True,
    "data.num_examples": 512,
    "log_every": 1,
    "final_samples": 0,  # the end-of-training report has its own test (test_learning.py)
    "final_evals": (),
}


def tiny_config(**extra):
    """dream_tiny with OVERRIDES and `extra` (dotted names with '__' for '.') applied."""
    config = dream_tiny.get_config()
    for name, value in {**OVERRIDES, **{k.replace("__", "."): v for k, v in extra.items()}}.items():
        *parents, leaf = name.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def main_args(workdir, **extra):
    """The command-line arguments of `python -m dream_jax.main` for tiny_config(**extra) in `workdir`."""
    values = {**OVERRIDES, **{k.replace("__", "."): v for k, v in extra.items()}}
    return [f"--config={CONFIG_FILE}", f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in values.items()]


def subprocess_env(devices=1, optimized=False):
    """The test process's environment with `devices` CPU devices (with one, conftest's persistent compilation cache
    of the session, every program cached); `optimized`: without xla_flags.FAST_COMPILE, for a run whose time is its
    steps rather than its compilation."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    if optimized:
        flags = flags.replace(xla_flags.FAST_COMPILE, "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_ENABLE_COMPILATION_CACHE"] = str(devices == 1).lower()  # conftest.py: one-device processes only
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return env


@contextlib.contextmanager
def backend_compiles():
    """Yields a list that collects the seconds of every XLA backend compilation made inside the block."""
    compiles = []

    def listen(event, seconds, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def one_cpu():
    """The last CPU this process may run on, as a set for `start(cpus=...)`.

    A run whose time is its steps (test_learning.py) runs on one core: on the suite's 2 cores, beside the other
    xdist worker, XLA:CPU's two compute threads cost more CPU time than one (docs/BENCHMARKS.md, "One core for the
    learning run"), and the run's float rounding no longer depends on the machine's core count. None (no pinning)
    where the OS has no CPU affinity (macOS)."""
    return {max(os.sched_getaffinity(0))} if hasattr(os, "sched_setaffinity") else None


def start(args, env, log_path, module=("-m", "dream_jax.main"), cpus=None):
    """Starts `python -m dream_jax.main ARGS` (or `python SCRIPT ARGS`) with stdout and stderr in `log_path`;
    `cpus`: the set of CPUs it may run on (default: this process's)."""
    log = open(log_path, "w")
    try:
        return subprocess.Popen([sys.executable, *module, *args], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT,
                                preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus))
    finally:
        log.close()


def run(args, env, log_path, timeout=300, module=("-m", "dream_jax.main"), cpus=None):
    """Runs to completion; returns (exit code, combined output)."""
    proc = start(args, env, log_path, module, cpus)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return code, read(log_path)


def read(path):
    with open(path) as f:
        return f.read()


def wait_for(predicate, proc, timeout=300, interval=0.02, what="condition"):
    """Polls `predicate()` until true; fails if `proc` exits first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run exited (code {proc.returncode}) before {what}")
        time.sleep(interval)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def finalized_steps(workdir):
    """Steps whose checkpoint directory orbax has finalized (renamed from its temporary name)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(n) for n in os.listdir(directory)
                  if n.isdigit() and os.path.exists(os.path.join(directory, n, "_CHECKPOINT_METADATA")))


def metrics_by_step(workdir):
    """metrics.jsonl as {step: record}; a step logged twice (before a kill and after the resume) keeps the last."""
    records = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            records[record["step"]] = record
    return records


def random_like(tree, seed):
    """Random float32 values in the shapes of `tree` (arrays or shape structs): LN/BN scales near 1, BN variances
    positive, everything else N(0, 0.1^2), so that zero-initialised layers carry signal too."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return (1 + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)
        if name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, tree)


def assert_trees_equal(a, b):
    """Same structure, dtypes and bits in every leaf."""
    leaves_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
    assert tree_a == tree_b
    for (path, x), (_, y) in zip(leaves_a, leaves_b):
        x, y = np.atleast_1d(np.asarray(x)), np.atleast_1d(np.asarray(y))
        assert x.dtype == y.dtype, jax.tree_util.keystr(path)
        assert x.shape == y.shape, jax.tree_util.keystr(path)
        assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{jax.tree_util.keystr(path)} differs"


def grid_cells(grid, rows, cols, size, pad=2):
    """Inverse of imaging.grid for an upscaled grid: [rows, cols, size, size, 3] (nearest-neighbour down)."""
    cell = (grid.shape[0] - pad) // rows - pad
    up = cell // size
    out = np.zeros((rows, cols, size, size, 3), np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = pad + r * (cell + pad), pad + c * (cell + pad)
            out[r, c] = grid[y:y + cell:up, x:x + cell:up]
    return out
