"""Exact, reproducible label noise for classification labels and segmentation masks.

Classification (`corrupt_labels`):
- `symmetric`: exactly `round(rate * N)` labels (Python's `round`, half to even) are flipped, each to a class drawn
  uniformly from the C - 1 *other* classes, so a flip never redraws the true label (unlike the reference code).
- `pair`: the same number of positions flip, class c -> (c + 1) mod C.

Reproducibility contract: position i receives a random key that depends only on (seed, i); the flipped positions are
the `round(rate * N)` smallest keys, so *which* positions flip depends on (seed, N) and never on the label values.
The new class of position i depends only on (seed, i, labels[i]). Noise is applied once, eagerly, when a dataset is
built, so shuffling, iteration order, batch size and the number of loader workers cannot change it. Our datasets
list their files in a sorted, fixed order, so a position is a stable sample identity.

Rate rule ("a rate that leaves no clean class"): the true label must stay the single most frequent noisy label of
its class. Symmetric noise keeps `1 - rate` on the true class and puts `rate / (C - 1)` on each other class, so it
needs `rate < (C - 1) / C`; pair noise puts `rate` on one other class, so it needs `rate < 0.5`. Any rate outside
[0, 1), or outside these bounds, raises ValueError.

Segmentation (`corrupt_masks`): object regions are the 4-connected components of each non-background,
non-void class in each mask. Exactly `round(rate * R)` of all R regions are relabelled to another *object* class
(uniformly, or the next object class for `pair`), with the same per-position key rule over regions listed in
(image, class, scan) order. Background and void pixels are never touched.

Draws (`draw="train"` or `"val"`): the validation labels of the noisy-validation protocol (no clean labels exist) get
the same kind and rate as the training labels but a separate draw, from random streams of their own: which positions
flip, and to what, is independent of the training draw for the same seed. The training draw's streams are the ones
this module always used, so every published training draw is unchanged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

try:  # scipy ships with scikit-learn; the flood fill below is only a fallback
    from scipy import ndimage as _ndimage
except ImportError:  # pragma: no cover
    _ndimage = None

__all__ = [
    "NOISE_DRAWS",
    "NOISE_KINDS",
    "check_noise_rate",
    "corrupt_labels",
    "corrupt_masks",
    "check_region_noise_rate",
    "find_regions",
    "plan_region_noise",
    "apply_region_relabels",
    "flip_counts",
    "save_audit",
]

NOISE_KINDS = ("symmetric", "pair")
NOISE_DRAWS = ("train", "val")

# Independent random streams per purpose, so e.g. changing the class draw never moves the flipped set.
_STREAM_LABEL_KEYS, _STREAM_LABEL_CLASS, _STREAM_REGION_KEYS, _STREAM_REGION_CLASS = 0, 1, 2, 3
# each draw owns 4 streams: train 0-3 (as always), val 4-7. A stream id, not an extra seed word: SeedSequence pads
# its entropy with zeros, so [seed, stream, 0] would be the very same stream as [seed, stream]
_DRAW_STREAMS = {"train": 0, "val": 4}


def _rng(seed: int, stream: int) -> np.random.Generator:
    # PCG64 from a SeedSequence: the same stream on every platform and numpy 2.x version.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), stream])))


def check_noise_rate(rate: float, num_classes: int, kind: str = "symmetric") -> None:
    """Raise ValueError unless `rate` is a valid noise rate for `kind` over `num_classes` classes."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    if num_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes to flip between, got num_classes={num_classes}")
    if not isinstance(rate, (int, float)) or math.isnan(rate) or not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate must be a number in [0, 1), got {rate!r}")
    limit = (num_classes - 1) / num_classes if kind == "symmetric" else 0.5
    if rate >= limit:
        raise ValueError(
            f"{kind} noise rate {rate} leaves no clean class with {num_classes} classes: the true label must stay "
            f"the most frequent one, which needs rate < {limit:.4g}"
        )


