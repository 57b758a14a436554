"""Images with per-pixel targets for the dense probes (evaluation/segmentation.py, evaluation/depth.py).

Every source is random access: `len(source)`, `source[i] -> {"image": uint8 [S, S, 3], "target": [S, S]}`, and
`source.key` (dataset, split, size). Segmentation targets are uint8 class ids with IGNORE (255) for unlabelled
pixels (`source.num_classes` classes); depth targets are float16 metres with 0 where the depth is unknown
(small dtypes because the probes hold every target of a split in host memory).

Datasets: 'shapes' (the embedded renderer's per-pixel ground truth, synthetic.CaptionedShapes.dense: 29 classes with
the background one of them, depth from synthetic.shape_depth) or a tfds dataset read as ArrayRecord
(eval_sources.open_tfds: nothing downloads; a missing split names the `tfds build` command), e.g. `scene_parse150`
(ADE20K's 150 classes: `annotation` is a PNG whose first channel holds 0 = "other", ignored, and 1..150, shifted to
0..149 as mmseg's reduce_zero_label) and `nyu_depth_v2` (`depth`: float metres, 0 = no reading).

Resolution: image and target are resized together so that the short side is the model's image size S (image
bicubic, class ids nearest, depth bilinear with Pillow's area-weighted downscaling) and the central S x S square
is cut from both, so every target pixel lies under its image pixel. A depth pixel whose bilinear footprint touches a
missing reading becomes missing. The probes are trained and scored at this S x S resolution (DINOv2 scores ADE20K
at 512 px with a sliding window and NYU at its 480 x 640 frames; the standard NYU eval crop is not applied, the
center crop already drops the frames' border columns).

Dimension letters: S image size, H/W the dataset's frame size, C channels.
"""

import numpy as np
from PIL import Image

from dream_jax.data import eval_sources, synthetic

IGNORE = 255
TASKS = ("segmentation", "depth")


def center_crop_pair(image, target, size, task):
    """(image uint8 [H, W, C], target [H, W]) -> (uint8 [S, S, 3], target [S, S]) cut from the same region:
    short side resized to `size`, central square; class ids by nearest neighbour, depth bilinear."""
    image = eval_sources.rgb_image(image)
    target = np.asarray(target)
    if (image.size[1], image.size[0]) != target.shape[:2]:
        raise ValueError(f"image {image.size[1]}x{image.size[0]} and target {target.shape[0]}x{target.shape[1]} "
                         "differ in size")
    scale = size / min(image.size)
    new = tuple(max(size, round(x * scale)) for x in image.size)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    box = (left, top, left + size, top + size)
    rgb = np.asarray(image.resize(new, Image.Resampling.BICUBIC).crop(box), np.uint8)
    if task == "segmentation":
        labels = Image.fromarray(target.astype(np.int32)).resize(new, Image.Resampling.NEAREST).crop(box)
        return rgb, np.asarray(labels).astype(np.uint8)
    depth = target.astype(np.float32)
    valid = (depth > 0).astype(np.float32)
    resized = np.asarray(Image.fromarray(depth * valid).resize(new, Image.Resampling.BILINEAR).crop(box))
    coverage = np.asarray(Image.fromarray(valid).resize(new, Image.Resampling.BILINEAR).crop(box))
    return rgb, np.where(coverage > 0.999, resized, 0.0).astype(np.float16)


def reduce_zero_label(annotation, num_classes):
    """An ADE20K-style annotation (uint8 [H, W] or [H, W, C], class ids in the first channel, 0 = unlabelled) ->
    int32 [H, W] ids 0..num_classes-1, IGNORE for unlabelled and out-of-range pixels."""
    a = np.asarray(annotation).astype(np.int32)
    if a.ndim == 3:
        a = a[..., 0]
    return np.where((a >= 1) & (a <= num_classes), a - 1, IGNORE).astype(np.int32)


class TfdsDenseSource:
    """A tfds split with an image and a per-pixel target feature (`target_key`): ADE20K-style class ids for
    `task='segmentation'`, depth in metres for 'depth'."""

    def __init__(self, task, name, split, image_size, data_dir="", image_key="image", target_key="annotation",
                 num_classes=150, num_examples=0, what="dataset"):
        self.task, self.image_size, self.num_classes = task, int(image_size), int(num_classes)
        self.image_key, self.target_key = image_key, target_key
        self._source = eval_sources.open_tfds(name, split, data_dir, {image_key: "image", target_key: "target"},
                                              what)
        self._len = len(self._source) if not num_examples else min(int(num_examples), len(self._source))
        self.key = f"{name.replace('/', '-')}_{split.replace(':', '-')}_{self._len}_{self.image_size}_{task}"

    def __len__(self):
        return self._len

    def __getitem__(self, index):
        example = self._source[int(index)]
        target = example[self.target_key]
        if self.task == "segmentation":
            target = reduce_zero_label(target, self.num_classes)
        image, target = center_crop_pair(example[self.image_key], target, self.image_size, self.task)
        return {"image": image, "target": target}


class ShapesDenseSource:
    """The synthetic set with the renderer's per-pixel segmentation (29 classes, background included) or depth."""

    def __init__(self, task, split, num_examples, image_size, seed=0):
        self.task, self.num_classes = task, synthetic.NUM_SEGMENTATION_CLASSES
        self._source = synthetic.CaptionedShapes(split, num_examples=num_examples, seed=seed, image_size=image_size)
        self.key = f"shapes-{task}_{split}_{num_examples}_{image_size}_seed{seed}"

    def __len__(self):
        return len(self._source)

    def __getitem__(self, index):
        item = self._source.dense(index)
        if self.task == "segmentation":
            return {"image": item["image"], "target": item["segmentation"].astype(np.uint8)}
        return {"image": item["image"], "target": item["depth"].astype(np.float16)}


def make_dense_source(settings, task, split, image_size, what, num_examples=0):
    """The dense source of an evaluator's settings (dataset, data_dir, image_key, target_key, num_classes, seed)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {TASKS}")
    if not settings.get("dataset"):
        raise ValueError(f"{what}.dataset is empty; expected 'shapes' or a tfds dataset name")
    if settings.dataset == "shapes":
        return ShapesDenseSource(task, eval_sources.shapes_split(split), num_examples or 512, image_size,
                                 settings.get("seed", 0))
    return TfdsDenseSource(task, settings.dataset, split, image_size, settings.get("data_dir", ""),
                           settings.get("image_key", "image"), settings.target_key, settings.get("num_classes", 150),
                           num_examples, what=f"{what}.dataset")
