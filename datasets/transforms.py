"""Train / eval transforms on torchvision transforms v2; segmentation transforms move image and mask together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ._base import DatasetInfo

__all__ = ["build_cls_transform", "build_seg_transform"]


def _to_float_image() -> list[v2.Transform]:
    # PIL images and uint8 tensors become float images in [0, 1]; float tensors pass through unchanged.
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]


def build_cls_transform(
    info: DatasetInfo, train: bool, native_size: int, aug: str = "crop_flip"
) -> Callable[[Any], torch.Tensor]:
    """Image -> normalised float tensor [3, S, S], S = `info.image_size`.

    `aug` picks the train-time policy: `crop_flip` (padded random crop + horizontal flip, the CIFAR recipe) or
    `affine` (small shifts/rotations, for digits, where a mirror image is a different symbol).
    """
    size = info.image_size
    ops: list[v2.Transform] = _to_float_image()
    if size != native_size:
        ops.append(v2.Resize((size, size), antialias=True))
    if train and aug == "crop_flip":
        ops += [v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect"), v2.RandomHorizontalFlip()]
    elif train and aug == "affine":
        ops.append(v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)))
    elif train and aug != "none":
        raise ValueError(f"unknown augmentation policy {aug!r}")
    ops.append(v2.Normalize(list(info.mean), list(info.std)))
    return v2.Compose(ops)


class _SegTransform:
    """Joint (image, mask) transform; masks are resized with nearest neighbour and padded with ignore_index."""

    def __init__(self, info: DatasetInfo, train: bool, flips: str) -> None:
        size = info.image_size
        ops: list[v2.Transform] = _to_float_image()
        if train:
            ops.append(v2.RandomResizedCrop((size, size), scale=(0.5, 1.0), antialias=True))
            ops.append(v2.RandomHorizontalFlip())
            if flips == "hv":  # synthetic shapes have no up/down, natural photos do
                ops.append(v2.RandomVerticalFlip())
        else:
            ops.append(v2.Resize((size, size), antialias=True))
        ops.append(v2.Normalize(list(info.mean), list(info.std)))
        self.ops = v2.Compose(ops)
        self.size = size
        self.train = train

    def __call__(self, image: Any, mask: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = torch.as_tensor(np.asarray(mask)) if not torch.is_tensor(mask) else mask
        m = tv_tensors.Mask(m.to(torch.uint8 if m.max() < 256 and m.min() >= 0 else torch.long).unsqueeze(0))
        if not self.train and torch.is_tensor(image) and image.shape[-1] == self.size == m.shape[-1]:
            # already at the target size (embedded sets): skip the resize, keep only normalisation
            image, m = self.ops.transforms[-1](image), m
        else:
            image, m = self.ops(image, m)
        return image.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor)[0].long()


def build_seg_transform(
    info: DatasetInfo, train: bool, flips: str = "h"
) -> Callable[[Any, np.ndarray | torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(image, mask) -> (normalised float [3, S, S], LongTensor [S, S]) with the same geometry applied to both."""
    return _SegTransform(info, train, flips)
