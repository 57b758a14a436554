"""Checkpoints: the train state (params, EMA, optimiser, BN stats) and the grain iterator, in one orbax step.

Saves are asynchronous and keep the last `keep_checkpoints` steps. Restore goes into an abstract target built
for the *current* mesh, so a checkpoint written on 8 devices restores on 1 (or on a pod). A step that fails to
restore (corrupt or half-written) while an older one restores is skipped with a warning and moved aside, so the
resumed run can write that step again; if no step restores, the newest step's error is raised rather than
silently starting a new run over a workdir whose checkpoints do not fit the config.
"""

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
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self):
        return sorted(self._manager.all_steps())

    def save(self, step, state, data_iterator=None):
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step, abstract_state, data_iterator=None):
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

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

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


def _first_line(error, limit=200):
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""


def restore_params(workdir, config, abstract_state, use_ema=True):
    """Params (EMA by default) and BN stats of the newest checkpoint, for sampling, eval and export."""
    manager = Manager(workdir, config, read_only=True)
    if not manager.steps():
        raise FileNotFoundError(f"no checkpoint in {manager.directory}; train first (--mode=train)")
    state, step = manager.restore_latest(abstract_state)
    manager.close()
    if state is None:
        raise FileNotFoundError(f"no restorable checkpoint in {manager.directory}")
    return (state.ema_params if use_ema else state.params), state.batch_stats, step
