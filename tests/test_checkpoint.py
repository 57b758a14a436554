"""Tests of dream_jax.checkpoint: restoring on another topology, and skipping corrupt or half-written steps.

The train state here has random values put straight into its shardings (no training, nothing compiled).
"""

import logging
import os
import shutil

import grain
import jax
import ml_collections
import numpy as np
import pytest

import train_helpers as th
from dream_jax import checkpoint, sharding, state as state_lib
from dream_jax.training import train


def _random_state(abstract, seed=0):
    """Random values with the shapes, dtypes and shardings of an abstract train state."""
    rng = np.random.default_rng(seed)

    def fill(leaf):
        if np.issubdtype(leaf.dtype, np.floating):
            value = rng.standard_normal(leaf.shape).astype(leaf.dtype)
        else:
            value = rng.integers(0, 1000, leaf.shape).astype(leaf.dtype)
        return jax.device_put(value, leaf.sharding)

    return jax.tree.map(fill, abstract)


def test_fsdp_checkpoint_on_8_devices_restores_on_1(tmp_path):
    assert jax.device_count() == 8
    config = th.tiny_config(mesh__shape=(1, 8, 1), optim__flat_update=False)  # moments sharded as their params
    fsdp_mesh = sharding.make_mesh(config)
    assert fsdp_mesh.shape == {"data": 1, "fsdp": 8, "tensor": 1}
    state = _random_state(train.abstract_state(config, fsdp_mesh))
    split = [x for x in jax.tree.leaves(state) if not x.sharding.is_fully_replicated]
    assert len(split) > 10 and all(len(x.sharding.device_set) == 8 for x in split)

    manager = checkpoint.Manager(str(tmp_path), config)
    manager.save(3, state)
    manager.close()

    single = sharding.make_mesh(th.tiny_config(mesh__shape=(1, 1, 1)), jax.devices()[:1])
    manager = checkpoint.Manager(str(tmp_path), config, read_only=True)
    restored, step = manager.restore_latest(train.abstract_state(config, single))
    assert step == 3
    assert all(x.sharding.device_set == {jax.devices()[0]} for x in jax.tree.leaves(restored))
    th.assert_trees_equal(restored, state)
    # ... and back onto the 8-device mesh, into the same shardings it was written from.
    again = manager.restore(3, train.abstract_state(config, fsdp_mesh))
    manager.close()
    assert all(a.sharding == b.sharding for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(state)))
    th.assert_trees_equal(again, state)


def test_restore_target_is_traced_once_for_a_locked_config_and_its_copy():
    """The command line's config is locked, copies of it (report.final_config) are not: one cached trace serves both."""
    config = th.tiny_config()
    config.lock()
    copy = ml_collections.ConfigDict(config.to_dict())
    assert state_lib._abstract_boxed_state(config) is state_lib._abstract_boxed_state(copy)


def test_replicated_state_on_8_devices_saves_without_compiling(tmp_path):
    """On one process each replicated array is written from one replica: orbax's replica-parallel default would
    slice every array on every device with an eagerly compiled op (25 s for the tiny state's first save)."""
    mesh = sharding.make_mesh(th.tiny_config(mesh__shape=(8, 1, 1)))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = {f"w{i}": jax.device_put(np.full((8 * (i + 1), 16), i, np.float32), replicated) for i in range(4)}
    with th.backend_compiles() as compiles:
        manager = checkpoint.Manager(str(tmp_path), th.tiny_config())
        manager.save(1, state)
        manager.close()
    assert compiles == []
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    manager = checkpoint.Manager(str(tmp_path), th.tiny_config(), read_only=True)
    th.assert_trees_equal(manager.restore_latest(abstract)[0], state)
    manager.close()


# ------------------------------------------------------------------------------------- corrupt checkpoints
def _small_state(value):
    return {"w": np.full((64, 32), value, np.float32), "b": {"count": np.arange(7, dtype=np.int32) + int(value)}}


def _abstract_small():
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), _small_state(0))


def _data_iterator():
    return iter(grain.MapDataset.range(1000).batch(4).to_iter_dataset())


