"""The Flax FID InceptionV3 against a PyTorch reference with the same random weights, its weight import, and its
resizes.

The reference (tests/inception_reference.py) is re-typed from pytorch-fid's published architecture, because
pytorch-fid and torch-fidelity need torchvision; when torch-fidelity's own module is importable (installed, or
its wheel unpacked on TORCH_FIDELITY_PATH) it is compared as well, with its TensorFlow-exact resize.
"""

import importlib
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import inception_reference
from dream_jax.evaluation import fid
from dream_jax.models import inception


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model = inception_reference.random_model(seed=0)
    path = str(tmp_path_factory.mktemp("inception") / "random_inception.pth")
    torch.save(model.state_dict(), path)
    return model, path


def _images(n=2, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_flax_inception_equals_the_pytorch_reference(weights):
    model, path = weights
    images = _images()
    with torch.no_grad():
        ref_pool, ref_logits = model(torch.from_numpy(images))
    variables = fid.load_inception(path)
    pool3, unbiased = fid.inception_outputs(variables, jnp.asarray(images), "pytorch")
    assert float(ref_pool.abs().mean()) > 0.1  # the random weights keep a meaningful scale to compare
    np.testing.assert_allclose(np.asarray(pool3), ref_pool.numpy(), atol=1e-3, rtol=0)
    logits = np.asarray(unbiased) + model.fc.bias.detach().numpy()
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-3, rtol=0)
    assert np.abs(np.asarray(pool3) - ref_pool.numpy()).max() < 1e-4


def test_npz_export_loads_the_same_variables(weights, tmp_path):
    _, path = weights
    npz = fid.export_npz(path, str(tmp_path / "inception.npz"))
    a, b = fid.load_inception(path), fid.load_inception(npz)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_missing_or_wrong_weights_name_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.evals.fid.inception_weights.*pt_inception-2015-12-05"):
        fid.load_inception(str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="is not set"):
        fid.load_inception("")
    np.savez(tmp_path / "bad.npz", **{"fc.weight": np.zeros((1008, 2048)), "fc.bias": np.zeros(1008)})
    with pytest.raises(ValueError, match="do not match the FID InceptionV3"):
        fid.load_inception(str(tmp_path / "bad.npz"))


def _tf1_resize_loop(image, size):
    """TensorFlow 1's ResizeBilinear (align_corners=False, no half-pixel centres), one pixel at a time."""
    h, w = image.shape[:2]
    out = np.zeros((size, size, image.shape[2]))
    for i in range(size):
        y = i * h / size
        y0, y1 = int(np.floor(y)), min(int(np.floor(y)) + 1, h - 1)
        for j in range(size):
            x = j * w / size
            x0, x1 = int(np.floor(x)), min(int(np.floor(x)) + 1, w - 1)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * (x - x0)
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * (x - x0)
            out[i, j] = top + (bottom - top) * (y - y0)
    return out


@pytest.mark.parametrize("size", [7, 40])
def test_tf1_resize_matches_tensorflows_rule(size):
    image = _images(1, size, seed=size)[0].astype(np.float64)
    got = np.asarray(inception.preprocess(image[None], "tf1", size=23))[0] * 128.0 + 128.0
    np.testing.assert_allclose(got, _tf1_resize_loop(image, 23), atol=2e-3)


def test_pytorch_resize_matches_torch_interpolate():
    image = _images(1, 40)
    got = np.asarray(inception.preprocess(image, "pytorch"))
    x = torch.from_numpy(image).permute(0, 3, 1, 2).float() / 255.0
    want = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    np.testing.assert_allclose(got, want.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="resize="):
        inception.preprocess(image, "bicubic")


def _torch_fidelity_module():
    """torch-fidelity's InceptionV3 module, imported without its package __init__ (which needs torchvision)."""
    spec = importlib.util.find_spec("torch_fidelity")
    root = os.environ.get("TORCH_FIDELITY_PATH") or (os.path.dirname(spec.origin) if spec else None)
    if not root or not os.path.exists(os.path.join(root, "feature_extractor_inceptionv3.py")):
        pytest.skip("torch-fidelity is not available (pip download torch-fidelity --no-deps, unpack, and set "
                    "TORCH_FIDELITY_PATH to its torch_fidelity folder to run this comparison)")
    saved = sys.modules.get("torch_fidelity")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [root]
    sys.modules["torch_fidelity"] = package
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    finally:
        if saved is not None:
            sys.modules["torch_fidelity"] = saved


def test_flax_inception_equals_torch_fidelity_with_tf1_resize(weights):
    _, path = weights
    module = _torch_fidelity_module()
    extractor = module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=path)
    images = _images()
    with torch.no_grad():
        ref_pool, ref_unbiased = extractor(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    pool3, unbiased = fid.inception_outputs(fid.load_inception(path), jnp.asarray(images), "tf1")
    np.testing.assert_allclose(np.asarray(pool3), ref_pool.numpy(), atol=1e-3, rtol=0)
    np.testing.assert_allclose(np.asarray(unbiased), ref_unbiased.numpy(), atol=1e-3, rtol=0)
