"""Offline default datasets that need no download: `digits` (classification) and `shapes` (segmentation).

digits: scikit-learn's bundled UCI handwritten digits (1,797 real 8x8 images, 10 classes), upscaled bilinearly to
32x32 and repeated over 3 channels. One fixed stratified 60/20/20 train/val/test split (seed 0, independent of the
`seed` argument) so every run evaluates on the same images: 1,078 / 360 / 359.

shapes: procedurally generated segmentation, 4 classes: background, ellipse, rectangle, triangle. Each 64x64 image
(default) holds 4-7 rotated shapes of random size (ellipses and rectangles of aspect up to 1.5, triangles from
equilateral to moderately skewed) placed apart from each other (a shape that finds no free place after 30 tries is left
out), on a background made of a smooth random colour field, random stripes and 0-2 thin line distractors, plus Gaussian
pixel noise. Shape colours and textures are drawn independently of the class from the same distribution as the
background, so only geometry tells the classes apart; a shape's colour is redrawn until it differs from the image under
it by at least 0.3 (RGB distance), so its outline is visible. Image i of a split depends only on (seed, split, i):
default sizes are 600 / 150 / 150 images, set with `size=`; resolution with `image_size=`.

`overlap=True` gives the generator before 2026-11-26: 2-5 shapes that may occlude each other, no contrast rule (the
shape geometry of the current one). Learning on it was slower: Unet-resnet18 BP at 64 px, 300 steps of batch 16,
33.4 validation mIoU on the old generator against 38.4 on this one (see leaderboards/README.md).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ._base import DatasetError, carve_split

__all__ = ["SHAPES_CLASSES", "SHAPES_SIZES", "digits_split_indices", "load_digits_split", "generate_shapes"]

SHAPES_CLASSES = ("background", "ellipse", "rectangle", "triangle")
SHAPES_SIZES = {"train": 600, "val": 150, "test": 150}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@functools.lru_cache(maxsize=4)
def _digits_all(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)  # [N, 1, 8, 8], values 0..16
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp_(0, 1)
    # one uint8 channel (the dataset repeats it to RGB per item): 90 MB instead of 1 GB at 224x224
    return x.mul_(255).round_().to(torch.uint8), torch.from_numpy(bunch.target).long()


def digits_split_indices(split: str) -> np.ndarray:
    """Indices into scikit-learn's `load_digits()` of one split (fixed, stratified 60/20/20)."""
    labels = _digits_all(8)[1].numpy()
    rest, test = carve_split(len(labels), 0.2, labels)
    train, val = carve_split(len(rest), 0.25, labels[rest])
    return {"train": rest[train], "val": rest[val], "test": test}[split]


