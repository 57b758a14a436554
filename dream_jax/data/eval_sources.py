"""Image sources for the evaluators: tfds datasets (ArrayRecord, no TensorFlow), the synthetic shapes, folders.

A tfds dataset is read with `tfds.data_source(name, split, data_dir, download=False)`: random access into the
ArrayRecord files that the user prepared once (`tfds build NAME --file_format=array_record`; TensorFlow is needed
then, never here). Images are center-cropped to the model's resolution with ADM's `center_crop_arr` (the
training transform without the flip); grey images get three channels. Class names come from the dataset's
info (its ClassLabel feature), or from a text file (one name per line) where the dataset has only ids
(imagenet2012's labels are WordNet ids).

Every labelled source is random access: `len(source)`, `source[i] -> {"image": uint8 [H, W, 3], "label": int32}`,
`source.class_names`, and `source.key` (a short string naming dataset, split and size, for feature caches).
`ImageFolder` (FID reference images; label always 0) reads *.png/*.jpg/... below a directory, sorted by path.

Dimension letters: H/W image size.
"""

import glob
import hashlib
import os
import re

import numpy as np
from PIL import Image

from dream_jax.data import synthetic, text_lines
from dream_jax.data.webdataset import center_crop_arr

_WORDNET_ID = re.compile(r"^n\d{8}$")

# The dataset settings of every evaluator of labelled images (make_source reads them). dataset: 'shapes' (the
# embedded synthetic set; task = its label) or a tfds name read as ArrayRecord from data_dir ('' = tfds' default).
SOURCE_DEFAULTS = dict(dataset="shapes", data_dir="", image_key="image", label_key="label", class_names_file="",
                       task="shape_color", seed=0, batch_size=256)


def prepare_hint(name, data_dir):
    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return (f"prepare it once with `tfds build {name} --file_format=array_record"
            f"{' --data_dir=' + data_dir if data_dir else ''}` (TensorFlow is needed for that step only) or set "
            f"the evaluator's data_dir; looked in {where}")


def open_tfds(name, split, data_dir, keys, what="dataset"):
    """`tfds.data_source` of a prepared split, checking that it has the features `keys` ({feature: role}, the
    role naming the evaluator's `<role>_key` setting); FileNotFoundError naming what to prepare if absent."""
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"{what}={name!r} is not a tfds dataset name ({str(e).splitlines()[0]})") from e
    except (AssertionError, FileNotFoundError, NotImplementedError, OSError, ValueError) as e:
        raise FileNotFoundError(f"{what}={name!r} split {split!r} is not prepared as ArrayRecord: "
                                f"{prepare_hint(name, data_dir)} ({type(e).__name__})") from e
    features = source.dataset_info.features
    for key, role in keys.items():
        if key not in features:
            raise ValueError(f"tfds dataset {name!r} has no feature {key!r} for the {role}; its features are "
                             f"{sorted(features.keys())} (set the evaluator's {role}_key)")
    return source


class TfdsSource:
    """A tfds split as a labelled random-access source; FileNotFoundError naming what to prepare if absent."""

    def __init__(self, name, split, image_size, data_dir="", image_key="image", label_key="label",
                 class_names_file="", num_examples=0, what="dataset"):
        self.name, self.split, self.image_size = name, split, int(image_size)
        self.image_key, self.label_key = image_key, label_key
        self._source = open_tfds(name, split, data_dir, {image_key: "image", label_key: "label"}, what)
        features = self._source.dataset_info.features
        if class_names_file:
            self.class_names = text_lines.read(class_names_file, f"class_names_file={class_names_file!r}",
                                               "class name")
        else:
            self.class_names = [n.replace("_", " ") for n in features[label_key].names]
        self._len = len(self._source) if not num_examples else min(int(num_examples), len(self._source))
        self.key = f"{name.replace('/', '-')}_{split.replace(':', '-')}_{self._len}_{self.image_size}"

    def readable_class_names(self, what):
        """The class names, or a ValueError asking for a names file when they are WordNet ids."""
        if self.class_names and all(_WORDNET_ID.match(n) for n in self.class_names):
            raise ValueError(f"tfds dataset {self.name!r} names its classes by WordNet ids ({self.class_names[0]}, "
                             f"...); set {what}.class_names_file to a text file with one readable name per line")
        return self.class_names

    def __len__(self):
        return self._len

    def __getitem__(self, index):
        example = self._source[int(index)]
        return {"image": to_rgb(example[self.image_key], self.image_size),
                "label": np.int32(example[self.label_key])}


