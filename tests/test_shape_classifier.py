"""dream_jax/evaluation/shape_classifier.py: the classifier learns the renderer's attributes, its Fréchet distance
is near zero for real images and grows with a distortion, the cache restores exactly what was trained and refuses
another image size, and the alignment evaluator refuses it for prompts that are not the shapes'."""

import jax
import ml_collections
import numpy as np
import pytest

from configs import dream_tiny
from dream_jax.evaluation import registry, run, shape_classifier


@pytest.fixture(scope="module")
def classifier():
    return shape_classifier.train(steps=60, width=8, num_images=1024)


def test_the_classifier_reads_attributes_and_the_distance_separates_real_from_distorted(classifier):
    images, labels = shape_classifier.rendered("heldout", 256, 32, seed=11)
    _, predicted = shape_classifier.outputs(classifier, images)
    for attribute in ("color", "position", "size"):  # shape is learnt later (the study's classifier: 0.96)
        assert np.mean(predicted[attribute] == labels[attribute]) > 0.85, attribute
    reference_images = shape_classifier.reference_images(512)
    reference = shape_classifier.statistics(classifier, reference_images)
    real = shape_classifier.frechet(classifier, images, reference)
    assert shape_classifier.frechet(classifier, reference_images, reference) == pytest.approx(0.0, abs=1e-6)
    assert shape_classifier.frechet(classifier, images[..., ::-1], reference) > 3 * real  # colours swapped
    assert shape_classifier.frechet(classifier, np.roll(images, 4, axis=2), reference) > 3 * real  # moved


def test_the_cache_restores_the_trained_classifier_and_refuses_another_image_size(tmp_path):
    path = str(tmp_path / "classifier.msgpack")
    logged = []
    trained = shape_classifier.load_or_train(path, steps=2, width=4, log=logged.append)
    again = shape_classifier.load_or_train(path, log=logged.append)  # the file's settings, not the defaults
    assert len(logged) == 1  # trained once
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), trained, again)
    with pytest.raises(ValueError, match="not for 64x64 images; delete it or point the setting elsewhere"):
        shape_classifier.load_or_train(path, image_size=64)


def test_the_alignment_evaluator_measures_the_distance_on_the_shapes_prompts_only(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    config = dream_tiny.get_config()
    config.evals = ml_collections.ConfigDict(dict(align=registry.settings(
        "alignment", prompts=str(prompts), classifier=str(tmp_path / "c.msgpack"))))
    with pytest.raises(ValueError, match=r"config.evals.align.classifier is set but config.evals.align.prompts="):
        run.validate(config)
