"""The embedded captioned-shapes dataset: one coloured shape on a dark background, captioned from templates.

Every image shows a single filled shape whose four attributes (shape, colour, position, size) are drawn
from small fixed tuples; the caption states all four. Because the attributes are known, an oracle
(`dream_jax.data.oracle`) can read them back from any image, which gives exact zero-shot accuracy and
text-image alignment without downloading anything.

Every item also has per-pixel ground truth for the dense probes (`CaptionedShapes.dense`, `render_dense`): a
segmentation map (0 = background, 1 + shape * len(COLORS) + colour on the shape: 29 classes) and a depth map (the
background at FAR_DEPTH, the shape at `shape_depth` of its size and height in the image), both on the pixels the
shape covers at least half of, from the same supersampled mask that shades them.

Splits: `train` and `heldout`. Every (shape, colour) pair occurs in both, so zero-shot shape x colour
classification is learnable, but about 14% of the full (shape, colour, position, size) combinations and
the last two caption templates occur only in `heldout`.

Dimension letters: N examples, H/W image height/width, C colour channels (3).
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
SIZES = ("small", "large")
ATTRIBUTES = ("shape", "color", "position", "size")
SPLITS = ("train", "heldout")

# Saturated RGB values at least ~190 apart (L2) so colour jitter, noise and blur never make them ambiguous.
PALETTE = np.array(
    [
        (230, 30, 30),  # red
        (30, 210, 40),  # green
        (40, 70, 250),  # blue
        (235, 225, 30),  # yellow
        (225, 40, 225),  # magenta
        (30, 215, 230),  # cyan
        (240, 240, 240),  # white
    ],
    dtype=np.int32,
)

# Shape centres as (row, column) fractions of the image side, in POSITIONS order.
ANCHORS = np.array(
    [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75), (0.5, 0.5)], dtype=np.float64
)

# Half of the shape's extent (its bounding box side / 2) as a fraction of the image side, in SIZES order.
# A small shape (9 pixels across at 32x32) is still big enough for a circle to look round; a large one
# (13.4 pixels) still fits at a corner anchor with jitter; the oracle separates them by one threshold.
HALF_EXTENT = np.array([0.14, 0.21], dtype=np.float64)

# The tables above are constants shared by the renderer and the oracle: make accidental writes fail.
for _table in (PALETTE, ANCHORS, HALF_EXTENT):
    _table.setflags(write=False)
del _table

# Half-width of a cross arm relative to the half-extent; wide enough that a small cross keeps 3-pixel arms.
CROSS_ARM = 0.4

# Jitter keeps images distinct without making any attribute ambiguous.
POSITION_JITTER = 1.0 / 32.0  # fraction of the image side, i.e. one pixel at 32x32
SIZE_JITTER = 0.04  # relative
COLOR_JITTER = 12  # per channel, in 0..255 units
MAX_BACKGROUND = 12  # background grey level is drawn from 0..MAX_BACKGROUND

# Edge pixels are shaded by their area coverage (SUPERSAMPLE^2 samples per pixel): without it a small
# circle rasterises to a rounded square that neither a model nor the oracle can tell from a square.
SUPERSAMPLE = 4

# The dense probes' classes: background, then every (shape, colour) pair in shape_color_classes order.
NUM_SEGMENTATION_CLASSES = 1 + len(SHAPES) * len(COLORS)

# Depth in metres-like units: a pinhole camera over a ground plane, so a shape looks larger the nearer it is and
# sits lower in the image the nearer it is (shape_depth); the background is a wall behind every shape.
DEPTH_SCALE = 0.25
FAR_DEPTH = 5.0

# "{where}" is the grammatical position phrase ("at the top left", "in the center");
# "{position}" is the bare name. The last HELDOUT_TEMPLATES templates are used only by `heldout`.
TEMPLATES = (
    "a {size} {color} {shape} {where}",
    "a {color} {shape}, {size}, {where}",
    "{position}: a {size} {color} {shape}",
    "there is a {size} {color} {shape} {where}",
    "a picture of a {color} {shape} {where}, {size}",
    "{where}, a {size} {color} {shape}",
    "an image showing a {size} {color} {shape} {where}",
    "{size} {shape}, {color}, {position}",
)
HELDOUT_TEMPLATES = 2

_SPLIT_IDS = {name: i for i, name in enumerate(SPLITS)}


def shape_mask(shape: int, dy: np.ndarray, dx: np.ndarray, half_extent: float) -> np.ndarray:
    """Boolean mask of a shape of the given half-extent at offsets (dy, dx) from its bounding-box centre.

    Shared by the renderer and the oracle's shape templates so both agree on what each shape is.
    """
    r = half_extent
    if shape == 0:  # circle
        return dy**2 + dx**2 <= r**2
    if shape == 1:  # square
        return np.maximum(np.abs(dy), np.abs(dx)) <= r
    if shape == 2:  # triangle, apex up, base as wide as it is tall
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == 3:  # cross (plus sign)
        arm = CROSS_ARM * r
        inside = np.maximum(np.abs(dy), np.abs(dx)) <= r
        return inside & ((np.abs(dy) <= arm) | (np.abs(dx) <= arm))
    raise ValueError(f"shape index {shape} out of range; expected 0..{len(SHAPES) - 1} for {SHAPES}")


def _check_index(name: str, value: int, names: tuple) -> int:
    if not 0 <= int(value) < len(names):
        raise ValueError(f"{name} index {value} out of range; expected 0..{len(names) - 1} for {names}")
    return int(value)


def _check_image_size(image_size: int) -> int:
    if int(image_size) != image_size or image_size < 16:
        raise ValueError(f"image_size={image_size!r}; expected an integer >= 16")
    return int(image_size)


def shape_depth(half_extent: float, center_row: float) -> float:
    """Depth of a shape of half-extent and centre row given as fractions of the image side:
    DEPTH_SCALE / half_extent * (1.5 - center_row), i.e. nearer when larger and when lower in the image (between
    about 0.82 for a large bottom shape and 2.4 for a small top one, all nearer than FAR_DEPTH)."""
    return DEPTH_SCALE / half_extent * (1.5 - center_row)


def _draw(shape, color, position, size, rng, image_size):
    """One jittered shape: (image uint8 [H, W, C], coverage float64 [H, W] in [0, 1], centre (row, column) and
    half-extent in pixels)."""
    shape = _check_index("shape", shape, SHAPES)
    color = _check_index("color", color, COLORS)
    position = _check_index("position", position, POSITIONS)
    size = _check_index("size", size, SIZES)
    s = _check_image_size(image_size)

    center = (ANCHORS[position] + rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)) * s
    half_extent = HALF_EXTENT[size] * s * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER))
    rgb = np.clip(PALETTE[color] + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3), 0, 255)
    background = rng.integers(0, MAX_BACKGROUND + 1)

    # Sub-pixel sample centres; pixel (i, j) covers [i, i + 1) x [j, j + 1).
    f = SUPERSAMPLE
    t = (np.arange(s * f, dtype=np.float64) + 0.5) / f
    mask = shape_mask(shape, t[:, None] - center[0], t[None, :] - center[1], half_extent)
    coverage = mask.reshape(s, f, s, f).mean(axis=(1, 3))
    image = background + coverage[..., None] * (rgb - background)
    return np.round(image).astype(np.uint8), coverage, center, half_extent


def render(
    shape: int,
    color: int,
    position: int,
    size: int,
    rng: np.random.Generator,
    image_size: int = 32,
) -> np.ndarray:
    """Draws one shape with seeded jitter; returns uint8 [H, W, C] with H = W = image_size."""
    return _draw(shape, color, position, size, rng, image_size)[0]


def render_dense(
    shape: int,
    color: int,
    position: int,
    size: int,
    rng: np.random.Generator,
    image_size: int = 32,
) -> dict:
    """`render`'s image (the same bytes for the same rng) with its per-pixel ground truth: {"image",
    "segmentation": int32 [H, W], "depth": float32 [H, W]}. A pixel belongs to the shape when the shape covers at
    least half of it, so anti-aliased edge pixels go to whichever side holds most of their area."""
    image, coverage, center, half_extent = _draw(shape, color, position, size, rng, image_size)
    s = image.shape[0]
    inside = coverage >= 0.5
    segmentation = np.where(inside, 1 + int(shape) * len(COLORS) + int(color), 0).astype(np.int32)
    depth = np.where(inside, shape_depth(half_extent / s, center[0] / s), FAR_DEPTH).astype(np.float32)
    return {"image": image, "segmentation": segmentation, "depth": depth}


def segmentation_class_names() -> list[str]:
    """Names of the NUM_SEGMENTATION_CLASSES dense classes: "background", then "red circle", ..."""
    return ["background"] + [shape_color_prompt(sh, co)[2:] for sh, co in shape_color_classes()]


def caption(shape: int, color: int, position: int, size: int, template: int) -> str:
    """The caption of a shape with the given attribute indices, written with template `template`."""
    shape = _check_index("shape", shape, SHAPES)
    color = _check_index("color", color, COLORS)
    position = _check_index("position", position, POSITIONS)
    size = _check_index("size", size, SIZES)
    template = _check_index("template", template, TEMPLATES)
    name = POSITIONS[position]
    where = "in the center" if name == "center" else f"at the {name}"
    return TEMPLATES[template].format(
        shape=SHAPES[shape], color=COLORS[color], position=name, size=SIZES[size], where=where
    )


def is_heldout_combination(shape: int, color: int, position: int, size: int) -> bool:
    """True for the combinations reserved for `heldout` (40 of 280, about 14%).

    The modular rule holds out one or two of the ten (position, size) cells of every (shape, colour)
    pair, so each pair and each attribute value appears in both splits.
    """
    return (shape + 2 * color + 3 * position + 5 * size) % 7 == 0


def split_combinations(split: str) -> np.ndarray:
    """All (shape, color, position, size) index rows of a split: int32 [K, 4]."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    want_heldout = split == "heldout"
    rows = [
        (sh, co, po, si)
        for sh in range(len(SHAPES))
        for co in range(len(COLORS))
        for po in range(len(POSITIONS))
        for si in range(len(SIZES))
        if is_heldout_combination(sh, co, po, si) == want_heldout
    ]
    return np.array(rows, dtype=np.int32)


