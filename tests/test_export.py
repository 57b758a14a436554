"""Tests of dream_jax.interop: the authors' layout both ways, and the standalone PyTorch DREAM against Flax.

Weights are random (every leaf, including the zero-initialised adaLN and output layers and the BN statistics), so
each comparison exercises every parameter. The key table of B/L/H/G is generated from OFFICIAL_LAYOUT.md
(tests/official_layout.py) and compared with shapes from jax.eval_shape, allocating nothing.
"""

import argparse
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import official_layout
import train_helpers as th

from configs import dream_b, dream_g, dream_h, dream_l
from dream_jax import checkpoint, sharding
from dream_jax import frozen as frozen_lib
from dream_jax import state as state_lib
from dream_jax.data import pipeline
from dream_jax.data import tokenizers as tokenizers_lib
from dream_jax.interop import layout, to_pytorch
from dream_jax.interop import torch_modules as tm
from dream_jax.models import diffusion_head, gaussian_diffusion
from dream_jax.models.dream import DREAM
from dream_jax.training import masking, train

TOL = 1e-4


def _config(**extra):
    return th.tiny_config(model__encoder_depth=2, model__decoder_depth=2, diffusion__batch_mul=2,
                          masking__kind="uniform", **extra)


@pytest.fixture(scope="module")
def config():
    return _config()


@pytest.fixture(scope="module")
def variables(config):
    return th.random_like(state_lib.abstract_variables(config), 0)


@pytest.fixture(scope="module")
def torch_model(config, variables):
    model = tm.DREAM.from_args(to_pytorch.plain_args(config))
    model.load_state_dict(to_pytorch.state_dict(config, variables["params"], variables["batch_stats"]), strict=True)
    return model.eval()


def _t(a):
    return torch.from_numpy(np.array(a))


def _close(jax_value, torch_value):
    err = np.max(np.abs(np.asarray(jax_value, np.float64) - torch_value.detach().numpy().astype(np.float64)))
    assert err <= TOL, f"max abs error {err:.3g} > {TOL}"
    assert np.max(np.abs(torch_value.detach().numpy())) > 1e-2  # not a trivially zero comparison


def _masks(rng, batch, length, ratio):
    mask = np.zeros((batch, length), bool)
    for b in range(batch):
        mask[b, rng.permutation(length)[: int(np.ceil(ratio * length))]] = True
    return mask


# ------------------------------------------------------------------------------------------ round trips
def test_export_file_round_trip_is_bitwise(tmp_path, config, variables):
    ema = th.random_like(variables["params"], 1)
    path, tensors = to_pytorch.export_checkpoint(config, variables["params"], ema, variables["batch_stats"], 120,
                                                 str(tmp_path / "dream.pth"))
    raw = torch.load(path, weights_only=True)  # plain torch, no allowlist: nothing but tensors and containers
    assert list(raw) == ["model", "model_ema", "epoch", "args"]
    assert raw["epoch"] == (120 - 1) // config.steps_per_epoch and raw["args"]["model"]["width"] == config.model.width
    assert int(raw["model"]["image_projection.bn1.num_batches_tracked"]) == 120

    back = to_pytorch.import_checkpoint(config, path)
    th.assert_trees_equal(back["params"], variables["params"])
    th.assert_trees_equal(back["ema_params"], ema)
    th.assert_trees_equal(back["batch_stats"], variables["batch_stats"])
    from_tensors = to_pytorch.import_checkpoint(config, tensors)
    th.assert_trees_equal(from_tensors["params"], ema)
    th.assert_trees_equal(from_tensors["ema_params"], ema)
    # The exported file rebuilds the torch model from its own args, strict.
    model = to_pytorch.load_pytorch_model(path)
    assert torch.equal(model.text_projection, torch.from_numpy(np.asarray(ema["text_tower"]["text_projection"])))


def test_workdir_export_then_import_is_bitwise(tmp_path):
    config = th.tiny_config(mesh__shape=(1, 1, 1))
    mesh = sharding.make_mesh(config, jax.devices()[:1])  # orbax saves 8 fake replicas slowly
    abstract = state_lib.abstract_state(config, mesh)
    state = jax.tree.map(lambda x, s: jax.device_put(x, s.sharding), th.random_like(abstract, 2), abstract)
    manager = checkpoint.Manager(str(tmp_path / "a"), config)
    manager.save(12, state)
    manager.close()
    path, _ = to_pytorch.export_to_workdir(config, str(tmp_path / "a"), mesh=mesh)
    assert os.path.basename(path) == "dream_step12.pth"

    to_pytorch.import_to_workdir(config, str(tmp_path / "b"), path, mesh=mesh)
    with pytest.raises(ValueError, match="already has checkpoints"):
        to_pytorch.import_to_workdir(config, str(tmp_path / "b"), path, mesh=mesh)
    # Restored exactly as the train loop does (with the data iterator), at step 0.
    data = iter(pipeline.make_dataset(config, tokenizers_lib.make_tokenizers(config)))
    manager = checkpoint.Manager(str(tmp_path / "b"), config, read_only=True)
    restored, step = manager.restore_latest(abstract, data)
    manager.close()
    assert step == 0 and int(restored.step) == 0
    th.assert_trees_equal(restored.params, state.params)
    th.assert_trees_equal(restored.ema_params, state.ema_params)
    th.assert_trees_equal(restored.batch_stats, state.batch_stats)


