"""Oracle for the captioned-shapes dataset: reads shape, colour, position and size back from pixels.

It scores zero-shot predictions and the text-image alignment of generated samples, so it is built to
tolerate what generated images look like: noise, blur and an uneven, not-quite-black background.

Per image: the background colour is the per-channel median (a shape covers well under half the image);
a pixel is foreground when some channel rises above the background by more than FOREGROUND_THRESHOLD;
the largest 4-connected foreground blob, holes filled, is the shape. Then
  colour   = nearest palette colour to the median pixel of the blob's interior,
  shape    = nearest (mean squared error) shape template, comparing the blob's coverage map sampled
             around its centroid in units of sqrt(area) (so position and scale drop out) against the
             renderer's own masks sampled the same way, sharp and blurred,
  size     = half-extent implied by the area and the shape's area coefficient, against the midpoint
             of the two rendered sizes,
  position = nearest anchor to the bounding-box centre implied by the centroid and the shape.
Area and centroid are sums over many pixels, so noisy single pixels at the edge barely move them.
Images with no blob of at least MIN_AREA of the image get -1 for every attribute.

Dimension letters: N examples, H/W image height/width, C colour channels (3), S shapes, B template blur
levels, K template side.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from dream_jax.data import synthetic

FOREGROUND_THRESHOLD = 0.35  # in [0, 1] units; about half the weakest palette colour's rise above black
MIN_AREA = 0.004  # fraction of the image (4 pixels at 32x32): smaller blobs are noise, not a shape
TEMPLATE_SIZE = 16
# Blur levels (Gaussian sigma in units of the half-extent) of the shape templates; 0.2 is about 0.9 pixels
# on a small shape at 32x32, as blurry as a sample is likely to be.
TEMPLATE_BLURS = (0.0, 0.1, 0.2)
# Coverage rises linearly from 0 to 1 between these fractions of the shape's brightness (and 1 - it):
# anti-aliased edge pixels stay partly covered while a blurred edge is sharpened back around half height.
COVERAGE_RAMP = 0.3
_SUPERSAMPLE = 4
_MOMENT_GRID = 512

# Midway between the small and large rendered extents, as a fraction of the image side.
SIZE_THRESHOLD = float(synthetic.HALF_EXTENT.sum())

_UINT8_RANGE = (0.0, 255.0)


class _Geometry(NamedTuple):
    """What the oracle knows about each shape S drawn with half-extent 1."""

    area: np.ndarray  # float64 [S]: area in units of half-extent squared
    centroid: np.ndarray  # float64 [S, 2]: (dy, dx) of the centroid from the bounding-box centre
    templates: np.ndarray  # float32 [S, B, K, K]: coverage on the normalised grid at each blur level B


def _normalised_grid(samples_per_side: int) -> np.ndarray:
    """Cell-centre coordinates in [-1, 1], in units of sqrt(area) around the centroid: float64 [n]."""
    return (np.arange(samples_per_side) + 0.5) / samples_per_side * 2.0 - 1.0


def _shape_geometry() -> _Geometry:
    """Area, centroid offset and templates of every shape, measured on the renderer's own masks."""
    fine = _normalised_grid(_MOMENT_GRID)
    cell = (2.0 / _MOMENT_GRID) ** 2
    areas, centroids, templates = [], [], []
    k, f = TEMPLATE_SIZE, _SUPERSAMPLE
    u = _normalised_grid(k * f)
    for s in range(len(synthetic.SHAPES)):
        mask = synthetic.shape_mask(s, fine[:, None], fine[None, :], 1.0)
        area = mask.sum() * cell
        dy, dx = (fine[:, None] * mask).sum() * cell / area, (fine[None, :] * mask).sum() * cell / area
        scale = np.sqrt(area)
        sub = synthetic.shape_mask(s, dy + scale * u[:, None], dx + scale * u[None, :], 1.0)
        areas.append(area)
        centroids.append((dy, dx))
        # The image side thresholds blurred edges at half height (see _read_one), which rounds corners
        # the same way; matching against blurred-then-thresholded templates keeps a blurry square a square.
        blurred = []
        for blur in TEMPLATE_BLURS:
            sigma = blur * k * f / (2.0 * scale)  # in sub-samples
            edge = sub if blur == 0 else ndimage.gaussian_filter(sub * 1.0, sigma, mode="constant") > 0.5
            blurred.append(edge.reshape(k, f, k, f).mean(axis=(1, 3)))
        templates.append(blurred)
    return _Geometry(np.array(areas), np.array(centroids), np.array(templates, dtype=np.float32))


