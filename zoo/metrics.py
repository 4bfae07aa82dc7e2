"""Metrics: top-1 accuracy for classification, confusion-matrix mIoU and pixel accuracy for segmentation."""

from __future__ import annotations

import torch

__all__ = ["ConfusionMatrix", "IGNORE_INDEX", "metric_name"]

IGNORE_INDEX = {"cls": -100, "seg": 255}  # the label that marks "no target" (void pixels in masks)


def metric_name(task: str) -> str:
    """The headline metric of a task: mIoU for segmentation, accuracy for classification."""
    return "miou" if task == "seg" else "accuracy"


class ConfusionMatrix:
    """Accumulates a C×C confusion matrix; gives accuracy (cls) or mIoU / pixel accuracy (seg), in percent."""

    @classmethod
    def for_task(cls, task: str, num_classes: int) -> ConfusionMatrix:
        return cls(num_classes, IGNORE_INDEX[task])

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.long)

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        pred = logits.argmax(dim=1).flatten().cpu()
        y = y.flatten().cpu()
        keep = y != self.ignore_index
        idx = y[keep] * self.num_classes + pred[keep]
        self.mat += torch.bincount(idx, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def accuracy(self) -> float:
        total = int(self.mat.sum())
        return 100.0 * float(self.mat.diagonal().sum()) / max(total, 1)

    def iou(self) -> torch.Tensor:
        """Per-class IoU (NaN for a class absent from both prediction and target)."""
        inter = self.mat.diagonal().double()
        union = self.mat.sum(0).double() + self.mat.sum(1).double() - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))

    def score(self, task: str) -> float:
        """The task's headline metric (see `metric_name`)."""
        return self.miou() if task == "seg" else self.accuracy()

    def miou(self) -> float:
        iou = self.iou()
        valid = ~torch.isnan(iou)
        return 100.0 * float(iou[valid].mean()) if bool(valid.any()) else 0.0