def _draw_offset(draw: str) -> int:
    if draw not in _DRAW_STREAMS:
        raise ValueError(f"unknown noise draw {draw!r}; choose one of {', '.join(NOISE_DRAWS)}")
    return _DRAW_STREAMS[draw]


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"noise seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _pick(num_items: int, rate: float, seed: int, stream: int) -> np.ndarray:
    """Boolean mask of exactly round(rate * n) items: those with the smallest per-position keys."""
    keys = _rng(seed, stream).random(num_items)
    chosen = np.zeros(num_items, dtype=bool)
    chosen[np.argsort(keys, kind="stable")[: round(rate * num_items)]] = True
    return chosen


def corrupt_labels(
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    num_classes: int,
    rate: float,
    kind: str = "symmetric",
    seed: int = 0,
    draw: str = "train",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly `round(rate * N)` labels; returns `(noisy, flipped_mask)`.

    `labels` may be a list, numpy array or tensor of ints in [0, num_classes); the result is always a 1-D
    torch LongTensor of noisy labels and a BoolTensor marking the flipped positions (`noisy != labels` exactly
    there). The input is not modified. `draw` ("train" or "val") picks independent streams for the same seed.
    See the module docstring for the reproducibility contract.
    """
    check_noise_rate(rate, num_classes, kind)
    seed = _check_seed(seed)
    off = _draw_offset(draw)
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long().reshape(-1).cpu()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{int(y.min())}, {int(y.max())}]")
    n = len(y)
    flipped = torch.from_numpy(_pick(n, rate, seed, off + _STREAM_LABEL_KEYS))
    if kind == "symmetric":
        # An offset in 1..C-1 added mod C is uniform over the other classes and never returns the true one.
        offsets = torch.from_numpy(_rng(seed, off + _STREAM_LABEL_CLASS).integers(1, num_classes, size=n))
    else:
        offsets = torch.ones(n, dtype=torch.long)
    noisy = torch.where(flipped, (y + offsets) % num_classes, y)
    return noisy, flipped


def find_regions(
    mask: np.ndarray | torch.Tensor, ignore_index: int = 255, background: int = 0
) -> tuple[np.ndarray, list[int]]:
    """Label the object regions of one mask.

    Returns `(region_map, region_classes)`: `region_map` holds 0 outside objects and 1..R inside, numbered by
    class then in scan order; `region_classes[r - 1]` is the class of region r.
    """
    m = mask.numpy() if torch.is_tensor(mask) else np.asarray(mask)
    region_map = np.zeros(m.shape, dtype=np.int32)
    classes: list[int] = []
    for c in np.unique(m):
        c = int(c)
        if c in (background, ignore_index):
            continue
        comp, count = _label_components(m == c)
        region_map[comp > 0] = comp[comp > 0] + len(classes)
        classes.extend([c] * count)
    return region_map, classes


def _label_components(binary: np.ndarray) -> tuple[np.ndarray, int]:
    if _ndimage is not None:
        comp, count = _ndimage.label(binary)
        return comp, int(count)
    comp = np.zeros(binary.shape, dtype=np.int32)  # pragma: no cover - iterative 4-connected flood fill
    count = 0
    h, w = binary.shape
    for sy, sx in zip(*np.nonzero(binary)):
        if comp[sy, sx]:
            continue
        count += 1
        stack = [(sy, sx)]
        comp[sy, sx] = count
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not comp[ny, nx]:
                    comp[ny, nx] = count
                    stack.append((ny, nx))
    return comp, count


def check_region_noise_rate(rate: float, num_classes: int, kind: str = "symmetric", background: int = 0) -> list[int]:
    """Validate a segmentation noise rate (the label rule over object classes); returns the object classes."""
    objects = [c for c in range(num_classes) if c != background]
    if len(objects) < 2:
        raise ValueError(
            f"segmentation noise relabels an object region to another object class, which needs at least 2 object "
            f"classes besides background; this dataset has {len(objects)}"
        )
    check_noise_rate(rate, len(objects), kind)
    return objects


def plan_region_noise(
    region_classes: Sequence[Sequence[int]],
    num_classes: int,
    rate: float,
    kind: str = "symmetric",
    seed: int = 0,
    background: int = 0,
    draw: str = "train",
) -> list[tuple[int, int, int, int]]:
    """Choose which regions to relabel; returns `(image index, region id, old class, new class)` tuples.

    `region_classes[i]` lists the classes of image i's regions as returned by `find_regions`; `draw` as in
    `corrupt_labels`.
    """
    objects = check_region_noise_rate(rate, num_classes, kind, background)
    seed = _check_seed(seed)
    off = _draw_offset(draw)
    flat = [(i, r + 1, c) for i, classes in enumerate(region_classes) for r, c in enumerate(classes)]
    chosen = _pick(len(flat), rate, seed, off + _STREAM_REGION_KEYS)
    if kind == "symmetric":
        offsets = _rng(seed, off + _STREAM_REGION_CLASS).integers(1, len(objects), size=len(flat))
    else:
        offsets = np.ones(len(flat), dtype=np.int64)
    position = {c: k for k, c in enumerate(objects)}
    plan = []
    for j in np.flatnonzero(chosen):
        i, r, c = flat[j]
        if c not in position:
            raise ValueError(f"mask of image {i} holds class {c}, outside [0, {num_classes})")
        plan.append((i, r, c, objects[(position[c] + int(offsets[j])) % len(objects)]))
    return plan


def apply_region_relabels(
    mask: np.ndarray | torch.Tensor,
    relabels: Sequence[tuple[int, int, int]],
    ignore_index: int = 255,
    background: int = 0,
) -> np.ndarray | torch.Tensor:
    """Return a copy of `mask` with regions relabelled; `relabels` holds `(region id, old, new)` triples."""
    region_map, classes = find_regions(mask, ignore_index, background)
    out = mask.clone() if torch.is_tensor(mask) else np.array(mask, copy=True)
    for region, old, new in relabels:
        if region > len(classes) or classes[region - 1] != old:
            raise ValueError(f"region {region} is not of class {old}: the mask changed since noise was planned")
        sel = region_map == region
        out[torch.from_numpy(sel) if torch.is_tensor(out) else sel] = new
    return out


def corrupt_masks(
    masks: torch.Tensor | np.ndarray | Sequence[np.ndarray | torch.Tensor],
    num_classes: int,
    rate: float,
    seed: int = 0,
    ignore_index: int = 255,
    background: int = 0,
    kind: str = "symmetric",
    draw: str = "train",
) -> tuple[torch.Tensor | list[torch.Tensor], list[tuple[int, int, int, int]]]:
    """Relabel exactly `round(rate * R)` of the R object regions across all masks.

    `masks` is an [N, H, W] tensor/array or a list of [H, W] masks (sizes may differ). Returns the noisy masks as a
    LongTensor [N, H, W] (or a list of LongTensors for list input) and the list of
    `(image index, region id, old class, new class)` relabels; region ids follow `find_regions`. `draw` as in
    `corrupt_labels`.
    """
    items = [torch.as_tensor(np.asarray(m)).long() for m in masks]
    regions = [find_regions(m, ignore_index, background) for m in items]
    plan = plan_region_noise([cls for _, cls in regions], num_classes, rate, kind, seed, background, draw)
    noisy = [m.clone() for m in items]
    for i, r, _old, new in plan:
        noisy[i][torch.from_numpy(regions[i][0] == r)] = new
    if isinstance(masks, (torch.Tensor, np.ndarray)):
        return (torch.stack(noisy) if noisy else torch.as_tensor(np.asarray(masks)).long()), plan
    return noisy, plan


def flip_counts(changes: Sequence[tuple[int, int]], num_classes: int) -> dict[str, Any]:
    """Audit counts of `(true class, noisy class)` changes: `flips_per_class` (index = true class, every class listed)
    and `transitions` (`[true, noisy, count]`, sorted)."""
    per_class = [0] * num_classes
    pairs: dict[tuple[int, int], int] = {}
    for old, new in changes:
        per_class[int(old)] += 1
        pairs[(int(old), int(new))] = pairs.get((int(old), int(new)), 0) + 1
    return {"flips_per_class": per_class, "transitions": [[a, b, n] for (a, b), n in sorted(pairs.items())]}


def save_audit(audit: dict[str, Any] | None, path: str | os.PathLike) -> None:
    """Write a dataset's `noise_audit` (or a note that there was no noise) as JSON, so a run can be audited."""
    with open(path, "w") as f:
        json.dump(audit if audit is not None else {"kind": None, "rate": 0.0}, f, indent=1)
