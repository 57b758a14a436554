"""tfds datasets as evaluation sources, read with `tfds.data_source` and no TensorFlow installed.

`tfds.testing.mock_data` stands in for the prepared ArrayRecord files: it generates random examples from the
dataset's feature spec (its default policy uses the code, not files, so nothing is read or downloaded).
"""

import importlib.util
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from dream_jax.data import eval_sources
from dream_jax.evaluation import registry


def test_tensorflow_is_not_installed():
    assert importlib.util.find_spec("tensorflow") is None


def _settings(**kw):
    return ml_collections.ConfigDict(registry.settings("linear_probe", **kw))


def test_tfds_source_reads_images_labels_and_class_names():
    # dtd: RGB images of random sizes, class names defined in the builder's code (so the mock knows them).
    with tfds.testing.mock_data(num_examples=12):
        source = eval_sources.make_source(_settings(dataset="dtd"), "test", 16, "config.evals.probe")
        items = [source[i] for i in range(len(source))]
    assert len(source) == 12 and source.key.startswith("dtd_test_12_16")
    assert source.class_names[:3] == ["banded", "blotchy", "braided"] and len(source.class_names) == 47
    for item in items:
        assert item["image"].shape == (16, 16, 3) and item["image"].dtype == np.uint8
        assert 0 <= int(item["label"]) < 47


def test_tfds_source_makes_grey_images_rgb_and_limits_the_count():
    with tfds.testing.mock_data(num_examples=9):
        source = eval_sources.make_source(_settings(dataset="mnist"), "train", 28, "x", num_examples=5)
        item = source[4]
    assert len(source) == 5 and item["image"].shape == (28, 28, 3)
    np.testing.assert_array_equal(item["image"][..., 0], item["image"][..., 2])


def test_wordnet_class_names_ask_for_a_names_file(tmp_path):
    with tfds.testing.mock_data(num_examples=2):
        source = eval_sources.make_source(_settings(dataset="imagenet2012"), "validation", 16, "x")
        with pytest.raises(ValueError, match="config.evals.zs.class_names_file"):
            source.readable_class_names("config.evals.zs")
        names = tmp_path / "names.txt"
        names.write_text("".join(f"class {i}\n" for i in range(1000)))
        named = eval_sources.make_source(_settings(dataset="imagenet2012", class_names_file=str(names)),
                                         "validation", 16, "x")
    assert named.readable_class_names("x")[999] == "class 999"


def test_missing_dataset_names_what_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.evals.probe.dataset='cifar10' split 'test' is not "
                                                r"prepared.*tfds build cifar10 --file_format=array_record"):
        eval_sources.make_source(_settings(dataset="cifar10", data_dir=str(tmp_path)), "test", 16,
                                 "config.evals.probe")
    assert not any(tmp_path.iterdir())  # nothing was downloaded or prepared
    with pytest.raises(ValueError, match="is not a tfds dataset name"):
        eval_sources.make_source(_settings(dataset="no_such_dataset_xyz"), "test", 16, "config.evals.probe")


def test_shapes_source_labels_are_the_renderers():
    source = eval_sources.make_source(_settings(dataset="shapes"), "test", 32, "x", num_examples=20)
    item = source[3]
    raw = source._source[3]
    assert int(item["label"]) == int(raw["shape"]) * 7 + int(raw["color"])
    assert len(source.class_names) == 28 and source.class_names[0] == "red circle"


def test_image_folder_reads_and_crops(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), 50 * i, np.uint8)).save(tmp_path / f"{i}.png")
    folder = eval_sources.ImageFolder(str(tmp_path), 16)
    assert len(folder) == 3 and folder[2]["image"].shape == (16, 16, 3) and folder[2]["image"][0, 0, 0] == 100
    with pytest.raises(FileNotFoundError, match="config.evals.fid.reference"):
        eval_sources.ImageFolder(str(tmp_path / "nope"), 16, what="config.evals.fid.reference")


def test_zero_shot_and_linear_probe_run_on_a_tfds_dataset(tmp_path):
    """The evaluators' tfds path end to end on a random-init tiny DREAM (one device, mock dtd at 32 px)."""
    import jax

    import train_helpers as th
    from dream_jax import runtime, sharding, state
    from dream_jax.evaluation import interface, linear_probe, zero_shot

    config = th.tiny_config()
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    st = state.create_state(config, mesh)
    ctx = interface.make_context(runtime.create(config, mesh), str(tmp_path),
                                 {"params": st.params, "batch_stats": st.batch_stats}, 0, True, lambda _: None)
    zs = ml_collections.ConfigDict(registry.settings("zero_shot", dataset="dtd", split="test", batch_size=16))
    lp = ml_collections.ConfigDict(registry.settings("linear_probe", dataset="dtd", train_split="train",
                                                     test_split="test", steps=20, batch_size=16))
    with tfds.testing.mock_data(num_examples=24):
        zero = zero_shot.run(ctx, "zs", zs)
        probe = linear_probe.run(ctx, "lp", lp)
    assert set(zero) == {"top1", "top5", "chance"} and zero["chance"] == 1 / 47 and 0 <= zero["top1"] <= 1
    assert 0 <= probe["top1"] <= 1 and probe["chance"] == 1 / 47
    cached = sorted(os.listdir(tmp_path / "eval" / "features" / "step0_ema"))
    assert cached == ["dtd_test_24_32_buffer.npz", "dtd_train_24_32_buffer.npz"]
