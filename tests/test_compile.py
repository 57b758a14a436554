"""--mode=compile (dream_jax.compile): the real train step AOT-compiled for a TPU topology with no TPU attached.

Needs libtpu (the `tpu` extra); skipped without it. The shrunken tiny model (train_helpers.OVERRIDES) is compiled
for v5e:2x2 (4 chips of 16 GiB) as FSDP x data parallel, and the memory report is checked against what the
state's shapes and shardings imply. The B/L/H/G table on pod slices is benchmarks/compile_table.py's (slow).
"""

import jax
import numpy as np
import pytest

import train_helpers as th

pytest.importorskip("libtpu")

from dream_jax import compile as compile_lib  # noqa: E402
from dream_jax import sharding, state as state_lib  # noqa: E402

GIB = 1 << 30


@pytest.fixture(scope="module")
def stats():
    # The leaf-by-leaf optimiser, as a pod runs it: its moments split over fsdp as their params (measured below).
    config = th.tiny_config(compile_topology="v5e:2x2", mesh__shape=(2, 2, 1), optim__flat_update=False)
    return compile_lib.compile_stats(config)


def test_tiny_step_compiles_for_v5e_and_reports_memory(stats):
    assert stats["device_kind"] == "TPU v5 lite" and stats["num_devices"] == 4
    assert stats["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert stats["hbm"] == 16 * GIB
    parts = ("arguments", "outputs", "aliased", "temporaries", "code")
    assert all(stats[k] >= 0 for k in parts) and stats["temporaries"] > 0
    assert stats["total"] == (stats["arguments"] + stats["outputs"] - stats["aliased"] + stats["temporaries"]
                               + stats["code"])
    assert compile_lib.fits(stats) is True

    # FSDP over 2: a device holds a part of the train state (leaves with no `embed` axis stay whole); the
    # donated state is aliased by the new state, so it is not counted twice.
    config = th.tiny_config(compile_topology="v5e:2x2", mesh__shape=(2, 2, 1), optim__flat_update=False)
    devices = compile_lib.topology_devices("v5e:2x2")
    state = state_lib.abstract_state(config, sharding.make_mesh(config, devices))
    per_device = sum(np.prod(s.sharding.shard_shape(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(state))
    # (XLA's sizes are of TPU layouts, padded to tiles, so they exceed the logical bytes of small arrays.)
    assert per_device < 0.7 * stats["state_bytes"]
    assert stats["arguments"] >= per_device and stats["aliased"] >= per_device

    assert stats["xla_flops_per_device"] > 0
    # XLA counts more than the matmuls and attention of flops.py (the VAE-free pixels path has none of its own),
    # but the same order of magnitude.
    ratio = stats["xla_flops_per_device"] * stats["num_devices"] / stats["analytic_flops"]
    assert 0.8 < ratio < 5, ratio


def test_report_text(stats, monkeypatch):
    monkeypatch.setattr(compile_lib, "compile_stats", lambda config: stats)
    text = compile_lib.compile_report(th.tiny_config(compile_topology="v5e:2x2"))
    assert "compiled for v5e:2x2: 4 x TPU v5 lite, mesh data 2 x fsdp 2 x tensor 1" in text
    for line in ("arguments", "temporaries", "outputs", "total", "verdict      FITS", "XLA/analytic"):
        assert line in text
    assert "of 16.00 GiB HBM" in text


def test_bad_topologies_are_user_errors():
    with pytest.raises(ValueError, match="compile_topology is empty"):
        compile_lib.topology_devices("")
    with pytest.raises(ValueError, match="'v5e:3x7x9' is not a topology libtpu can build"):
        compile_lib.topology_devices("v5e:3x7x9")


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("scale", ["B", "L", "H", "G"])
def test_scale_presets_shard_weights_as_configured(scale, scan):
    # configs/base_config.py PARALLELISM on a v5e-256: FSDP over F chips, data parallel over the rest; every weight's
    # `embed` axis splits F ways (abstract state only: nothing is allocated or compiled).
    from dream_jax import base_config

    config = base_config.get_base_config(scale)
    config.model.scan_layers = scan
    fsdp = base_config.PARALLELISM[scale]["mesh"][1]
    mesh = sharding.make_mesh(config, compile_lib.topology_devices("v5e:16x16"))
    assert dict(mesh.shape) == {"data": 256 // fsdp, "fsdp": fsdp, "tensor": 1}
    assert config.model.remat == base_config.PARALLELISM[scale]["remat"]
    params = state_lib.abstract_state(config, mesh).params
    d, heads = config.model.width, config.model.num_heads
    # Scanned blocks: one stacked array per weight, its `layers` axis replicated, the rest as an unrolled block's.
    qkv = params["encoder"]["encoder_blocks" if scan else "encoder_blocks_0"]["attn"]["qkv"]["kernel"]
    layers = (None,) if scan else ()
    assert tuple(qkv.sharding.spec) == layers + ("fsdp", None, "tensor", None)
    depth = (config.model.encoder_depth,) if scan else ()
    assert qkv.sharding.shard_shape(qkv.shape) == depth + (d // fsdp, 3, heads, d // heads)
    fc1 = params["decoder"]["decoder_blocks" if scan else "decoder_blocks_0"]["mlp"]["fc1"]["kernel"]
    assert fc1.sharding.shard_shape(fc1.shape) == depth + (d // fsdp, config.model.mlp_dim)
    assert params["logit_scale"].sharding.is_fully_replicated