def rgb_image(image):
    """uint8 [H, W, C] (C = 1 or 3) -> an RGB PIL image."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return Image.fromarray(image).convert("RGB")


def to_rgb(image, size):
    """uint8 [H, W, C] (C = 1 or 3) -> center-cropped RGB uint8 [size, size, 3]."""
    pil = rgb_image(image)
    if pil.size == (size, size):
        return np.asarray(pil)
    return np.ascontiguousarray(center_crop_arr(pil, size), dtype=np.uint8)


class ShapesSource:
    """The synthetic set with a label read from the renderer's attributes: "shape_color" (28 classes) or one
    attribute ("shape", "color", "position", "size")."""

    def __init__(self, split, num_examples, image_size, task="shape_color", seed=0):
        if task == "shape_color":
            pairs = synthetic.shape_color_classes()
            self.class_names = [synthetic.shape_color_prompt(s, c)[2:] for s, c in pairs]
        elif task in synthetic.ATTRIBUTES:
            self.class_names = synthetic.class_names(task)
        else:
            raise ValueError(f"task={task!r}; expected 'shape_color' or one of {synthetic.ATTRIBUTES}")
        self.task = task
        self._source = synthetic.CaptionedShapes(split, num_examples=num_examples, seed=seed,
                                                 image_size=image_size)
        self.key = f"shapes-{task}_{split}_{num_examples}_{image_size}_seed{seed}"

    def readable_class_names(self, what):
        del what
        return self.class_names

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        item = self._source[index]
        if self.task == "shape_color":
            label = int(item["shape"]) * len(synthetic.COLORS) + int(item["color"])
        else:
            label = int(item[self.task])
        return {"image": item["image"], "label": np.int32(label)}


def shapes_split(split):
    """The synthetic split for a split name: 'train', or 'heldout' (also for tfds-style 'test' / 'validation')."""
    return {"test": "heldout", "validation": "heldout"}.get(split, split)


def make_source(settings, split, image_size, what, num_examples=0):
    """The labelled source an evaluator's settings name: dataset 'shapes' or a tfds name."""
    if not settings.get("dataset"):
        raise ValueError(f"{what}.dataset is empty; expected 'shapes' or a tfds dataset name")
    if settings.dataset == "shapes":
        return ShapesSource(shapes_split(split), num_examples or 1024, image_size, settings.get("task", "shape_color"),
                            settings.get("seed", 0))
    return TfdsSource(settings.dataset, split, image_size, settings.get("data_dir", ""),
                      settings.get("image_key", "image"), settings.get("label_key", "label"),
                      settings.get("class_names_file", ""), num_examples, what=f"{what}.dataset")


def evaluator_source(config, name, settings, split, num_examples=0):
    """make_source for the evaluator config.evals.<name>, at the model's image size."""
    return make_source(settings, split, config.tokenizer.image_size, f"config.evals.{name}", num_examples)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolder:
    """Images below `path` (recursive, sorted), center-cropped to `image_size`: `{"image": uint8 [H, W, 3],
    "label": 0}`."""

    def __init__(self, path, image_size, num_examples=0, what="folder"):
        if not path or not os.path.isdir(path):
            raise FileNotFoundError(f"{what}={path!r} is not a directory; provide a folder of real images "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")
        files = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"{what}={path!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.files = files[:num_examples] if num_examples else files
        self.image_size = int(image_size)
        digest = hashlib.sha1("\n".join(self.files).encode()).hexdigest()[:12]
        self.key = f"folder-{digest}_{len(self.files)}_{self.image_size}"

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[int(index)]) as image:
            image.load()
            image = np.ascontiguousarray(center_crop_arr(image.convert("RGB"), self.image_size))
        return {"image": image, "label": np.int32(0)}  # label-less; 0 keeps it readable by evaluation.features