def to_unit_range(images: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Images as float32 [N, H, W, C] in [0, 1] (values outside the range are kept, not clipped).

    uint8 input is read as 0..255 unless `value_range` says otherwise; float input needs `value_range`,
    e.g. (-1, 1) for model outputs or (0, 1), because guessing it silently would misread colours.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images have shape {images.shape}; expected [N, H, W, 3]")
    if value_range is None:
        if images.dtype != np.uint8:
            raise ValueError(
                f"images have dtype {images.dtype}; pass value_range, e.g. (-1, 1) or (0, 1), for floats"
            )
        value_range = _UINT8_RANGE
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range={value_range!r}; expected (low, high) with high > low")
    return ((images.astype(np.float32) - low) / (high - low)).astype(np.float32)


def _shape_blob(rise: np.ndarray) -> np.ndarray | None:
    """Boolean [H, W] mask of the largest foreground blob given the rise over background, or None."""
    labels, count = ndimage.label(rise > FOREGROUND_THRESHOLD)
    if count == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    if areas.max() < MIN_AREA * rise.size:
        return None
    return ndimage.binary_fill_holes(labels == (np.argmax(areas) + 1))


def _read_one(image: np.ndarray, geometry: _Geometry) -> tuple[int, int, int, int]:
    """(shape, color, position, size) of one [H, W, C] image in [0, 1]; all -1 if no shape is found."""
    background = np.median(image.reshape(-1, 3), axis=0)
    # Shapes are always brighter than the dark background; a one-sided test halves noise false positives.
    rise = (image - background).max(axis=-1)
    blob = _shape_blob(rise)
    if blob is None:
        return -1, -1, -1, -1

    # Edge pixels are partly background (anti-aliasing, blur), so colour comes from the interior.
    core = ndimage.binary_erosion(blob)
    core = core if core.any() else blob
    pixel = np.median(image[core], axis=0)
    color = int(np.argmin(((synthetic.PALETTE / 255.0 - pixel) ** 2).sum(axis=-1)))

    # Coverage of each pixel by the shape, 0..1; the dilated support keeps partly covered edge pixels
    # below the threshold and drops stray noise elsewhere.
    level = max(float(np.median(rise[core])), FOREGROUND_THRESHOLD)
    ramp = np.clip((rise / level - COVERAGE_RAMP) / (1.0 - 2.0 * COVERAGE_RAMP), 0.0, 1.0)
    coverage = ramp * ndimage.binary_dilation(blob)
    area = float(coverage.sum())
    ys, xs = np.indices(coverage.shape)
    centroid = np.array([(ys * coverage).sum(), (xs * coverage).sum()]) / area

    u = _normalised_grid(TEMPLATE_SIZE) * np.sqrt(area)
    grid = np.meshgrid(centroid[0] + u, centroid[1] + u, indexing="ij")
    box = ndimage.map_coordinates(coverage, grid, order=1, mode="constant", cval=0.0)
    errors = ((geometry.templates - box) ** 2).mean(axis=(2, 3))
    shape = int(np.argmin(errors.min(axis=1)))

    half_extent = np.sqrt(area / geometry.area[shape])
    side = np.array(image.shape[:2], dtype=np.float64)
    # Index coordinates put pixel centres at integers; the renderer puts them at +0.5.
    box_center = (centroid + 0.5 - geometry.centroid[shape] * half_extent) / side
    position = int(np.argmin(((synthetic.ANCHORS - box_center) ** 2).sum(axis=-1)))
    size = int(2.0 * half_extent / side.max() > SIZE_THRESHOLD)
    return shape, color, position, size


def read_attributes(
    images: np.ndarray, value_range: tuple[float, float] | None = None
) -> dict[str, np.ndarray]:
    """Attribute indices read from images: {"shape", "color", "position", "size"} -> int32 [N].

    `images` is uint8 [N, H, W, C], or float with `value_range` = (low, high), e.g. (-1, 1).
    An image without a detectable shape gets -1 for every attribute.
    """
    unit = to_unit_range(images, value_range)
    geometry = _shape_geometry()
    rows = [_read_one(image, geometry) for image in unit]
    table = np.array(rows, dtype=np.int32).reshape(len(unit), len(synthetic.ATTRIBUTES))
    return {name: table[:, i] for i, name in enumerate(synthetic.ATTRIBUTES)}


def alignment(
    images: np.ndarray, targets: dict, value_range: tuple[float, float] | None = None
) -> dict[str, float]:
    """Fraction of images whose read-back attributes match `targets` (attribute -> int [N]).

    Returns one rate per given attribute, plus "shape_color" (both right) when shape and color are
    given and "all" when all four are. An image without a detectable shape matches nothing.
    """
    unknown = set(targets) - set(synthetic.ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown target attributes {sorted(unknown)}; expected {synthetic.ATTRIBUTES}")
    if not targets:
        raise ValueError(f"targets is empty; expected some of {synthetic.ATTRIBUTES}")
    return match_rates(read_attributes(images, value_range), targets)


def matches(read: dict, targets: dict) -> dict[str, np.ndarray]:
    """bool [N] per given attribute: the read-back value equals the target; plus "shape_color" when shape and color
    are given and "all" when all four are (the per-sample hits behind match_rates, for paired comparisons)."""
    n = len(read["shape"])
    if n == 0:
        raise ValueError("images is empty; alignment needs at least one image")
    hits = {}
    for name, target in targets.items():
        target = np.asarray(target).reshape(-1)
        if target.shape != (n,):
            raise ValueError(f"targets[{name!r}] has {target.shape[0]} entries; expected {n} (one per image)")
        hits[name] = read[name] == target
    if "shape" in hits and "color" in hits:
        hits["shape_color"] = hits["shape"] & hits["color"]
    if all(name in hits for name in synthetic.ATTRIBUTES):
        hits["all"] = np.logical_and.reduce([hits[name] for name in synthetic.ATTRIBUTES])
    return hits


def match_rates(read: dict, targets: dict) -> dict[str, float]:
    """oracle.alignment on attributes already read (read_attributes' output)."""
    return {name: float(hit.mean()) for name, hit in matches(read, targets).items()}


_VALUES = {"shape": synthetic.SHAPES, "color": synthetic.COLORS, "position": synthetic.POSITIONS,
           "size": synthetic.SIZES}


def attribute_kl(read: dict, targets: dict, prior: float = 0.5) -> dict[str, float]:
    """KL(prompted || read back) in nats per attribute: how far the samples' distribution of each attribute is
    from the prompts', whether or not each sample matches its own prompt.

    Bins are the attribute's values plus one for "no shape found" (-1). `prior` counts (Jeffreys) are added to every
    bin of both histograms, so that a value the samples never show costs a finite amount.
    """
    out = {}
    for name, target in targets.items():
        bins = len(_VALUES[name])
        counts = [np.bincount(np.asarray(v).reshape(-1) + 1, minlength=bins + 1) + prior for v in (target, read[name])]
        p, q = (c / c.sum() for c in counts)
        out[name] = float(np.sum(p * np.log(p / q)))
    return out
