"""Dataset metadata, the user-facing error type, and the dataset classes every loader returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .noise import apply_region_relabels

__all__ = [
    "DatasetError",
    "DatasetInfo",
    "TensorClsDataset",
    "TensorSegDataset",
    "FileClsDataset",
    "FileSegDataset",
    "SPLIT_SEED",
    "carve_split",
]

SPLIT_SEED = 0  # fixed: validation and test membership never move with the training seed


class DatasetError(ValueError):
    """A user-fixable problem (unknown name, bad split, size or noise rate, missing or incomplete files); the message
    says what to do. The harness reports it as a user error (one line, exit code 2)."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset, available without loading any data."""

    name: str
    task: str  # "cls" or "seg"
    num_classes: int
    image_size: int  # side of the square images the dataset yields
    in_chans: int = 3
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    ignore_index: int = -100  # 255 for segmentation (void pixels), the CE default for classification
    class_names: tuple[str, ...] | None = None
    procedural: bool = False  # generated on demand: asking for fewer images generates only those


class _Base(Dataset):
    """Shared attributes: `.info`, `.noise_audit`, `.embedded` (in-memory set generated here)."""

    embedded = False

    def __init__(self, info: DatasetInfo, split: str) -> None:
        self.info = info
        self.split = split
        self.noise_audit: dict[str, Any] | None = None

    def take(self, indices: Sequence[int]) -> None:
        """Keep only the items at `indices`, in that order (before any label noise is drawn)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        noise = "" if self.noise_audit is None else f", noise={self.noise_audit['kind']}@{self.noise_audit['rate']}"
        return f"{type(self).__name__}({self.info.name}, split={self.split}, n={len(self)}{noise})"


class TensorClsDataset(_Base):
    """Classification images held in memory: uint8 or float in [0, 1], shape [N, C, H, W] with C = 3 or 1.

    Grey images (C = 1) are repeated to 3 channels per item, which keeps large upscaled sets 3x smaller.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        info: DatasetInfo,
        split: str,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__(info, split)
        self.images = images
        self.targets = targets.long()
        self.clean_targets = self.targets
        self.transform = transform

    def take(self, indices: Sequence[int]) -> None:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        self.images, self.targets = self.images[idx], self.targets[idx]
        self.clean_targets = self.targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        img = img.float().div_(255.0) if img.dtype == torch.uint8 else img
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        return self.transform(img), int(self.targets[i])


class TensorSegDataset(_Base):
    """Segmentation images [N, 3, H, W] in [0, 1] and masks [N, H, W] held in memory."""

    def __init__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        info: DatasetInfo,
        split: str,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        super().__init__(info, split)
        self.images = images
        self.masks = masks
        self.clean_masks = masks
        self.transform = transform

    def take(self, indices: Sequence[int]) -> None:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        self.images, self.masks = self.images[idx], self.masks[idx]
        self.clean_masks = self.masks

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i], self.masks[i])


class FileClsDataset(_Base):
    """Classification images read from files on demand."""

    def __init__(
        self,
        paths: Sequence[str],
        targets: torch.Tensor,
        info: DatasetInfo,
        split: str,
        transform: Callable[[Any], torch.Tensor],
    ) -> None:
        super().__init__(info, split)
        self.paths = list(paths)
        self.targets = targets.long()
        self.clean_targets = self.targets
        self.transform = transform

    def take(self, indices: Sequence[int]) -> None:
        idx = list(indices)
        self.paths = [self.paths[i] for i in idx]
        self.targets = self.targets[torch.as_tensor(idx, dtype=torch.long)]
        self.clean_targets = self.targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as im:
            img = im.convert("RGB")
        return self.transform(img), int(self.targets[i])


class FileSegDataset(_Base):
    """Segmentation pairs read on demand: `load_image(i) -> PIL image`, `load_mask(i) -> int mask array`.

    Region noise is kept as a plan (image -> relabels) and replayed on the raw mask before the transform,
    so noisy masks never need to sit in memory.
    """

    def __init__(
        self,
        load_image: Callable[[int], Image.Image],
        load_mask: Callable[[int], np.ndarray],
        length: int,
        info: DatasetInfo,
        split: str,
        transform: Callable[[Any, np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        super().__init__(info, split)
        self.load_image = load_image
        self.load_mask = load_mask
        self.length = length
        self.transform = transform
        self.relabel_plan: dict[int, list[tuple[int, int, int]]] = {}

    def take(self, indices: Sequence[int]) -> None:
        idx = list(indices)
        image, mask = self.load_image, self.load_mask
        self.load_image = lambda i: image(idx[i])
        self.load_mask = lambda i: mask(idx[i])
        self.length = len(idx)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, mask = self.load_image(i), self.load_mask(i)
        if i in self.relabel_plan:
            mask = apply_region_relabels(mask, self.relabel_plan[i], self.info.ignore_index)
        return self.transform(img, mask)


def carve_split(
    num_items: int, fraction: float, labels: np.ndarray | None = None, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split `range(num_items)` into (kept, carved) sorted index arrays; stratified by `labels` when given.

    Exactly `round(fraction * num_items)` items are carved. With labels, class c gives `floor(fraction * n_c)`
    items plus one more for the classes with the largest remainders, so small classes still contribute.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 7919])))
    groups = [np.arange(num_items)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    quota = np.array([fraction * len(g) for g in groups])
    take = np.floor(quota).astype(int)
    extra = round(fraction * num_items) - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1  # largest remainders, ties by class order
    carved = [rng.permutation(g)[:k] for g, k in zip(groups, take)]
    carved_idx = np.sort(np.concatenate(carved)) if carved else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(num_items), carved_idx), carved_idx
