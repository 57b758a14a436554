"""The dense probes (evaluation/segmentation.py, depth.py, dense.py): the renderer's per-pixel ground truth, the
tfds sources (mock data: shapes, dtypes, one crop for image and target), mIoU and the NYU depth metrics against
numpy formulas, the linear head on a separable toy problem, and Predict.patch_features (both evaluators run end to
end in tests/test_eval_run.py)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import train_helpers as th
from dream_jax import runtime, sharding, state
from dream_jax.data import dense_sources, synthetic
from dream_jax.evaluation import dense, depth, interface, registry, segmentation
from dream_jax.evaluation import features as features_lib


def _settings(kind, **kw):
    return ml_collections.ConfigDict(registry.settings(kind, **kw))


# The renderer's labels.

def test_renderer_labels_are_the_pixels_the_shape_covers_at_least_half_of():
    source = synthetic.CaptionedShapes("train", num_examples=40, seed=3, image_size=32)
    for i in range(len(source)):
        item, dense_item = source[i], source.dense(i)
        np.testing.assert_array_equal(dense_item["image"], item["image"])  # the same bytes as training sees
        seg, image = dense_item["segmentation"], dense_item["image"].astype(np.float64)
        cls = 1 + int(item["shape"]) * len(synthetic.COLORS) + int(item["color"])
        assert seg.dtype == np.int32 and set(np.unique(seg)) == {0, cls}
        # Each pixel is background + coverage * (colour - background): read the coverage back from the image.
        bg = image[0, 0]  # no shape reaches a corner pixel
        rgb = np.median(image[seg == cls], axis=0)
        assert np.linalg.norm(rgb - synthetic.PALETTE[int(item["color"])]) < 2 * synthetic.COLOR_JITTER
        coverage = (image - bg) @ (rgb - bg) / np.sum((rgb - bg) ** 2)
        clear = np.abs(coverage - 0.5) > 0.02  # leave out pixels whose rounding could tip them either way
        np.testing.assert_array_equal((seg == cls)[clear], (coverage >= 0.5)[clear])


def test_renderer_depth_follows_the_formula():
    sizes, rows = {}, {}
    for position in range(len(synthetic.POSITIONS)):
        for size in range(len(synthetic.SIZES)):
            d = synthetic.render_dense(2, 1, position, size, np.random.default_rng(position * 2 + size), 64)
            shape = d["segmentation"] > 0
            assert d["depth"].dtype == np.float32 and np.all(d["depth"][~shape] == synthetic.FAR_DEPTH)
            assert np.unique(d["depth"][shape]).size == 1
            value = float(d["depth"][shape][0])
            row, extent = synthetic.ANCHORS[position][0], synthetic.HALF_EXTENT[size]
            lo = synthetic.shape_depth(extent * (1 + synthetic.SIZE_JITTER), row + synthetic.POSITION_JITTER)
            hi = synthetic.shape_depth(extent * (1 - synthetic.SIZE_JITTER), row - synthetic.POSITION_JITTER)
            assert lo - 1e-5 <= value <= hi + 1e-5 < synthetic.FAR_DEPTH
            sizes.setdefault(position, {})[size] = value
            rows.setdefault(size, {})[position] = value
    for position, by_size in sizes.items():
        assert by_size[1] < by_size[0], position  # larger is nearer
    for by_position in rows.values():
        assert by_position[2] < by_position[4] < by_position[0]  # bottom left < center < top left: lower is nearer
    assert synthetic.shape_depth(0.2, 0.5) == pytest.approx(synthetic.DEPTH_SCALE / 0.2)
    assert len(synthetic.segmentation_class_names()) == synthetic.NUM_SEGMENTATION_CLASSES == 29


# Sources.

def test_shapes_dense_source():
    seg = dense_sources.make_dense_source(_settings("segmentation"), "segmentation", "test", 32, "x", 5)
    dep = dense_sources.make_dense_source(_settings("depth"), "depth", "validation", 32, "x", 5)
    assert len(seg) == 5 and seg.num_classes == 29 and seg.key == "shapes-segmentation_heldout_5_32_seed0"
    a, b = seg[2], dep[2]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["target"].dtype == np.uint8 and a["target"].shape == (32, 32) and a["target"].max() < 29
    assert b["target"].dtype == np.float16 and b["target"].max() == synthetic.FAR_DEPTH


def _striped_source(task):
    """A tfds data source mock whose one example is 60 x 90 with three vertical stripes (red, green, blue) and a
    target naming them (ADE ids 1, 2, 3, or depths 1, 2, 3 m with a missing reading in the middle stripe)."""
    cols = np.repeat(np.arange(3), 30)[None, :].repeat(60, 0)
    image = np.zeros((60, 90, 3), np.uint8)
    image[cols == 0, 0] = image[cols == 1, 1] = image[cols == 2, 2] = 200
    if task == "segmentation":
        target = np.repeat((cols + 1).astype(np.uint8)[..., None], 3, -1)
    else:
        target = (cols + 1).astype(np.float16)
        target[30, 45] = 0
    example = {"image": image, "annotation" if task == "segmentation" else "depth": target}

    class Source(list):
        def __init__(self, builder):
            super().__init__([example])
            self.dataset_info = builder.info

    return lambda builder, *a, **k: Source(builder)


def test_tfds_segmentation_source_crops_image_and_labels_together():
    with tfds.testing.mock_data(as_data_source_fn=_striped_source("segmentation")):
        source = dense_sources.make_dense_source(_settings("segmentation", dataset="scene_parse150"),
                                                 "segmentation", "train", 16, "config.evals.seg")
        item = source[0]
    assert len(source) == 1 and source.num_classes == 150
    assert item["image"].shape == (16, 16, 3) and item["image"].dtype == np.uint8
    assert item["target"].shape == (16, 16) and item["target"].dtype == np.uint8
    # 60 x 90 -> 16 x 24 -> columns 4..19: stripes of 8 resized columns, the first and last cut to 4.
    np.testing.assert_array_equal(item["target"][0], [0] * 4 + [1] * 8 + [2] * 4)
    channel = np.argmax(item["image"].astype(int), -1)
    away = np.array([c not in (3, 4, 11, 12) for c in range(16)])  # bicubic blends the stripes' edges
    np.testing.assert_array_equal(channel[:, away], item["target"][:, away])


def test_tfds_depth_source_keeps_metres_and_drops_mixed_missing_pixels():
    with tfds.testing.mock_data(as_data_source_fn=_striped_source("depth")):
        source = dense_sources.make_dense_source(_settings("depth", dataset="nyu_depth_v2"), "depth", "train", 16,
                                                 "config.evals.depth")
        item = source[0]
    d = item["target"]
    assert d.shape == (16, 16) and d.dtype == np.float16
    assert np.all(d[:, :3] == 1) and np.all(d[:, 13:] == 3) and np.all(d[:, 6:10][d[:, 6:10] > 0] == 2)
    assert (d == 0).sum() >= 1 and (d == 0).sum() <= 4  # only around the missing reading


def test_tfds_mock_nyu_depth_v2_has_the_documented_types():
    with tfds.testing.mock_data(num_examples=3):  # random 480 x 640 frames of the builder's feature spec
        source = dense_sources.make_dense_source(_settings("depth", dataset="nyu_depth_v2"), "depth", "validation",
                                                 24, "x", num_examples=2)
        item = source[1]
    assert len(source) == 2 and item["image"].shape == (24, 24, 3) and item["image"].dtype == np.uint8
    assert item["target"].shape == (24, 24) and item["target"].dtype == np.float16


def test_reduce_zero_label_ignores_other_and_out_of_range():
    a = np.array([[0, 1, 150], [151, 2, 255]], np.uint8)
    np.testing.assert_array_equal(dense_sources.reduce_zero_label(np.stack([a, a * 0, a * 0], -1), 150),
                                  [[255, 0, 149], [255, 1, 255]])


def test_missing_tfds_data_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^config.evals.seg.dataset='scene_parse150' split 'train' is not "
                                                r"prepared as ArrayRecord: prepare it once with `tfds build "
                                                r"scene_parse150 --file_format=array_record"):
        segmentation.validate(th.tiny_config(), "seg", _settings("segmentation", dataset="scene_parse150",
                                                                  data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"config.evals.seg.num_classes=255; expected 1..254"):
        segmentation.validate(th.tiny_config(), "seg", _settings("segmentation", num_classes=255))
    with pytest.raises(ValueError, match=r"config.evals.d: expected 0 < min_depth < max_depth"):
        depth.validate(th.tiny_config(), "d", _settings("depth", max_depth=0.0))


# Metrics.

def test_miou_follows_mmseg():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 0]])
    conf = segmentation.confusion(pred, gt, 5)
    assert conf.sum() == 6 and conf[0, 0] == 1 and conf[0, 1] == 1 and conf[2, 0] == 1
    out = segmentation.metrics(conf)
    # IoU: class 0: 1 / (2 + 2 - 1), class 1: 2 / (2 + 3 - 2), class 2: 1 / 2; class 3 only under an ignored
    # pixel and class 4 nowhere: both absent, left out.
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["pixel_accuracy"] == pytest.approx(4 / 6) and out["classes"] == 3
    # A class predicted but absent from the ground truth counts 0.
    assert segmentation.metrics(segmentation.confusion([[3, 0]], [[0, 0]], 5))["miou"] == pytest.approx(0.25)


def test_depth_metrics_match_numpy_formulas():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 12.0, (3, 8, 8))
    gt[0, :2] = 0  # missing readings
    gt[2] = 0  # an image without any valid pixel is left out
    pred = gt * rng.uniform(0.7, 1.4, gt.shape) + 0.1
    out = depth.metrics(pred, gt, 1e-3, 10.0)
    rows = []
    for p, t in zip(pred[:2], gt[:2]):
        v = (t > 1e-3) & (t <= 10.0)
        p, t = np.clip(p[v], 1e-3, 10.0), t[v]
        r = np.maximum(p / t, t / p)
        rows.append([np.sqrt(np.mean((p - t) ** 2)), np.mean(np.abs(p - t) / t),
                     np.mean(np.abs(np.log10(p) - np.log10(t))), np.mean(r < 1.25), np.mean(r < 1.25 ** 2),
                     np.mean(r < 1.25 ** 3)])
    want = np.mean(rows, 0)
    got = [out[k] for k in ("rmse", "abs_rel", "log10", "delta1", "delta2", "delta3")]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert out["images"] == 2


def test_sig_loss_and_bins():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.5, 5.0, (2, 4, 4)).astype(np.float32)
    gt[0, 0, 0] = 0
    pred = gt * rng.uniform(0.8, 1.2, gt.shape).astype(np.float32) + 0.2
    v = gt > 1e-3
    g = np.log(pred[v] + 1e-3) - np.log(gt[v] + 1e-3)
    assert float(depth.sig_loss(pred, gt, 500, 1e-3, 10.0)) == pytest.approx(
        np.sqrt(np.var(g) + 0.15 * np.mean(g) ** 2), rel=1e-5)
    assert float(depth.sig_loss(pred, gt, 0, 1e-3, 10.0)) == pytest.approx(np.sqrt(0.15) * abs(np.mean(g)), rel=1e-4)
    logits = jnp.full((1, 11), -1.0).at[0, 7].set(1e4)  # one bin dominates: its centre, 7 of 0..10
    assert float(depth.to_depth(logits, "bins", 0.0, 10.0)[0]) == pytest.approx(7.0, abs=1e-3)
    flat = depth.to_depth(jnp.zeros((1, 11)), "bins", 0.0, 10.0)  # equal weights: the middle of the range
    assert float(flat[0]) == pytest.approx(5.0, abs=1e-5)
    assert float(depth.to_depth(jnp.zeros((1, 1)), "regression", 1e-3, 10.0)[0]) == pytest.approx(5.0)


def test_upsampling_is_bilinear_with_half_pixel_centres():
    params = {"w": jnp.eye(2), "b": jnp.zeros(2)}
    stats = (jnp.zeros(2), jnp.ones(2))
    x = np.array([[0.0, 4.0]])[None, ..., None].repeat(2, -1)  # [1, 1, 2, 2]: columns 0 and 4
    out = np.asarray(dense.head_outputs(params, stats, x, 4))[0, 0, :, 0]
    np.testing.assert_allclose(out, [0.0, 1.0, 3.0, 4.0])  # F.interpolate(align_corners=False) on 0, 4


# Training.

def test_linear_head_learns_a_separable_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4, 4, 8)).astype(np.float16) * 3 + 5  # standardisation must undo the offset
    patch_labels = np.argmax(x[..., :3].astype(np.float32), -1)
    labels = patch_labels.repeat(4, 1).repeat(4, 2).astype(np.uint8)  # [64, 16, 16]
    loss = functools.partial(segmentation.cross_entropy, num_classes=3)
    params, stats = dense.train_head(x[:48], labels[:48], loss, 3, 150, 16, 3e-2, 1e-4, log=lambda _: None)
    pred = np.concatenate(list(dense.predict(params, stats, x[48:], 16, 8, lambda o: jnp.argmax(o, -1))))
    out = segmentation.metrics(segmentation.confusion(pred, labels[48:], 3))
    assert out["miou"] > 0.6 and out["pixel_accuracy"] > 0.75  # chance: about 0.33 accuracy


def test_patch_features_are_the_encoders_image_tokens_on_the_grid(tmp_path):
    """Pooled over the grid and fc_norm'd they are Predict.features(pooling='image'); both evaluators run end to end
    in tests/test_eval_run.py."""
    config = th.tiny_config()
    mesh = sharding.make_mesh(config, jax.devices()[:1])
    st = state.create_state(config, mesh)
    ctx = interface.make_context(runtime.create(config, mesh), str(tmp_path),
                                 {"params": st.params, "batch_stats": st.batch_stats}, 0, True, lambda _: None)
    images = np.stack([synthetic.CaptionedShapes("train", 4)[i]["image"] for i in range(3)])
    patches = ctx.predict.patch_features(images, jax.random.key(0))
    assert patches.shape == (3, 4, 4, config.model.width) and patches.dtype == jnp.float32
    pooled = features_lib.fc_norm(jnp.mean(patches, axis=(1, 2)))
    np.testing.assert_allclose(pooled, ctx.predict.features(images, jax.random.key(0), "image"), atol=1e-5)
