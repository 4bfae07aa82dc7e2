"""Local heads: the projector and auxiliary classifier each decoupled block learns through.

Every local head is `projector → classifier`; the method decides the loss:
- `deinforeg`: DeInfoReg on the projector output `z` + 0.001 · CE(classifier(z)) (the classifier is not detached,
  as in the authors' code);
- `greedy`: CE(classifier(z)) only (Decoupled Greedy Learning's auxiliary network);
- `scpl`: supervised contrastive loss on `z` + CE of a classifier on `z.detach()` (a linear read-out that does not
  shape the representation).
The default projector pools first (global average pool or token pool → MLP) so it costs little next to its block;
`projector="flatten"` is the paper's flatten → 2048-2048-2048 MLP. Dense heads do the same per pixel for
segmentation blocks, with a 1×1-conv projector and a bounded sample of pixel embeddings per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses
from .errors import UserError

__all__ = [
    "METHODS",
    "LOCAL_METHODS",
    "GlobalPool",
    "Projector",
    "LocalHead",
    "DenseLocalHead",
    "TaskHead",
    "check_method",
]

METHODS = ("bp", "deinforeg", "greedy", "scpl")
LOCAL_METHODS = ("deinforeg", "greedy", "scpl")
PROJECTORS = ("pool", "flatten")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; valid choices: {', '.join(METHODS)}")
    return method


class GlobalPool(nn.Module):
    """Pool a block output to (B, C): NCHW by spatial mean, NLC tokens by mean (`avg`) or class token (`token`)."""

    def __init__(self, kind: str = "avg", num_prefix_tokens: int = 1):
        super().__init__()
        if kind not in ("avg", "token"):
            raise UserError(f"unknown pool kind {kind!r}; valid choices: avg, token")
        self.kind = kind
        self.num_prefix_tokens = num_prefix_tokens

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() == 4:
            return h.mean(dim=(2, 3))
        if h.dim() == 3:
            if self.kind == "token":
                return h[:, 0]
            return h[:, self.num_prefix_tokens :].mean(dim=1)
        if h.dim() == 2:
            return h
        raise UserError(f"cannot pool a block output of shape {tuple(h.shape)}")


def _mlp(dims: Sequence[int]) -> nn.Sequential:
    """Linear → BN → ReLU between every pair of dims, a plain Linear at the end."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Projector(nn.Module):
    """`pool`: pool → MLP(in, hidden, out). `flatten`: flatten → MLP(in·H·W, 2048, 2048, 2048) (the paper's)."""

    def __init__(
        self,
        in_shape: Sequence[int],
        kind: str = "pool",
        hidden_dim: int = 512,
        out_dim: int = 256,
        pool: nn.Module | None = None,
    ):
        super().__init__()
        if kind not in PROJECTORS:
            raise UserError(f"unknown projector {kind!r}; valid choices: {', '.join(PROJECTORS)}")
        self.kind = kind
        if kind == "pool":
            self.pool = pool if pool is not None else GlobalPool()
            channels = in_shape[0] if len(in_shape) != 2 else in_shape[1]  # (C,H,W) or (L,C) tokens
            self.mlp = _mlp([channels, hidden_dim, out_dim])
            self.out_dim = out_dim
        else:
            self.pool = nn.Flatten(1)
            flat = 1
            for s in in_shape:
                flat *= int(s)
            self.mlp = _mlp([flat, 2048, 2048, 2048])
            self.out_dim = 2048

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(h))


