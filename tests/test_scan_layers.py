"""Scanned blocks (model.scan_layers) against unrolled ones: the same parameters in another layout, the same numbers.

Random unrolled weights move to the scanned layout through the authors' state_dict (export/layout.py both ways),
so one comparison checks the layout table's stacked entries and the nn.scan model together: forward outputs and
gradients of every tower (encoder with capacity classes, decoder, aligner, CLIP tower) agree, under every remat
policy (and remat on unrolled blocks). No torch needed.

Dimension letters: B batch, L tokens, T token dim, C CLIP context, Lt cond length, Dt cond width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import train_helpers as th

from dream_jax import state as state_lib
from dream_jax.interop import layout, to_pytorch
from dream_jax.models.dream import DREAM

BATCH = 4
# Two capacity classes of two examples: 12 and 4 visible tokens of 16 (the gathered encoder path).
CAPACITY = (12, 4)


def _config(scan, remat="none"):
    return th.tiny_config(model__encoder_depth=2, model__decoder_depth=2, model__aligner_depth=2,
                          model__text_tower__depth=2, model__scan_layers=scan, model__remat=remat)


def _inputs(config):
    rng = np.random.default_rng(0)
    m = config.model
    mask = np.ones((BATCH, m.seq_len), bool)
    for b, visible in enumerate((12, 9, 4, 3)):
        mask[b, rng.permutation(m.seq_len)[:visible]] = False
    ids = rng.integers(1, m.text_tower.vocab_size - 1, (BATCH, m.text_tower.context_length)).astype(np.int32)
    return (rng.standard_normal((BATCH, m.seq_len, m.token_dim)).astype(np.float32), mask, ids,
            rng.standard_normal((BATCH, m.cond_len, m.cond_dim)).astype(np.float32))


def _to_scanned(variables):
    """Unrolled variables -> the scanned config's, through the authors' state_dict."""
    state_dict = layout.to_state_dict(to_pytorch.table(_config(False)), variables)
    scanned = _config(True)
    return layout.from_state_dict(to_pytorch.table(scanned), state_dict, state_lib.abstract_variables(scanned))


@pytest.fixture(scope="module")
def unrolled():
    return th.random_like(state_lib.abstract_variables(_config(False)), 0)


def _outputs_and_grads(config, variables):
    """(img, txt, z) of the full forward and the gradient of a scalar of all three, in the authors' layout."""
    inputs, m = _inputs(config), config.model
    weights = [np.random.default_rng(i).standard_normal(s).astype(np.float32)
               for i, s in enumerate(((BATCH, m.embed_dim), (BATCH, m.embed_dim), (BATCH, m.seq_len, m.width)))]

    def forward(params):
        img, txt, z, _ = DREAM(config.model, capacity=CAPACITY).apply({"params": params, "batch_stats": variables["batch_stats"]},
                                                   *inputs)
        return sum(jnp.sum(w * o) for w, o in zip(weights, (img, txt, z))), (img, txt, z)

    grads, outputs = jax.jit(jax.grad(forward, has_aux=True))(variables["params"])
    grads = layout.to_state_dict(to_pytorch.table(config), {"params": jax.device_get(grads),
                                                            "batch_stats": variables["batch_stats"]})
    return jax.device_get(outputs), grads


def test_scanned_parameters_are_the_unrolled_blocks_stacked(unrolled):
    scanned = _to_scanned(unrolled)
    qkv = scanned["params"]["encoder"]["encoder_blocks"]["attn"]["qkv"]["kernel"]
    np.testing.assert_array_equal(qkv, np.stack([unrolled["params"]["encoder"][f"encoder_blocks_{i}"]["attn"]["qkv"]
                                                 ["kernel"] for i in range(2)]))
    fc1 = scanned["params"]["text_tower"]["transformer_resblocks"]["mlp"]["fc1"]["bias"]
    assert fc1.shape == (2, 4 * 32)
    # Same keys, order and arrays in the authors' layout; the stacked tree has no unrolled block left.
    back = layout.to_state_dict(to_pytorch.table(_config(True)), scanned)
    there = layout.to_state_dict(to_pytorch.table(_config(False)), unrolled)
    assert list(back) == list(there)
    for key in there:
        np.testing.assert_array_equal(back[key], there[key], err_msg=key)
    assert "encoder_blocks_0" not in scanned["params"]["encoder"]
    assert jax.tree_util.tree_structure(jax.tree.map(np.shape, scanned)) == jax.tree_util.tree_structure(
        jax.tree.map(np.shape, state_lib.abstract_variables(_config(True))))


@pytest.fixture(scope="module")
def reference(unrolled):
    """Outputs and gradients of the unrolled blocks without remat, computed once for every comparison."""
    return _outputs_and_grads(_config(False), unrolled)


@pytest.mark.parametrize("scan, remat", [(True, "none"), (True, "full"), (True, "save_dots"), (False, "full")])
def test_scanned_forward_and_gradients_equal_unrolled(unrolled, reference, scan, remat):
    reference, reference_grads = reference
    outputs, grads = _outputs_and_grads(_config(scan, remat), _to_scanned(unrolled) if scan else unrolled)
    for name, a, b in zip(("img", "txt", "z"), outputs, reference):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
        assert np.abs(b).max() > 1e-2, name
    assert list(grads) == list(reference_grads)
    for key, g in reference_grads.items():
        np.testing.assert_allclose(grads[key], g, rtol=1e-4, atol=1e-5, err_msg=key)
    # Every block of every tower gets a gradient (the comparison is not trivially zero).
    for key in ("encoder_blocks.1.mlp.fc1.weight", "decoder_blocks.1.mlp.fc1.weight", "text_aligner.1.mlp.fc1.weight",
                "transformer.resblocks.1.mlp.c_fc.weight"):
        assert np.abs(reference_grads[key]).max() > 0, key


def test_stacked_parameters_carry_the_layers_axis():
    boxed = jax.eval_shape(lambda: DREAM(_config(True).model, capacity=CAPACITY).init(jax.random.key(0), *_inputs(_config(True))))
    qkv = boxed["params"]["encoder"]["encoder_blocks"]["attn"]["qkv"]["kernel"]
    assert isinstance(qkv, nn.Partitioned) and qkv.names == ("layers", "embed", None, "heads", "kv")


def test_unknown_remat_policy_is_a_one_line_error():
    config = _config(True, remat="sometimes")
    with pytest.raises(ValueError, match=r"model.remat='sometimes': expected one of 'none', 'full', 'save_dots'"):
        DREAM(config.model, capacity=CAPACITY).init(jax.random.key(0), *_inputs(config))


def test_scanned_and_unrolled_blocks_decay_the_same_parameters(unrolled):
    """state.decay_mask judges a stacked tensor by its per-block rank: a scanned block's norm scale is not decayed."""
    def mask_arrays(config, params):
        mask = state_lib.decay_mask(params)
        return layout.to_state_dict(to_pytorch.table(config), {
            "params": jax.tree.map(lambda m, p: np.full(np.shape(p), m, np.float32), mask, params),
            "batch_stats": unrolled["batch_stats"]})

    there = mask_arrays(_config(False), unrolled["params"])
    back = mask_arrays(_config(True), _to_scanned(unrolled)["params"])
    assert back.keys() == there.keys()
    for key in there:
        np.testing.assert_array_equal(back[key], there[key], err_msg=key)
    assert not there["encoder_blocks.0.norm1.weight"].any() and there["encoder_blocks.0.attn.qkv.weight"].all()
