"""Device mesh, logical-axis rules and the shardings of arrays that flow into the train step.

One `(data, fsdp, tensor)` mesh is built from `config.mesh.shape` (-1 = the remaining devices); the model's
logical names are mapped to mesh axes by `config.axis_rules`, so DP, FSDP and TP differ only in the mesh shape.
Host-local batches become global arrays with `jax.make_array_from_process_local_data`.

Dimension letters: B global batch, b per-process batch.
"""

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def mesh_shape(shape, num_devices):
    """Resolves one -1 in the mesh shape; raises ValueError if the product does not match the devices."""
    shape = list(shape)
    if any(s != -1 and (s < 1 or s != int(s)) for s in shape):
        raise ValueError(f"mesh.shape={tuple(shape)}: every entry must be a positive integer or -1")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh.shape={tuple(shape)} has more than one -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh.shape={tuple(shape)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh.shape={tuple(shape)} needs {math.prod(shape)} devices, {num_devices} are present")
    return tuple(shape)


def make_mesh(config, devices=None):
    """The (data, fsdp, tensor) mesh of the config over `devices` (default: all, or the first
    `mesh.num_devices` when that is set, e.g. 1 to run on one of several local devices).

    On TPU the devices are laid out along the physical torus (mesh_utils), so each mesh axis is a ring of
    neighbouring chips; elsewhere (and where the shape does not fit the torus) in process-then-id order.
    """
    if devices is None:
        devices = jax.devices()
        if config.mesh.get("num_devices", 0):
            if config.mesh.num_devices > len(devices):
                raise ValueError(f"mesh.num_devices={config.mesh.num_devices} but only {len(devices)} devices exist")
            devices = devices[:config.mesh.num_devices]
    if len(config.mesh.shape) != len(config.mesh.axes):
        raise ValueError(f"mesh.shape={tuple(config.mesh.shape)} has {len(config.mesh.shape)} entries but mesh.axes="
                         f"{tuple(config.mesh.axes)} names {len(config.mesh.axes)}")
    shape = mesh_shape(config.mesh.shape, len(devices))
    grid = np.asarray(devices).reshape(shape)
    if devices[0].platform == "tpu":
        from jax.experimental import mesh_utils

        try:
            grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError, AssertionError):
            pass  # a shape the torus cannot host as rings: the plain order still runs, with slower collectives
    return jax.sharding.Mesh(grid, tuple(config.mesh.axes))


def rules(config):
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.axis_rules)


def logical_shardings(abstract_boxed, mesh, config):
    """NamedShardings for a pytree whose leaves carry logical partitioning metadata (from jax.eval_shape)."""
    specs = nn.get_partition_spec(abstract_boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, rules(config))


# Frozen (T5 / VAE) leaves at least this large are split over `fsdp` like the trainable weights; the rest (norms,
# biases, small convs) stay replicated. T5-Large's encoder is 1.3 GB in float32, too much to copy to every chip.
FROZEN_SHARD_MIN_SIZE = 1 << 18


def frozen_shardings(frozen, mesh):
    """NamedShardings of the frozen pytree: big leaves split on their largest `fsdp`-divisible axis.

    The frozen modules carry no logical names (they mirror third-party checkpoints), so the rule is by shape;
    under jit XLA gathers each layer's weights where it runs, as for FSDP.
    """
    fsdp = mesh.shape.get("fsdp", 1)

    def leaf_sharding(x):
        shape = np.shape(x)
        if fsdp == 1 or math.prod(shape) < FROZEN_SHARD_MIN_SIZE:
            return replicated(mesh)
        axes = [a for a in np.argsort(shape)[::-1] if shape[a] % fsdp == 0]
        if not axes:
            return replicated(mesh)
        spec = [None] * len(shape)
        spec[axes[0]] = "fsdp"
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(leaf_sharding, frozen)


def batch_sharding(mesh, config, ndim=1):
    """Leading axis over the mesh axes that `batch` maps to; the rest replicated."""
    axes = dict(rules(config))["batch"]
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch, mesh, config):
    """Host-local numpy arrays [b, ...] -> global jax arrays [B, ...] sharded over the batch axes."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, config, np.ndim(x)), x), local_batch
    )


def batch_divisor(mesh, config):
    """How many shards the batch axis is split into (the global batch must be a multiple)."""
    axes = dict(rules(config))["batch"]
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)