class _LocalHeadBase(nn.Module):
    """What every local head shares: the method and how its loss combines the method term with the CE term."""

    def __init__(
        self,
        method: str,
        num_classes: int,
        ce_weight: float,
        loss_weights: tuple[float, float, float],
        temperature: float,
    ):
        super().__init__()
        if method not in LOCAL_METHODS:
            raise UserError(f"method {method!r} has no local head; valid choices: {', '.join(LOCAL_METHODS)}")
        self.method = method
        self.num_classes = num_classes
        self.ce_weight = ce_weight
        self.loss_weights = tuple(loss_weights)
        self.temperature = temperature

    def _combine(
        self, z: torch.Tensor, y: torch.Tensor, ce: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's loss on embeddings z (N×D, labels y) plus the classifier's cross-entropy `ce`.

        Under scpl, `ce` must come from the classifier on detached embeddings.
        """
        if self.method == "deinforeg":  # deinforeg and scpl check their labels themselves
            parts = losses.deinforeg(z, y, self.num_classes, self.loss_weights)
            info = {"invariance": parts.invariance, "variance": parts.variance, "covariance": parts.covariance}
            return parts.total + self.ce_weight * ce, {**info, "ce": ce}
        if self.method == "greedy":
            losses.check_labels(z, y, self.num_classes)
            return ce, {"ce": ce}
        con = losses.scpl(z, y, self.num_classes, self.temperature)
        return con + ce, {"contrastive": con, "ce": ce}


class LocalHead(_LocalHeadBase):
    """Projector + auxiliary classifier of one block; `loss(h, y)` returns (loss, logits, parts)."""

    def __init__(
        self,
        method: str,
        in_shape: Sequence[int],
        num_classes: int,
        projector: str = "pool",
        hidden_dim: int = 512,
        proj_dim: int = 256,
        pool: nn.Module | None = None,
        ce_weight: float = 0.001,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        temperature: float = 0.1,
    ):
        super().__init__(method, num_classes, ce_weight, loss_weights, temperature)
        self.projector = Projector(in_shape, projector, hidden_dim, proj_dim, pool)
        self.classifier = nn.Linear(self.projector.out_dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.projector(h))

    def loss(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        z = self.projector(h)
        logits = self.classifier(z.detach() if self.method == "scpl" else z)
        total, parts = self._combine(z, y, F.cross_entropy(logits.float(), y))
        return total, logits, parts


def resize_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer mask (B, H, W) to `size`."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


class DenseLocalHead(_LocalHeadBase):
    """Per-pixel local head for a segmentation encoder block.

    A 1×1-conv projector gives a pixel embedding map; the method's loss runs on up to `pixels_per_image` valid
    pixels sampled from each image (so the B·P × B·P similarity matrix stays bounded), the auxiliary classifier's
    cross-entropy on every valid pixel. Labels come from the mask resized (nearest) to the block's resolution.
    """

    def __init__(
        self,
        method: str,
        in_channels: int,
        num_classes: int,
        hidden_dim: int = 128,
        proj_dim: int = 64,
        pixels_per_image: int = 32,
        ignore_index: int = 255,
        ce_weight: float = 0.001,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        temperature: float = 0.1,
    ):
        super().__init__(method, num_classes, ce_weight, loss_weights, temperature)
        self.pixels_per_image = pixels_per_image
        self.ignore_index = ignore_index
        self.projector = nn.Sequential(
            nn.Conv2d(in_channels, hidden_dim, 1, bias=False),
            nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, proj_dim, 1),
        )
        self.classifier = nn.Conv2d(proj_dim, num_classes, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.projector(h))

    def _sample(self, y: torch.Tensor) -> torch.Tensor:
        """Flat indices (into B·h·w) of up to `pixels_per_image` valid pixels per image, drawn without replacement.

        One batched draw: random scores, void pixels pushed below every valid one, top-k per image.
        """
        b = y.shape[0]
        flat = y.reshape(b, -1)
        k = min(self.pixels_per_image, flat.shape[1])
        valid = flat != self.ignore_index
        scores = torch.rand(flat.shape, device=y.device).masked_fill(~valid, -1.0)
        top, idx = scores.topk(k, dim=1)
        offsets = torch.arange(b, device=y.device).unsqueeze(1) * flat.shape[1]
        return (idx + offsets)[top >= 0]

    def loss(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        y = resize_mask(y, h.shape[-2:])
        zmap = self.projector(h)
        logits = self.classifier(zmap)
        ce_logits = self.classifier(zmap.detach()) if self.method == "scpl" else logits
        ce = F.cross_entropy(ce_logits.float(), y, ignore_index=self.ignore_index)
        if not torch.isfinite(ce):  # every pixel ignored
            ce = ce_logits.sum() * 0.0
        idx = self._sample(y)
        if idx.numel() < 2:
            return ce, logits, {"ce": ce}
        z = zmap.permute(0, 2, 3, 1).reshape(-1, zmap.shape[1])[idx]
        total, parts = self._combine(z, y.reshape(-1)[idx], ce)
        return total, logits, parts


def dice_loss(logits: torch.Tensor, y: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Soft multi-class Dice loss over valid pixels."""
    num_classes = logits.shape[1]
    valid = (y != ignore_index).unsqueeze(1).float()
    prob = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(y.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float() * valid
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    denom = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()


class TaskHead(nn.Module):
    """The model's own output head trained with the task loss (CE, optionally + Dice for segmentation)."""

    def __init__(self, module: nn.Module | None = None, dice: bool = False, ignore_index: int = -100):
        super().__init__()
        self.module = module if module is not None else nn.Identity()
        self.dice = dice
        self.ignore_index = ignore_index

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.module(h)

    def loss(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.module(h)
        if logits.dim() == 4 and tuple(logits.shape[-2:]) != tuple(y.shape[-2:]):
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        if logits.dim() == 2:
            losses.check_labels(logits, y, logits.shape[1])
        ce = F.cross_entropy(logits.float(), y, ignore_index=self.ignore_index)
        if not self.dice:
            return ce, logits, {"ce": ce}
        dl = dice_loss(logits, y, self.ignore_index)
        return ce + dl, logits, {"ce": ce, "dice": dl}
