"""The training loss and its gradients are the same on one device and sharded as DP, FSDP and FSDP+TP.

`train.loss_fn` of a tiny config (global batch 16, 4 mask groups) is traced as `train.compile_step` does (mesh
set, logical-axis rules active) on (data, fsdp, tensor) meshes (8,1,1), (2,4,1), (2,2,2) and on a single device
(1,1,1). Parameters come from `create_state` on each mesh and must be bit-identical; loss, metrics, updated
BatchNorm statistics and gradients must agree to float32 reduction-order noise. On (2,2,2) a few weights are
checked to be physically split as the axis rules say. The same holds with scanned blocks (model.scan_layers, for
fast compiles) on (2,2,2) against one device: their stacked weights split like unrolled ones.

Dimension letters: B global batch, H/W image size, C CLIP context, Lt cond length, D width, K head dim.
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import dream_tiny
from dream_jax import sharding
from dream_jax import frozen as frozen_lib
from dream_jax import state as state_lib
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.training import train

BATCH = 16
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
RTOL = 1e-4


def _config(shape=(1, 1, 1), scan=False):
    c = dream_tiny.get_config()
    c.model.scan_layers = scan
    # Smaller than the tiny config: compiling 8 XLA programs (state init and step per mesh) dominates this file,
    # at roughly a fixed cost per kernel. One encoder block and one decoder block cover both attention kinds and
    # the MLP; the aligner, CLIP tower and DiffLoss keep only their non-block layers (embeddings, projections,
    # final layers). Every embed / heads / MLP / vocab axis still splits over fsdp and tensor.
    c.model.update({"encoder_depth": 1, "decoder_depth": 1, "aligner_depth": 0, "diffloss_depth": 0, "width": 64,
                    "mlp_dim": 128, "num_heads": 4, "embed_dim": 32, "proj_hidden_dim": 64, "diffloss_width": 64})
    c.model.text_tower.update({"depth": 0, "width": 32, "num_heads": 2})
    # The capacity-planned encoder (the tiny default runs key-masked over all positions), as at the paper's scales.
    c.model.update({"encoder_classes": 2, "encoder_buckets": 4})
    c.batch_size = BATCH
    c.masking.num_groups = 4
    c.diffusion.batch_mul = 2
    c.text.tiny_t5.num_layers = 1
    c.mesh.shape = shape
    return c


def _batch(config):
    rng = np.random.default_rng(0)
    m = config.model
    size = config.tokenizer.image_size
    clip_ids = rng.integers(3, m.text_tower.vocab_size - 1, (BATCH, m.text_tower.context_length))
    clip_ids[np.arange(BATCH), rng.integers(2, m.text_tower.context_length, BATCH)] = m.text_tower.vocab_size - 1
    cond_mask = (np.arange(m.cond_len)[None] < rng.integers(3, m.cond_len, (BATCH, 1))).astype(np.int32)
    return {
        "image": rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8),
        "clip_ids": clip_ids.astype(np.int32),
        "cond_ids": (rng.integers(3, m.text_tower.vocab_size, (BATCH, m.cond_len)) * cond_mask).astype(np.int32),
        "cond_mask": cond_mask,
    }


# Epoch 33 of the tiny config (50 steps per epoch, mu = 0.92): the four group ratios straddle both gates
# (some groups are dropped from the CLIP loss, some from the generative loss); checked below.
STEP = 33 * 50


def _perturbed(params):
    """The same small noise added to every parameter on every mesh, kept in the parameters' shardings.

    At init the DiffLoss adaLN and output layers are zero, which makes the decoder and aligner gradients
    exactly zero; the noise makes every gradient informative.
    """
    rng = np.random.default_rng(1)
    host = jax.device_get(params)
    noisy = jax.tree.map(lambda x: (x + 0.02 * rng.standard_normal(x.shape)).astype(x.dtype), host)
    return jax.device_put(noisy, jax.tree.map(lambda x: x.sharding, params))


def _setup(shape, scan):
    config = _config(shape, scan)
    devices = jax.devices()[:1] if shape == (1, 1, 1) else jax.devices()[:8]
    mesh = sharding.make_mesh(config, devices)
    assert mesh.shape == dict(zip(("data", "fsdp", "tensor"), shape))
    return config, mesh, state_lib.create_state(config, mesh)


def _lower(config, mesh, state):
    """The value-and-grad of train.loss_fn, traced as train.compile_step traces the step; returns (lowered, args)."""
    frozen = jax.device_put(frozen_lib.load(config, tokenizers_lib.make_tokenizers(config)), sharding.replicated(mesh))
    batch = sharding.global_batch(_batch(config), mesh, config)
    args = (_perturbed(state.params), state.batch_stats, frozen, batch, np.int32(STEP))

    def value_and_grad(params, batch_stats, frozen, batch, step):
        return jax.value_and_grad(train.loss_fn, has_aux=True)(params, batch_stats, config, frozen, batch, step)

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.rules(config)):
        return jax.jit(value_and_grad).lower(*args), args


@functools.cache
def _run(shape, scan=False):
    """(state, (loss, metrics, batch_stats, grads)) on one mesh shape; cached so each compiles once."""
    config, mesh, state = _setup(shape, scan)
    lowered, args = _lower(config, mesh, state)
    with jax.set_mesh(mesh):
        (loss, (metrics, stats)), grads = lowered.compile()(*args)
    return state, jax.device_get((loss, metrics, stats, grads))


def _single():
    return _run((1, 1, 1))


def _assert_tree_close(actual, expected, what):
    flat_a = jax.tree_util.tree_leaves_with_path(actual)
    flat_e = jax.tree.leaves(expected)
    assert len(flat_a) == len(flat_e), what
    # Element-wise relative, with an absolute floor at RTOL / 10 of the largest entry of the whole tree: some
    # gradients are exactly zero in exact arithmetic (biases right before BatchNorm) and hold only rounding noise.
    floor = RTOL / 10 * max(np.abs(np.asarray(e)).max() for e in flat_e)
    for (path, a), e in zip(flat_a, flat_e):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(e, np.float64), rtol=RTOL, atol=floor,
                                   err_msg=f"{what} {jax.tree_util.keystr(path)}")


def test_single_device_reference_is_meaningful():
    _, (loss, metrics, _, grads) = _single()
    # Both objectives contribute: some groups pass the generative gate, some samples the CLIP filter.
    assert 0.0 < metrics["gen_active_frac"] < 1.0
    assert 0.0 < metrics["clip_valid_frac"] < 1.0
    assert np.isfinite(loss) and loss > 0
    norms = {k: float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(v)))) for k, v in grads.items()}
    for part in ("encoder", "decoder", "aligner", "text_tower", "image_projection", "diffloss_net"):
        assert norms[part] > 0, (part, norms)
    assert abs(float(grads["logit_scale"])) > 0


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_loss_and_grads_equal_single_device(shape):
    _assert_runs_agree(_run(shape), _single())
    if shape == (2, 2, 2):
        _check_weight_shardings(_run(shape)[0], _config(shape))


def test_scanned_blocks_sharded_equal_single_device():
    state, _ = _run((2, 2, 2), True)
    _assert_runs_agree(_run((2, 2, 2), True), _run((1, 1, 1), True))
    m = _config(scan=True).model
    d, heads, k = m.width, m.num_heads, m.width // m.num_heads
    qkv = state.params["encoder"]["encoder_blocks"]["attn"]["qkv"]["kernel"]
    assert tuple(qkv.sharding.spec) == (None, "fsdp", None, "tensor", None)
    assert {s.data.shape for s in qkv.addressable_shards} == {(1, d // 2, 3, heads // 2, k)}
    fc1 = state.params["decoder"]["decoder_blocks"]["mlp"]["fc1"]["kernel"]
    assert {s.data.shape for s in fc1.addressable_shards} == {(1, d // 2, m.mlp_dim // 2)}


def _assert_runs_agree(run, reference):
    """Bit-identical initial parameters; loss, metrics, BN statistics and gradients equal up to RTOL."""
    state0, (loss0, metrics0, stats0, grads0) = reference
    state, (loss, metrics, stats, grads) = run

    # Same initial parameters whatever the mesh (created directly into their shardings).
    for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(jax.device_get(state0.params))):
        np.testing.assert_array_equal(a, b)

    np.testing.assert_allclose(loss, loss0, rtol=RTOL)
    for k in metrics0:
        np.testing.assert_allclose(metrics[k], metrics0[k], rtol=RTOL, atol=1e-6, err_msg=k)
    # BatchNorm statistics are over the global batch (SyncBN), not per shard.
    _assert_tree_close(stats, stats0, "batch_stats")
    _assert_tree_close(grads, grads0, "grad")


def _check_weight_shardings(state, config):
    p = state.params
    m = config.model
    d, heads, k = m.width, m.num_heads, m.width // m.num_heads

    qkv = p["encoder"]["encoder_blocks_0"]["attn"]["qkv"]["kernel"]
    assert qkv.shape == (d, 3, heads, k)
    assert tuple(qkv.sharding.spec) == ("fsdp", None, "tensor", None)
    assert {s.data.shape for s in qkv.addressable_shards} == {(d // 2, 3, heads // 2, k)}

    fc1 = p["decoder"]["decoder_blocks_0"]["mlp"]["fc1"]["kernel"]
    assert tuple(fc1.sharding.spec) == ("fsdp", "tensor")
    assert {s.data.shape for s in fc1.addressable_shards} == {(d // 2, m.mlp_dim // 2)}

    proj = p["encoder"]["encoder_blocks_0"]["attn"]["proj"]["kernel"]
    assert tuple(proj.sharding.spec) == ("tensor", None, "fsdp")

    table = p["text_tower"]["token_embedding"]
    assert tuple(table.sharding.spec) == ("tensor", "fsdp")

    assert p["logit_scale"].sharding.is_fully_replicated
    # The optimiser moments follow their parameters.
    mu = state.opt_state[1][0].mu["encoder"]["encoder_blocks_0"]["attn"]["qkv"]["kernel"]
    assert mu.sharding.is_equivalent_to(qkv.sharding, qkv.ndim)
