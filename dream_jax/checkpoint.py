"""Checkpoints: the train state (params, EMA, optimiser, BN stats) and the grain iterator, in one orbax step.

Saves are asynchronous and keep the last `keep_checkpoints` steps. Restore goes into an abstract target built
for the *current* mesh, so a checkpoint written on 8 devices restores on 1 (or on a pod). A step that fails to
restore (corrupt or half-written) while an older one restores is skipped with a warning and moved aside, so the
resumed run can write that step again; if no step restores, the newest step's error is raised rather than
silently starting a new run over a workdir whose checkpoints do not fit the config.
"""

import fcntl
import logging
import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


def checkpoint_dir(workdir):
    return os.path.join(os.path.abspath(workdir) if "://" not in workdir else workdir, "checkpoints")


class Manager:
    """A thin wrapper of orbax's CheckpointManager with a state item and a data item."""

    def __init__(self, workdir, config, read_only=False):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else config.keep_checkpoints,
            save_interval_steps=0 if read_only else 1,
            enable_async_checkpointing=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.directory = checkpoint_dir(workdir)
        self._read_only = read_only
        self._lock = None if read_only else _lock_workdir(os.path.dirname(self.directory))
        _write_each_array_once()
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self):
        return sorted(self._manager.all_steps())

    def save(self, step, state, data_iterator=None):
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step, abstract_state, data_iterator=None):
        """The state of `step`, and the data iterator's position (also from a run with another process count)."""
        _check_shapes(epath.Path(self.directory) / str(step) / "state", abstract_state)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        data_dir = epath.Path(self.directory) / str(step) / "data"
        written_by = _data_process_count(data_dir) if data_iterator is not None else None
        same_processes = written_by in (None, jax.process_count())
        if data_iterator is not None and same_processes:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        state = self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
        if data_iterator is not None and not same_processes:
            data_iterator.set_state(_rescaled_data_state(data_dir, written_by, jax.process_count()))
            logging.warning("step %d was written by %d processes; the data stream resumes at the same global "
                            "position on %d", step, written_by, jax.process_count())
        return state

    def restore_latest(self, abstract_state, data_iterator=None):
        """(state, step) of the newest restorable step, or (None, None) when there is no step at all.

        Newer steps that fail while an older one restores are corrupt or half-written: each is logged as a
        warning and renamed to `<step>.unrestorable-<time>` (kept for inspection; orbax no longer lists it).
        Raises ValueError when steps exist but none restores (e.g. a config that does not match them).
        """
        failed = []
        for step in reversed(self.steps()):
            try:
                state = self.restore(step, abstract_state, data_iterator)
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying an older one",
                                step, self.directory, type(e).__name__, _first_line(e))
                failed.append((step, e))
                continue
            self._set_aside([s for s, _ in failed])
            return state, step
        if failed:
            step, e = failed[0]
            raise ValueError(f"no checkpoint in {self.directory} can be restored; the newest, step {step}, failed "
                             f"with {type(e).__name__}: {_first_line(e)} (does the config match the one that "
                             "wrote it? use a new --workdir to start over)") from e
        return None, None

    def _set_aside(self, steps):
        """Renames unrestorable step directories out of orbax's view, so those steps can be saved again."""
        if not steps or self._read_only:
            return
        if jax.process_index() == 0:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                path = epath.Path(self.directory) / str(step)
                target = path.parent / f"{step}.unrestorable-{stamp}"
                path.rename(target)
                logging.warning("moved the unrestorable checkpoint step %d to %s", step, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("dream_jax_checkpoint_set_aside")
        self._manager.reload()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()
        if self._lock is not None:
            self._lock.close()  # closing the file releases its flock
            self._lock = None


def _lock_workdir(workdir):
    """An exclusive flock on WORKDIR/.lock (holding the writer's PID) while a writing Manager is open, so that a
    second job on the same workdir fails at once instead of interleaving its checkpoints and metrics with the
    first's. The kernel drops it when the process dies: a killed run leaves nothing to clean up. Process 0 only (a
    multi-host job shares the workdir) and local paths only (gs:// has no flock); None there."""
    if "://" in workdir or jax.process_index() != 0:
        return None
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, ".lock")
    lock = open(path, "a+")  # noqa: SIM115 - held open until close(); "a+" keeps the holder's PID readable
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ValueError(f"{workdir} is in use by process {holder} (it holds {path}); wait for that run to end or "
                         "use another --workdir") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _write_each_array_once():
    """On one process, each array is saved from a single replica instead of orbax's replica-parallel default.

    Replica-parallel saving (every replica writes a slice of a replicated array, so a pod's hosts share the write)
    slices each array on each of its devices with an eager op, compiled per device and shape: on one host it
    only costs time (25 s of the tiny state's first save on 8 CPU devices; the files are the same either way).
    """
    current = ocp.type_handlers.get_type_handler(jax.Array)
    if jax.process_count() > 1 or getattr(current, "_use_replica_parallel", None) is False:
        return
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that it overrides its own default handler
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    finally:
        absl_logger.setLevel(level)


def _check_shapes(state_dir, abstract_state):
    """ValueError naming the first array whose stored shape differs from `abstract_state`'s, read from the step's
    metadata before orbax restores anything (a restore of a mismatched state fails deep in orbax, and its pending
    reads then print tracebacks as the process exits). Arrays missing on either side are left to orbax."""
    handler = ocp.StandardCheckpointHandler()
    try:
        stored = handler.metadata(state_dir)
    finally:
        handler.close()
    shapes = {_name(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(stored)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state):
        name = _name(path)
        if shapes.get(name, tuple(leaf.shape)) != tuple(leaf.shape):
            raise ValueError(f"{name} is {shapes[name]} in the checkpoint but {tuple(leaf.shape)} in this config")


def _name(path):
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _data_process_count(data_dir):
    """How many processes wrote the grain states (`process_<i>-of-<n>.json`) in `data_dir`; None if none did."""
    counts = {name.rsplit("-of-", 1)[1].removesuffix(".json") for name in
              (p.name for p in data_dir.glob("process_*-of-*.json"))} if data_dir.exists() else set()
    return int(counts.pop()) if len(counts) == 1 else None


def _rescaled_data_state(data_dir, written_by, process_count):
    """This process's iterator state after `written_by` processes: the same global position, split evenly.

    pipeline.ProcessChunks makes the global stream independent of the process count, so the position is the sum
    of the per-process positions. Only the plain `{"next_index": n}` state (no grain worker processes) converts.
    """
    import json

    states = [json.loads((data_dir / f"process_{i}-of-{written_by}.json").read_text()) for i in range(written_by)]
    if not all(isinstance(s, dict) and set(s) == {"next_index"} for s in states):
        raise ValueError(f"the data iterator state in {data_dir} (from {written_by} processes) cannot be carried to "
                         f"{process_count} processes: resume with {written_by} processes or data.num_workers <= 1")
    total = sum(int(s["next_index"]) for s in states)
    if total % process_count:
        raise ValueError(f"the data position {total} in {data_dir} does not split over {process_count} processes")
    return {"next_index": total // process_count}


def _first_line(error, limit=200):
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""


def restore_newest(workdir, config, abstract_state):
    """(state, step) of the newest restorable checkpoint, for sampling, eval and export; FileNotFoundError if
    there is none."""
    manager = Manager(workdir, config, read_only=True)
    if not manager.steps():
        raise FileNotFoundError(f"no checkpoint in {manager.directory}; train first (--mode=train)")
    state, step = manager.restore_latest(abstract_state)
    manager.close()
    if state is None:
        raise FileNotFoundError(f"no restorable checkpoint in {manager.directory}")
    return state, step
