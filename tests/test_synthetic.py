"""Tests of the captioned-shapes dataset (dream_jax.data.synthetic) and its oracle (dream_jax.data.oracle).

Dimension letters: N examples, H/W image height/width, C colour channels.
"""

import pickle

import numpy as np
import pytest

from dream_jax.data import oracle, synthetic

ORACLE_EXAMPLES = 2000


def _stack(examples, key):
    return np.stack([example[key] for example in examples])


@pytest.fixture(scope="module", params=synthetic.SPLITS)
def rendered(request):
    """2000 examples of one split: (images uint8 [N, H, W, C], attribute name -> int [N])."""
    source = synthetic.CaptionedShapes(request.param, num_examples=ORACLE_EXAMPLES, seed=7)
    examples = [source[i] for i in range(len(source))]
    return _stack(examples, "image"), {a: _stack(examples, a) for a in synthetic.ATTRIBUTES}


@pytest.fixture(scope="module")
def train_examples():
    source = synthetic.CaptionedShapes("train", num_examples=3000, seed=1)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def heldout_examples():
    source = synthetic.CaptionedShapes("heldout", num_examples=1000, seed=1)
    return [source[i] for i in range(len(source))]


def _accuracy(read, targets):
    return {a: float(np.mean(read[a] == targets[a])) for a in synthetic.ATTRIBUTES}


# --- the source --------------------------------------------------------------------------------------


def test_same_index_gives_identical_example():
    a = synthetic.CaptionedShapes("train", num_examples=10, seed=3)
    b = synthetic.CaptionedShapes("train", num_examples=10, seed=3)
    for i in (0, 5, 9):
        x, y = a[i], b[i]
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["caption"] == y["caption"]
        assert all(x[k] == y[k] for k in (*synthetic.ATTRIBUTES, "template"))


def test_seed_split_and_index_change_the_example():
    base = synthetic.CaptionedShapes("train", num_examples=20, seed=0)
    other_seed = synthetic.CaptionedShapes("train", num_examples=20, seed=1)
    other_split = synthetic.CaptionedShapes("heldout", num_examples=20, seed=0)
    for other in (other_seed, other_split):
        assert any(not np.array_equal(base[i]["image"], other[i]["image"]) for i in range(20))
    assert not np.array_equal(base[0]["image"], base[1]["image"])


def test_example_layout_and_sizes():
    for size in (32, 64):
        example = synthetic.CaptionedShapes("train", num_examples=4, image_size=size)[2]
        assert example["image"].shape == (size, size, 3)
        assert example["image"].dtype == np.uint8
        assert isinstance(example["caption"], str)
        for key in (*synthetic.ATTRIBUTES, "template"):
            assert example[key].dtype == np.int32


def test_index_range_and_pickling():
    source = synthetic.CaptionedShapes("heldout", num_examples=5, seed=2)
    assert len(source) == 5
    with pytest.raises(IndexError):
        source[5]
    with pytest.raises(IndexError):
        source[-6]
    assert source[-1]["caption"] == source[4]["caption"]
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[3]["image"], source[3]["image"])
    assert "heldout" in repr(source) and "num_examples=5" in repr(source)


def test_grain_batches_the_source():
    import grain

    source = synthetic.CaptionedShapes("train", num_examples=16, seed=0)
    batch = grain.MapDataset.source(source).shuffle(seed=1).batch(8)[0]
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["shape"].dtype == np.int32 and batch["caption"].shape == (8,)