# ---------------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("scale,module", [("B", dream_b), ("L", dream_l), ("H", dream_h), ("G", dream_g)])
def test_key_set_and_shapes_match_official_layout(scale, module):
    config = module.get_config()
    shapes = layout.torch_shapes(to_pytorch.table(config), state_lib.abstract_variables(config))
    expected = official_layout.expand(official_layout.templates(), scale)
    assert len(shapes) == 32 * config.model.encoder_depth + 297 == len(expected)
    assert list(shapes.items()) == expected


def test_torch_module_has_the_layout(config, variables, torch_model):
    exported = to_pytorch.state_dict(config, variables["params"], variables["batch_stats"])
    own = torch_model.state_dict()
    assert list(own) == list(exported) == [e.key for e in to_pytorch.table(config)]
    assert all(own[k].shape == v.shape and own[k].dtype == v.dtype for k, v in exported.items())
    assert "attn_mask" not in own


# --------------------------------------------------------------------------------- Flax == PyTorch
@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_image_embedding_agrees(config, variables, torch_model, ratio):
    m = config.model
    rng = np.random.default_rng(3)
    tokens = rng.standard_normal((4, m.seq_len, m.token_dim)).astype(np.float32)
    mask = _masks(rng, 4, m.seq_len, ratio)
    model = DREAM(m)
    x, keep = model.apply(variables, tokens, mask, method=DREAM.encode)
    img = model.apply(variables, x, keep, method=DREAM.image_embedding)
    with torch.no_grad():
        _close(img, torch_model.image_embedding(_t(tokens), _t(mask)))


def test_text_embedding_agrees(config, variables, torch_model):
    t = config.model.text_tower
    ids = np.random.default_rng(4).integers(0, t.vocab_size, (4, t.context_length)).astype(np.int32)
    txt = DREAM(config.model).apply(variables, ids, method=DREAM.text_embedding)
    with torch.no_grad():
        _close(txt, torch_model.encode_text(_t(ids).long()))


def test_decoder_z_agrees(config, variables, torch_model):
    m = config.model
    rng = np.random.default_rng(5)
    tokens = rng.standard_normal((4, m.seq_len, m.token_dim)).astype(np.float32)
    mask = _masks(rng, 4, m.seq_len, 0.7)
    cond = rng.standard_normal((4, m.cond_len, m.cond_dim)).astype(np.float32)
    model = DREAM(m)
    x, _ = model.apply(variables, tokens, mask, method=DREAM.encode)
    z = model.apply(variables, x, mask, model.apply(variables, cond, method=DREAM.align_text), method=DREAM.decode)
    with torch.no_grad():
        encoded = torch_model.forward_mae(_t(tokens), _t(mask))
        _close(z, torch_model.forward_mae_decoder(encoded, _t(mask), torch_model.align_text(_t(cond))))


def test_diffloss_eps_and_variance_agree(config, variables, torch_model):
    m = config.model
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, m.token_dim)).astype(np.float32)
    t = rng.integers(0, config.diffusion.num_steps, 64).astype(np.int32)
    z = rng.standard_normal((64, m.width)).astype(np.float32)
    out = DREAM(m).apply(variables, x, t, z, method=DREAM.denoise)
    with torch.no_grad():
        ref = torch_model.diffloss.net(_t(x), _t(t).long(), _t(z))
    _close(out[:, : m.token_dim], ref[:, : m.token_dim])
    _close(out[:, m.token_dim:], ref[:, m.token_dim:])


def test_diffusion_sampling_agrees(config, variables, torch_model):
    """Respaced ancestral sampling from the same start, temperature 0 (no injected noise on either side).

    x0 is clipped to [-1, 1] (the tiny config's setting): random weights otherwise drive the chain to ~1e4.
    """
    m = config.model
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((16, m.token_dim)).astype(np.float32)
    z = rng.standard_normal((16, m.width)).astype(np.float32)
    model = DREAM(m)
    constants = gaussian_diffusion.make_schedule(config.diffusion.num_steps, 10).constants()
    denoise = lambda x, t: model.apply(variables, x, t, z, method=DREAM.denoise)  # noqa: E731
    out = gaussian_diffusion.p_sample_loop(constants, denoise, noise, jax.random.key(0), 0.0, clip_denoised=True)
    diffusion = tm.GaussianDiffusion(config.diffusion.num_steps, 10)
    np.testing.assert_array_equal(diffusion.timestep_map, np.asarray(constants["timestep_map"]))
    _close(out, diffusion.p_sample_loop(torch_model.diffloss.net, _t(noise), _t(z), 0.0, clip_denoised=True))


