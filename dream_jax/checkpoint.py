"""Checkpoints: the train state (params, EMA, optimiser, BN stats) and the grain iterator, in one orbax step.

Saves are asynchronous and keep the last `keep_checkpoints` steps. Restore goes into an abstract target built
for the *current* mesh, so a checkpoint written on 8 devices restores on 1 (or on a pod). A step that fails to
restore (corrupt or half-written) is skipped with a warning and the previous one is tried.
"""

import logging
import os

import grain
import orbax.checkpoint as ocp


def checkpoint_dir(workdir):
    return os.path.join(os.path.abspath(workdir) if "://" not in workdir else workdir, "checkpoints")


class Manager:
    """A thin wrapper of orbax's CheckpointManager with a state item and a data item."""

    def __init__(self, workdir, config, read_only=False):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints,
            enable_async_checkpointing=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.directory = checkpoint_dir(workdir)
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
        """(state, step) of the newest restorable step, or (None, None) when there is none."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_state, data_iterator), step
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); trying an older one",
                                step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
        return None, None

    def wait(self):
        self._manager.wait_until_finished()

    def close(self):
        self._manager.wait_until_finished()
        self._manager.close()


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