def split_templates(split: str) -> tuple[int, ...]:
    """Template indices a split draws from."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split={split!r}; expected one of {SPLITS}")
    first_heldout = len(TEMPLATES) - HELDOUT_TEMPLATES
    if split == "heldout":
        return tuple(range(first_heldout, len(TEMPLATES)))
    return tuple(range(first_heldout))


def class_names(attribute: str) -> list[str]:
    """Names of the values of one attribute, in index order."""
    table = {"shape": SHAPES, "color": COLORS, "position": POSITIONS, "size": SIZES}
    if attribute not in table:
        raise ValueError(f"attribute={attribute!r}; expected one of {tuple(table)}")
    return list(table[attribute])


def shape_color_classes() -> list[tuple[int, int]]:
    """(shape, color) index pairs of the joint zero-shot task; class k is shape * len(COLORS) + color."""
    return [(sh, co) for sh in range(len(SHAPES)) for co in range(len(COLORS))]


def shape_color_prompt(shape: int, color: int) -> str:
    """Zero-shot class prompt of the joint task, e.g. "a red circle"."""
    shape = _check_index("shape", shape, SHAPES)
    color = _check_index("color", color, COLORS)
    return f"a {COLORS[color]} {SHAPES[shape]}"


class CaptionedShapes:
    """Grain-compatible random-access source of rendered, captioned shapes.

    Example `index` of split `split` is a pure function of (seed, split, index), so the source holds no
    mutable state and is safe to pickle into grain worker processes.
    """

    def __init__(
        self, split: str = "train", num_examples: int = 100_000, seed: int = 0, image_size: int = 32
    ):
        if split not in _SPLIT_IDS:
            raise ValueError(f"split={split!r}; expected one of {SPLITS}")
        if int(num_examples) != num_examples or num_examples < 1:
            raise ValueError(f"num_examples={num_examples!r}; expected a positive integer")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed={seed!r}; expected a non-negative integer")
        self.split = split
        self.num_examples = int(num_examples)
        self.seed = int(seed)
        self.image_size = _check_image_size(image_size)
        self._combinations = split_combinations(split)
        self._templates = np.array(split_templates(split), dtype=np.int32)

    def __len__(self) -> int:
        return self.num_examples

    def _draw_attributes(self, index):
        """(rng after the draws, shape, colour, position, size, template) of example `index`."""
        index = int(index)
        if index < 0:
            index += self.num_examples
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self!r}")
        rng = np.random.default_rng((self.seed, _SPLIT_IDS[self.split], index))
        sh, co, po, si = (int(v) for v in self._combinations[rng.integers(len(self._combinations))])
        template = int(self._templates[rng.integers(len(self._templates))])
        return rng, sh, co, po, si, template

    def __getitem__(self, index: int) -> dict:
        rng, sh, co, po, si, template = self._draw_attributes(index)
        return {
            "image": render(sh, co, po, si, rng, self.image_size),
            "caption": caption(sh, co, po, si, template),
            "shape": np.int32(sh),
            "color": np.int32(co),
            "position": np.int32(po),
            "size": np.int32(si),
            "template": np.int32(template),
        }

    def dense(self, index: int) -> dict:
        """Example `index`'s image (as `self[index]["image"]`) with its per-pixel ground truth (`render_dense`)."""
        rng, sh, co, po, si, _ = self._draw_attributes(index)
        return render_dense(sh, co, po, si, rng, self.image_size)

    def __repr__(self) -> str:
        return (
            f"CaptionedShapes(split={self.split!r}, num_examples={self.num_examples}, "
            f"seed={self.seed}, image_size={self.image_size})"
        )
