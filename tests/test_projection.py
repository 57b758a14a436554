"""The image projection's BatchNorm against torch's BatchNorm1d, and its variables against flax's nn.BatchNorm.

torch normalises a training batch with the biased variance but updates running_var with the unbiased one; flax's
nn.BatchNorm updates it with the biased one, so our own BatchNorm must match torch in output and both running
statistics, after one and after two train-mode calls (the second starting from the first's statistics), also with
the batch sharded over 8 devices, where the statistics must be global. Its params and batch_stats keep
nn.BatchNorm's names, shapes and partitioning, which checkpoints and the export layout rely on.

Dimension letters: B batch, D input width, P hidden width, E embedding dim.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dream_jax.interop import layout
from dream_jax.models.projection import BatchNorm, ImageProjection

torch = pytest.importorskip("torch")

from dream_jax.interop import torch_modules as tm  # noqa: E402  (needs torch)

B, D, P, E = 8, 12, 16, 6
PREFIX = "image_projection."


def _variables(seed=0):
    """ImageProjection variables with random weights and running statistics (so the update's old value counts)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: nn.unbox(ImageProjection(P, E).init(jax.random.key(0), jnp.zeros((B, D)))))

    def fill(path, leaf):
        name = path[-1].key
        if name == "var":
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        centre = 1.0 if name == "scale" else 0.0
        return (centre + 0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _torch_projection(variables):
    """tm.image_projection loaded through the export table's image_projection entries (the real converter)."""
    table = [e for e in layout.entries(0, 0, 0, 0, 0) if e.key.startswith(PREFIX)]
    nested = {c: {"image_projection": variables[c]} for c in ("params", "batch_stats")}
    state = layout.to_state_dict(table, nested)
    model = tm.image_projection(D, P, E)
    model.load_state_dict({k[len(PREFIX):]: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model.train()


def _mesh8():
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 host devices"
    return Mesh(np.asarray(jax.devices()[:8]), ("data",))


@jax.jit
def _train_step(variables, x):
    out, updates = ImageProjection(P, E).apply(variables, x, True, mutable=["batch_stats"])
    return out, {"params": variables["params"], "batch_stats": updates["batch_stats"]}


@pytest.mark.parametrize("sharded", [False, True])
def test_train_mode_matches_torch_batchnorm1d(sharded):
    variables = _variables()
    model = _torch_projection(variables)
    rng = np.random.default_rng(1)
    for call in range(2):
        # Shifted and scaled inputs so that the batch statistics are far from the running ones.
        x = (2.0 + 3.0 * rng.standard_normal((B, D))).astype(np.float32)
        x_jax = jax.device_put(x, NamedSharding(_mesh8(), PartitionSpec("data"))) if sharded else x
        out, variables = _train_step(variables, x_jax)
        with torch.no_grad():
            ref = model(torch.from_numpy(x))
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"output, call {call + 1}")
        for bn in ("bn1", "bn2"):
            stats, torch_bn = variables["batch_stats"][bn], getattr(model, bn)
            np.testing.assert_allclose(stats["mean"], torch_bn.running_mean.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{bn} running mean, call {call + 1}")
            np.testing.assert_allclose(stats["var"], torch_bn.running_var.numpy(), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{bn} running var, call {call + 1}")
    # Inference uses the running statistics, as torch's eval mode.
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x))
    np.testing.assert_allclose(ImageProjection(P, E).apply(variables, x), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_running_var_is_updated_with_the_unbiased_variance():
    x = np.random.default_rng(2).standard_normal((B, P)).astype(np.float32)
    variables = BatchNorm().init(jax.random.key(0), x, False)
    _, updates = BatchNorm().apply(variables, x, True, mutable=["batch_stats"])
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * np.var(x, axis=0, ddof=1), rtol=1e-6)
    # flax's nn.BatchNorm, for contrast, takes the biased variance.
    flax_bn = nn.BatchNorm(momentum=0.9, epsilon=1e-5)
    _, flax_updates = flax_bn.apply(variables, x, False, mutable=["batch_stats"])
    np.testing.assert_allclose(flax_updates["batch_stats"]["var"], 0.9 + 0.1 * np.var(x, axis=0), rtol=1e-6)


def test_variables_match_flax_batchnorm():
    x = jnp.zeros((B, P))
    ours = BatchNorm().init(jax.random.key(0), x, True)
    flax_bn = nn.BatchNorm(
        momentum=0.9, epsilon=1e-5, dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))
    theirs = flax_bn.init(jax.random.key(0), x, False)
    # Same tree, leaves, dtypes and logical partitioning boxes.
    assert jax.tree.structure(ours, is_leaf=nn.meta.is_axis_metadata) == jax.tree.structure(
        theirs, is_leaf=nn.meta.is_axis_metadata)
    assert nn.get_partition_spec(ours) == nn.get_partition_spec(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype == jnp.float32
        np.testing.assert_array_equal(a, b)


def test_one_sample_batch_is_refused_in_training():
    x = jnp.ones((1, P))
    variables = BatchNorm().init(jax.random.key(0), x, True)
    with pytest.raises(ValueError, match="more than 1 sample"):
        BatchNorm().apply(variables, x, True, mutable=["batch_stats"])