def load_digits_split(split: str, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images [n, 1, S, S] as uint8 and labels [n] of one fixed stratified split."""
    images, labels = _digits_all(image_size)
    idx = torch.from_numpy(digits_split_indices(split))
    return images[idx], labels[idx]


# ----------------------------------------------------------------------------------------------- shapes


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, size=3)


def _stripes(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    """A random sinusoidal grating in [-1, 1]; used for both background and shape textures."""
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(0.08, 0.35) * size
    phase = rng.uniform(0, 2 * np.pi)
    return np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)


def _shape_mask(rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    cy, cx = rng.uniform(0.15, 0.85, size=2) * size
    theta = rng.uniform(0, np.pi)
    # coordinates in the shape's rotated frame
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    if cls == 1:  # ellipse, aspect up to 1.5 so it is not always a circle
        a = rng.uniform(0.12, 0.28) * size
        b = a / rng.uniform(1.0, 1.5)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if cls == 2:  # rectangle
        a = rng.uniform(0.11, 0.26) * size
        b = a / rng.uniform(1.0, 1.5)
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # triangle: three vertices at jittered angles around the centre, from equilateral to moderately skewed
    r = rng.uniform(0.2, 0.38) * size
    angles = np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, size=3)
    px, py = r * np.cos(angles), r * np.sin(angles) * rng.uniform(0.75, 1.0)
    inside_pos = np.ones_like(u, dtype=bool)
    inside_neg = np.ones_like(u, dtype=bool)
    for k in range(3):
        x0, y0, x1, y1 = px[k], py[k], px[(k + 1) % 3], py[(k + 1) % 3]
        cross = (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0)
        inside_pos &= cross >= 0
        inside_neg &= cross <= 0
    return inside_pos | inside_neg


_PLACEMENT_TRIES = 30
_MIN_CONTRAST = 0.3  # RGB distance between a shape's colour and the mean of the image it covers


def _grow(mask: np.ndarray) -> np.ndarray:
    """`mask` dilated by one pixel (4-neighbourhood)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _render_one(
    seed: int, split: int, index: int, size: int, noise_std: float, overlap: bool
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, split, index, 1009])))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    # background: smooth colour field (a random 4x4 grid of colours, bilinearly upsampled) plus a random grating
    grid = torch.from_numpy(rng.uniform(0, 1, size=(1, 3, 4, 4)).astype(np.float32))
    image = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0].numpy()
    image = image + rng.uniform(0.1, 0.3) * _stripes(rng, yy, xx, size)[None] * (
        _random_colour(rng)[:, None, None] - 0.5
    )
    mask = np.zeros((size, size), dtype=np.uint8)
    # thin line distractors stay background: an edge detector alone cannot find the objects
    for _ in range(rng.integers(0, 3)):
        p0, p1 = rng.uniform(0, size, size=2), rng.uniform(0, size, size=2)
        d = p1 - p0
        t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        line = (xx - p0[0] - t * d[0]) ** 2 + (yy - p0[1] - t * d[1]) ** 2 <= (rng.uniform(0.6, 1.5)) ** 2
        image[:, line] = _random_colour(rng)[:, None]
    occupied = np.zeros((size, size), dtype=bool)  # shapes so far, grown by a pixel: a new shape keeps clear of them
    for _ in range(rng.integers(4, 8) if not overlap else rng.integers(2, 6)):
        cls = int(rng.integers(1, 4))
        inside = _shape_mask(rng, cls, yy, xx, size)
        if not overlap:
            for _ in range(_PLACEMENT_TRIES):
                if not (inside & occupied).any():
                    break
                inside = _shape_mask(rng, cls, yy, xx, size)
            else:
                continue  # no free place for it: this image holds one shape fewer
            occupied |= _grow(inside)
        colour = _random_colour(rng)
        if not overlap:  # the outline must be visible: the colour differs from the image under the shape
            under = image[:, inside].mean(axis=1)
            for _ in range(_PLACEMENT_TRIES):
                if np.linalg.norm(colour - under) >= _MIN_CONTRAST:
                    break
                colour = _random_colour(rng)
        texture = rng.uniform(0.0, 0.25) * _stripes(rng, yy, xx, size)
        image[:, inside] = (colour[:, None] + texture[inside][None]).astype(np.float32)
        mask[inside] = cls
    image = image + rng.normal(0.0, noise_std, size=image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32), mask


@functools.lru_cache(maxsize=8)
def generate_shapes(
    split: str,
    size: int | None = None,
    image_size: int = 64,
    seed: int = 0,
    noise_std: float = 0.08,
    overlap: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [n, 3, S, S] in [0, 1] and masks [n, S, S] (uint8 class ids) of one shapes split.

    Cached: callers must not modify the returned tensors in place.
    """
    n = SHAPES_SIZES[split] if size is None else int(size)
    if n < 0 or image_size < 8:
        raise DatasetError(f"shapes needs size >= 0 and image_size >= 8, got size={n}, image_size={image_size}")
    pairs = [_render_one(seed, _SPLIT_CODE[split], i, image_size, noise_std, overlap) for i in range(n)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs])) if pairs else torch.zeros(0, 3, image_size, image_size)
    masks = torch.from_numpy(np.stack([p[1] for p in pairs])) if pairs else torch.zeros(0, image_size, image_size)
    return images, masks.to(torch.uint8)