def _truncate_files(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def _delete_state(step_dir):
    shutil.rmtree(os.path.join(step_dir, "state"))


def _delete_data(step_dir):
    shutil.rmtree(os.path.join(step_dir, "data"))


def _bogus_newer_step(step_dir):
    os.makedirs(os.path.join(os.path.dirname(step_dir), "3"))


CONFIG = ml_collections.ConfigDict(dict(keep_checkpoints=3))


@pytest.fixture
def two_steps(tmp_path):
    """A workdir with steps 1 and 2; the data iterator had yielded 1 and 2 batches at them."""
    manager = checkpoint.Manager(str(tmp_path), CONFIG)
    data = _data_iterator()
    for step in (1, 2):
        next(data)
        manager.save(step, _small_state(step), data)
    manager.close()
    return tmp_path


@pytest.mark.parametrize("corrupt,bad_step", [(_truncate_files, 2), (_delete_state, 2), (_delete_data, 2),
                                              (_bogus_newer_step, 3)])
def test_corrupt_newest_step_is_skipped_with_a_warning(two_steps, corrupt, bad_step, caplog):
    directory = os.path.join(two_steps, "checkpoints")
    corrupt(os.path.join(directory, "2"))
    manager = checkpoint.Manager(str(two_steps), CONFIG)
    data = _data_iterator()
    with caplog.at_level(logging.WARNING):
        state, step = manager.restore_latest(_abstract_small(), data)
    previous = bad_step - 1
    assert step == previous
    th.assert_trees_equal(state, _small_state(previous))
    np.testing.assert_array_equal(next(data), 4 * previous + np.arange(4))  # resumes after that step's batches
    assert any(f"checkpoint step {bad_step} " in r.getMessage() and "cannot be restored" in r.getMessage()
               for r in caplog.records), caplog.text
    # The run goes on past the bad step: writing that step again must work, and it then restores.
    assert bad_step not in manager.steps()
    assert any(n.startswith(f"{bad_step}.unrestorable") for n in os.listdir(directory))
    manager.save(bad_step, _small_state(bad_step), data)
    manager.close()
    manager = checkpoint.Manager(str(two_steps), CONFIG, read_only=True)
    state, step = manager.restore_latest(_abstract_small())
    manager.close()
    assert step == bad_step
    th.assert_trees_equal(state, _small_state(bad_step))


def test_no_restorable_step_is_an_error_not_a_fresh_start(two_steps):
    for step in ("1", "2"):
        _delete_state(os.path.join(two_steps, "checkpoints", step))
    manager = checkpoint.Manager(str(two_steps), CONFIG)
    with pytest.raises(ValueError, match="no checkpoint in .* can be restored; the newest, step 2"):
        manager.restore_latest(_abstract_small())
    manager.close()
    assert sorted(os.listdir(os.path.join(two_steps, "checkpoints"))) == ["1", "2"]  # nothing moved


def test_a_config_that_does_not_fit_names_the_array_and_moves_nothing(two_steps):
    abstract = _abstract_small()
    abstract["b"]["count"] = jax.ShapeDtypeStruct((8,), np.int32, sharding=abstract["b"]["count"].sharding)
    manager = checkpoint.Manager(str(two_steps), CONFIG)
    with pytest.raises(ValueError, match=r"the newest, step 2, failed with ValueError: b/count is \(7,\) in the "
                                         r"checkpoint but \(8,\) in this config \(does the config match"):
        manager.restore_latest(abstract)
    manager.close()
    assert sorted(os.listdir(os.path.join(two_steps, "checkpoints"))) == ["1", "2"]


def test_a_second_writer_of_a_workdir_is_refused_until_the_first_closes(two_steps):
    first = checkpoint.Manager(str(two_steps), CONFIG)
    with pytest.raises(ValueError, match=rf"{two_steps} is in use by process {os.getpid()} \(it holds "
                                         r".*\.lock\); wait for that run to end or use another --workdir"):
        checkpoint.Manager(str(two_steps), CONFIG)
    reader = checkpoint.Manager(str(two_steps), CONFIG, read_only=True)  # sampling / eval beside training is fine
    assert reader.steps() == [1, 2]
    reader.close()
    first.close()
    checkpoint.Manager(str(two_steps), CONFIG).close()


def test_read_only_restore_leaves_corrupt_steps_in_place(two_steps):
    _delete_state(os.path.join(two_steps, "checkpoints", "2"))
    manager = checkpoint.Manager(str(two_steps), CONFIG, read_only=True)
    _, step = manager.restore_latest(_abstract_small())
    manager.close()
    assert step == 1
    assert sorted(os.listdir(os.path.join(two_steps, "checkpoints"))) == ["1", "2"]


def test_empty_workdir_restores_nothing(tmp_path):
    manager = checkpoint.Manager(str(tmp_path), CONFIG)
    assert manager.restore_latest(_abstract_small(), _data_iterator()) == (None, None)
    manager.close()