@pytest.mark.parametrize(
    "kwargs",
    [{"split": "test"}, {"num_examples": 0}, {"seed": -1}, {"image_size": 8}, {"image_size": 32.5}],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        synthetic.CaptionedShapes(**kwargs)


def test_bad_attribute_index_raises():
    with pytest.raises(ValueError, match="color"):
        synthetic.caption(0, 7, 0, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        synthetic.render(4, 0, 0, 0, np.random.default_rng(0))


def test_split_combinations_partition_all_combinations():
    train = {tuple(row) for row in synthetic.split_combinations("train")}
    heldout = {tuple(row) for row in synthetic.split_combinations("heldout")}
    total = len(synthetic.SHAPES) * len(synthetic.COLORS) * len(synthetic.POSITIONS) * len(synthetic.SIZES)
    assert not train & heldout
    assert len(train | heldout) == total
    assert 0.10 <= len(heldout) / total <= 0.20
    # Every (shape, colour) pair stays learnable in train and is tested in heldout.
    pairs = set(synthetic.shape_color_classes())
    assert {(s, c) for s, c, _, _ in train} == pairs
    assert {(s, c) for s, c, _, _ in heldout} == pairs
    assert not set(synthetic.split_templates("train")) & set(synthetic.split_templates("heldout"))
    assert len(synthetic.split_templates("heldout")) == 2


def test_train_never_shows_heldout_combinations_or_templates(train_examples, heldout_examples):
    heldout_templates = set(synthetic.split_templates("heldout"))
    for examples, want in ((train_examples, False), (heldout_examples, True)):
        for ex in examples:
            combination = (ex["shape"], ex["color"], ex["position"], ex["size"])
            assert synthetic.is_heldout_combination(*combination) == want
            assert (int(ex["template"]) in heldout_templates) == want


def test_every_attribute_value_occurs_in_train(train_examples):
    for attribute in synthetic.ATTRIBUTES:
        seen = {int(ex[attribute]) for ex in train_examples}
        assert seen == set(range(len(synthetic.class_names(attribute)))), attribute
    templates = {int(ex["template"]) for ex in train_examples}
    assert templates == set(synthetic.split_templates("train"))


def test_caption_states_every_attribute(train_examples):
    for ex in train_examples[:200]:
        text = ex["caption"]
        for attribute in synthetic.ATTRIBUTES:
            assert synthetic.class_names(attribute)[ex[attribute]] in text
        assert "at the center" not in text


def test_center_is_grammatical():
    assert synthetic.caption(0, 0, 4, 0, 0) == "a small red circle in the center"
    assert synthetic.caption(1, 2, 1, 1, 0) == "a large blue square at the top right"
    assert synthetic.caption(3, 6, 4, 1, 2) == "center: a large white cross"
    assert len(synthetic.TEMPLATES) >= 6


def test_class_helpers():
    assert synthetic.class_names("shape") == list(synthetic.SHAPES)
    assert synthetic.class_names("size") == ["small", "large"]
    with pytest.raises(ValueError, match="colour"):
        synthetic.class_names("colour")
    classes = synthetic.shape_color_classes()
    assert len(classes) == len(synthetic.SHAPES) * len(synthetic.COLORS)
    assert classes[len(synthetic.COLORS) + 2] == (1, 2)
    assert synthetic.shape_color_prompt(0, 0) == "a red circle"
    assert synthetic.shape_color_prompt(3, 5) == "a cyan cross"


# --- the oracle --------------------------------------------------------------------------------------


def test_oracle_reads_rendered_images(rendered):
    images, targets = rendered
    accuracy = _accuracy(oracle.read_attributes(images), targets)
    assert min(accuracy.values()) >= 0.99, accuracy


def test_oracle_tolerates_noise(rendered):
    images, targets = rendered
    rng = np.random.default_rng(0)
    noisy = images / 255.0 + rng.normal(0.0, 0.1, size=images.shape)
    accuracy = _accuracy(oracle.read_attributes(noisy, value_range=(0, 1)), targets)
    assert min(accuracy.values()) >= 0.95, accuracy


def test_oracle_reads_minus_one_to_one_range_and_64_pixels():
    source = synthetic.CaptionedShapes("train", num_examples=200, seed=4, image_size=64)
    examples = [source[i] for i in range(len(source))]
    images = _stack(examples, "image") / 127.5 - 1.0
    targets = {a: _stack(examples, a) for a in synthetic.ATTRIBUTES}
    accuracy = _accuracy(oracle.read_attributes(images, value_range=(-1, 1)), targets)
    assert min(accuracy.values()) >= 0.99, accuracy


def test_oracle_returns_minus_one_without_a_shape():
    blank = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    blank[1] = 200  # a uniform bright image has no shape either
    read = oracle.read_attributes(blank)
    for attribute in synthetic.ATTRIBUTES:
        np.testing.assert_array_equal(read[attribute], [-1, -1])


def test_oracle_rejects_ambiguous_input():
    with pytest.raises(ValueError, match="value_range"):
        oracle.read_attributes(np.zeros((1, 32, 32, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        oracle.read_attributes(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="value_range"):
        oracle.read_attributes(np.zeros((1, 32, 32, 3)), value_range=(1, 1))


def test_alignment_on_a_hand_made_case():
    rng = np.random.default_rng(0)
    images = np.stack(
        [
            synthetic.render(0, 0, 4, 1, rng),  # large red circle, center
            synthetic.render(1, 2, 0, 0, rng),  # small blue square, top left
            synthetic.render(2, 1, 3, 1, rng),  # large green triangle, bottom right
            np.zeros((32, 32, 3), dtype=np.uint8),  # nothing: matches no target
        ]
    )
    targets = {
        "shape": [0, 1, 3, 0],  # third image is a triangle, not a cross
        "color": [0, 2, 1, 0],
        "position": [4, 1, 3, 4],  # second image is top left, not top right
        "size": [1, 0, 1, 1],
    }
    rates = oracle.alignment(images, targets)
    assert rates == {
        "shape": 0.5,
        "color": 0.75,
        "position": 0.5,
        "size": 0.75,
        "shape_color": 0.5,
        "all": 0.25,
    }
    assert oracle.alignment(images, {"color": targets["color"]}) == {"color": 0.75}
    with pytest.raises(ValueError, match="colour"):
        oracle.alignment(images, {"colour": targets["color"]})
    with pytest.raises(ValueError, match="shape"):
        oracle.alignment(images, {"shape": [0, 1]})


def test_attribute_kl_compares_histograms_not_pairs():
    """KL(prompted || read back) with 0.5 prior counts per bin; bins are the values plus 'no shape' (-1)."""
    target = {"shape": np.array([0, 0, 0, 0])}
    assert oracle.attribute_kl({"shape": np.array([0, 0, 0, 0])}, target)["shape"] == pytest.approx(0.0)
    # Every sample wrong but the same histogram: no match, no divergence.
    swapped = {"shape": np.array([1, 0, 3, 2])}
    assert oracle.match_rates(swapped, {"shape": np.array([0, 1, 2, 3])}) == {"shape": 0.0}
    assert oracle.attribute_kl(swapped, {"shape": np.array([0, 1, 2, 3])})["shape"] == pytest.approx(0.0)
    # All read as squares (or as no shape): on bins (none, circle, square, triangle, cross) p = (.5, 4.5, .5, .5, .5)
    # / 6.5 and q has its 4.5 on another bin, so KL = (4.5 - 0.5) / 6.5 * log 9.
    expected = 4 / 6.5 * np.log(9)
    assert oracle.attribute_kl({"shape": np.array([1, 1, 1, 1])}, target)["shape"] == pytest.approx(expected)
    assert oracle.attribute_kl({"shape": np.array([-1, -1, -1, -1])}, target)["shape"] == pytest.approx(expected)
