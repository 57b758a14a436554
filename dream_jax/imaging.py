"""PNG output: image grids for samples and docs (Pillow only).

Dimension letters: R rows, C columns, H/W image size.
"""

import os

import numpy as np
from PIL import Image


def grid(images, pad=2, upscale=1):
    """uint8 [R, C, H, W, 3] -> one uint8 image with `pad` pixels of white between cells, upscaled (nearest)."""
    images = np.asarray(images, np.uint8)
    if upscale > 1:
        images = images.repeat(upscale, axis=2).repeat(upscale, axis=3)
    rows, cols, h, w, ch = images.shape
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, ch), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            out[y:y + h, x:x + w] = images[r, c]
    return out


def save_png(image, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)
    return path