def test_training_loss_agrees(config, variables, torch_model):
    """train.loss_fn against the torch loss built from the same tokens, masks, t and noise (train-mode BN)."""
    # A step whose group ratios give filtered clip samples, gated-off and active diffusion groups at once.
    step = next(s for s in range(200) if _mixed(masking.sample_mask_ratios(train.step_rngs(config, s)["ratios"],
                                                                            s, config)))
    tokenizers = tokenizers_lib.make_tokenizers(config)
    rng = np.random.default_rng(8)
    captions = [f"caption number {i}" for i in range(config.batch_size)]
    cond_ids, cond_mask = tokenizers.cond_ids(captions)
    batch = {"image": rng.integers(0, 256, (config.batch_size, 32, 32, 3)).astype(np.uint8),
             "clip_ids": tokenizers.clip_ids(captions), "cond_ids": cond_ids, "cond_mask": cond_mask}

    @jax.jit  # one compilation of everything (op-by-op dispatch compiles hundreds of small programs)
    def jax_side(params, batch_stats, batch):
        frozen = frozen_lib.load(config, tokenizers)
        total, (metrics, _) = train.loss_fn(params, batch_stats, config, frozen, batch, step)
        rngs = train.step_rngs(config, step)
        tokens, mask, _, cond = train.prepare_inputs(config, frozen, batch, rngs, step)
        _, _, _, t, noise = diffusion_head.targets(rngs["diffusion"], tokens, tokens, mask,
                                                   config.diffusion.batch_mul, config.diffusion.num_steps)
        return total, metrics, (tokens, mask, cond, t, noise)

    total, metrics, (tokens, mask, cond, t, noise) = jax_side(variables["params"], variables["batch_stats"], batch)
    assert 0 < metrics["gen_active_frac"] < 1 and 0 < metrics["clip_valid_frac"] < 1
    torch_model.train()
    try:
        with torch.no_grad():
            ref, parts = tm.dream_loss(
                torch_model, _t(tokens), _t(mask), _t(batch["clip_ids"]).long(), _t(cond), _t(t).long(), _t(noise),
                num_groups=config.masking.num_groups, gen_weight=config.loss.gen_weight,
                clip_weight=config.loss.clip_weight, min_visible_for_clip=config.loss.min_visible_for_clip,
                min_masked_for_gen=config.loss.min_masked_for_gen)
    finally:
        torch_model.eval()
    _close(metrics["clip_loss"], parts["clip_loss"])
    _close(metrics["gen_loss"], parts["gen_loss"])
    _close(total, ref)


def _mixed(ratios):
    r = np.asarray(ratios)
    return (r > 0.8).any() and ((r >= 0.5) & (r <= 0.75)).any() and (r < 0.5).any()


# ---------------------------------------------------------------------------------------------- refusals
def test_renamed_or_mis_shaped_key_is_named(tmp_path, config, variables):
    sd = to_pytorch.state_dict(config, variables["params"], variables["batch_stats"])
    renamed = {("encoder_blocks.1.attn.qkv_weight" if k == "encoder_blocks.1.attn.qkv.weight" else k): v
               for k, v in sd.items()}
    torch.save({"model": renamed, "model_ema": renamed}, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"missing keys: encoder_blocks\.1\.attn\.qkv\.weight.*"
                                         r"unexpected keys: encoder_blocks\.1\.attn\.qkv_weight"):
        to_pytorch.import_checkpoint(config, str(tmp_path / "renamed.pth"))
    bad = dict(sd, **{"z_proj.weight": sd["z_proj.weight"].T.contiguous()})
    torch.save({"model": bad, "model_ema": bad}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"mis-shaped keys: z_proj\.weight \(32, 64\) \(expected \(64, 32\)\)"):
        to_pytorch.import_checkpoint(config, str(tmp_path / "shape.pth"))


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_only_namespace_is_unpickled(tmp_path, config, variables):
    sd = to_pytorch.state_dict(config, variables["params"], variables["batch_stats"])
    # The authors' files pickle argparse.Namespace as `args`: allowed.
    torch.save({"model": sd, "model_ema": sd, "epoch": 3, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "a.pth")
    back = to_pytorch.import_checkpoint(config, str(tmp_path / "a.pth"))
    th.assert_trees_equal(back["params"], variables["params"])
    torch.save({"model": sd, "args": _Payload()}, tmp_path / "b.pth")
    with pytest.raises(ValueError, match=r"refusing to load .*b\.pth: it pickles posix\.getcwd"):
        to_pytorch.import_checkpoint(config, str(tmp_path / "b.pth"))
    with pytest.raises(FileNotFoundError):
        to_pytorch.import_checkpoint(config, str(tmp_path / "missing.pth"))
    for name in ("text.pth", "text.safetensors"):  # foreign bytes: one ValueError, whatever the parser raised
        (tmp_path / name).write_text("hello\n")
        with pytest.raises(ValueError, match=rf"{name} is not a readable torch or safetensors checkpoint"):
            to_pytorch.import_checkpoint(config, str(tmp_path / name))


def test_torch_stays_out_of_the_jax_path():
    code = ("import sys; import dream_jax.main, dream_jax.training.train, dream_jax.generation.sample, "
            "dream_jax.interop.layout; assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=th.REPO, capture_output=True, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
