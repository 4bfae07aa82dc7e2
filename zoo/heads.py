"""Local heads: the projector and auxiliary classifier each decoupled block learns through.

Every local head is `projector → classifier`; the method decides the loss:
- `deinforeg`: DeInfoReg on the projector output `z` + 0.001 · CE(classifier(z)) (the classifier is not detached,
  as in the authors' code);
- `greedy`: CE(classifier(z)) only (Decoupled Greedy Learning's auxiliary network);
- `scpl`: supervised contrastive loss on `z` + CE of a classifier on `z.detach()` (a linear read-out that does not
  shape the representation).
The default projector pools first (global average pool or token pool → MLP) so it costs little next to its block;
`projector="flatten"` is the paper's flatten → 2048-2048-2048 MLP.

Segmentation encoder blocks get a dense head, chosen by `dense_head(..., head=...)` (`head_kwargs` of a model):
- `pointwise` (`DenseLocalHead`): a 1×1-conv projector per pixel at the block's own resolution, the method's loss
  on a bounded uniform sample of its pixels (the zoo's first design, kept for comparison);
- `decoding` (`DecodingHead`): 3×3 context convs, then projector and classifier whose outputs are upsampled
  bilinearly to the mask's resolution (InfoPro's local head, Wang et al., ICLR 2021), the method's loss on a
  class-balanced sample of those pixel embeddings, optionally plus InfoPro's reconstruction of the input image.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses
from .errors import UserError, check_kwargs

__all__ = [
    "METHODS",
    "LOCAL_METHODS",
    "GlobalPool",
    "Projector",
    "LocalHead",
    "DenseLocalHead",
    "DecodingHead",
    "TaskHead",
    "DENSE_HEADS",
    "check_method",
    "dense_head",
    "dense_head_options",
    "sample_pixels",
]

METHODS = ("bp", "deinforeg", "greedy", "scpl")
LOCAL_METHODS = ("deinforeg", "greedy", "scpl")
PROJECTORS = ("pool", "flatten")
SAMPLINGS = ("uniform", "balanced")


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
        self, z: torch.Tensor, y: torch.Tensor, ce: torch.Tensor, batch: int | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's loss on embeddings z (N×D, labels y) plus the classifier's cross-entropy `ce`.

        Under scpl, `ce` must come from the classifier on detached embeddings. `batch`: DeInfoReg's B (see
        `losses.deinforeg`), None for the rows of z.
        """
        if self.method == "deinforeg":  # deinforeg and scpl check their labels themselves
            parts = losses.deinforeg(z, y, self.num_classes, self.loss_weights, batch=batch)
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


def _deepest(h: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """A block holding several segmentation stages hands on all their features (zoo.decoupled.Features, a tuple):
    its head reads the deepest."""
    return h[-1] if isinstance(h, tuple) else h


def sample_pixels(y: torch.Tensor, k: int, ignore_index: int = 255, balanced: bool = False) -> torch.Tensor:
    """Flat indices (into B·h·w) of up to `k` valid pixels of each image of mask `y` (B, h, w), without replacement.

    One batched draw: a random key per pixel, void pixels below every valid one, top-k per image. `uniform` keys are
    U(0,1); `balanced` keys are Efraimidis–Spirakis weighted keys `log(U) · n_c` (n_c: pixels of the pixel's class
    in its image), i.e. each class of an image is drawn with equal total weight, so a small shape is not drowned in
    background.
    """
    b = y.shape[0]
    flat = y.reshape(b, -1)
    k = min(k, flat.shape[1])
    valid = flat != ignore_index
    u = torch.rand(flat.shape, device=y.device)
    if balanced:
        labels = flat.masked_fill(~valid, 0).long()
        counts = torch.zeros(b, int(labels.max()) + 1, device=y.device).scatter_add_(1, labels, valid.float())
        keys = u.clamp_min(1e-12).log() * counts.gather(1, labels)
        keys = keys.masked_fill(~valid, float("-inf"))
        top, idx = keys.topk(k, dim=1)
        keep = top > float("-inf")
    else:
        top, idx = u.masked_fill(~valid, -1.0).topk(k, dim=1)
        keep = top >= 0
    offsets = torch.arange(b, device=y.device).unsqueeze(1) * flat.shape[1]
    return (idx + offsets)[keep]


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
        return self.classifier(self.projector(_deepest(h)))

    def _sample(self, y: torch.Tensor) -> torch.Tensor:
        return sample_pixels(y, self.pixels_per_image, self.ignore_index)

    def loss(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        h = _deepest(h)
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


class DecodingHead(_LocalHeadBase):
    """A dense local head that sees context and decodes (InfoPro's local head, Wang et al., ICLR 2021).

    `convs` 3×3 conv + BN + ReLU layers of `width` channels, then a 1×1 projector to `proj_dim` and a 1×1
    classifier on the projector output (DeInfoReg's classifier-on-z, as `LocalHead`). Training:
    - cross-entropy of the classifier's logits, bilinearly upsampled to the mask's resolution, over every valid
      pixel (weight `ce_weight`; the whole loss under greedy);
    - the method's term (DeInfoReg, SCPL) on pixel embeddings taken at the mask's resolution (the projector map
      upsampled bilinearly), `pixels_per_image` per image, `sampling="balanced"` (each class of an image drawn with
      equal weight, see `sample_pixels`) or `uniform`. Measured on 256 shapes training masks at 64 px (64% of
      pixels background, 11-13% each shape class): per image, a uniform draw of 128 pixels gives 83 background and
      11-18 of each shape class, a balanced one 39 background and 27-33 of each shape class;
    - DeInfoReg's variance term divides by the number of *images* in the batch, not of sampled pixels: the
      authors' B is a batch of independent examples, and pixels of one image are not independent. Dividing by the
      512 pixels of a batch of 16 made the term ~0 (the `pointwise` head still does, for comparison);
    - `recon > 0` adds `recon` · MSE of a 1×1-conv reconstruction of the input image from the context features,
      upsampled to the image (InfoPro's reconstruction term, which keeps information the task term would drop).
      It needs the image (`takes_image`, passed by zoo.decoupled.forward_block); a caller without it (a profiler)
      gets the loss without the term.
    """

    takes_image = True

    def __init__(
        self,
        method: str,
        in_channels: int,
        num_classes: int,
        width: int = 128,
        convs: int = 1,
        proj_dim: int = 64,
        pixels_per_image: int = 128,
        sampling: str = "balanced",
        recon: float = 0.0,
        image_channels: int = 3,
        ignore_index: int = 255,
        ce_weight: float = 0.001,
        loss_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        temperature: float = 0.1,
    ):
        super().__init__(method, num_classes, ce_weight, loss_weights, temperature)
        if sampling not in SAMPLINGS:
            raise UserError(f"unknown pixel sampling {sampling!r}; valid choices: {', '.join(SAMPLINGS)}")
        if int(convs) < 1 or int(width) < 1 or int(proj_dim) < 1 or int(pixels_per_image) < 2:
            raise UserError(
                f"decoding head needs convs >= 1, width >= 1, proj_dim >= 1 and pixels_per_image >= 2, got "
                f"convs={convs}, width={width}, proj_dim={proj_dim}, pixels_per_image={pixels_per_image}"
            )
        if float(recon) < 0:
            raise UserError(f"recon is a loss weight and cannot be negative, got {recon}")
        self.pixels_per_image = int(pixels_per_image)
        self.sampling = sampling
        self.recon = float(recon)
        self.ignore_index = ignore_index
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(int(convs)):
            layers += [nn.Conv2d(c, int(width), 3, padding=1, bias=False), nn.BatchNorm2d(int(width)), nn.ReLU()]
            c = int(width)
        self.context = nn.Sequential(*layers)
        self.projector = nn.Conv2d(c, int(proj_dim), 1)
        self.classifier = nn.Conv2d(int(proj_dim), num_classes, 1)
        self.reconstruct = nn.Conv2d(c, image_channels, 1) if self.recon > 0 else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Logits at the block's resolution (the model upsamples them bilinearly to the input's)."""
        return self.classifier(self.projector(self.context(_deepest(h))))

    def loss(
        self, h: torch.Tensor, y: torch.Tensor, image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        feat = self.context(_deepest(h))
        zmap = self.projector(feat)
        logits = self.classifier(zmap)
        size = tuple(y.shape[-2:])
        ce_logits = self.classifier(zmap.detach()) if self.method == "scpl" else logits
        ce_logits = F.interpolate(ce_logits, size=size, mode="bilinear", align_corners=False)
        ce = F.cross_entropy(ce_logits.float(), y, ignore_index=self.ignore_index)
        if not torch.isfinite(ce):  # every pixel ignored
            ce = ce_logits.sum() * 0.0
        idx = sample_pixels(y, self.pixels_per_image, self.ignore_index, self.sampling == "balanced")
        if idx.numel() < 2:
            total, parts = ce, {"ce": ce}
        else:
            zup = F.interpolate(zmap, size=size, mode="bilinear", align_corners=False)
            z = zup.permute(0, 2, 3, 1).reshape(-1, zup.shape[1])[idx]
            total, parts = self._combine(z, y.reshape(-1)[idx], ce, batch=y.shape[0])
        if self.reconstruct is not None and image is not None:
            rec = F.interpolate(self.reconstruct(feat), size=image.shape[-2:], mode="bilinear", align_corners=False)
            mse = F.mse_loss(rec.float(), image.float())
            total = total + self.recon * mse
            parts = {**parts, "recon": mse}
        return total, logits, parts


DENSE_HEADS = {"pointwise": DenseLocalHead, "decoding": DecodingHead}
_FIXED = ("self", "method", "in_channels", "num_classes", "ignore_index")


def dense_head_options(head: str | None = None) -> list[str]:
    """The options (`head_kwargs` keys) of dense head `head`, or of any dense head; `head` itself is one."""
    classes = DENSE_HEADS.values() if head is None else [DENSE_HEADS[head]]
    names = {p for c in classes for p in inspect.signature(c.__init__).parameters if p not in _FIXED}
    return sorted(names | {"head"})


def dense_head(
    method: str, in_channels: int, num_classes: int, ignore_index: int = 255, head: str = "pointwise", **kw: Any
) -> nn.Module:
    """The dense local head `head` (see the module docstring) of a segmentation encoder block; an option the head
    does not take is a UserError."""
    if head not in DENSE_HEADS:
        raise UserError(f"unknown dense head {head!r}; valid choices: {', '.join(DENSE_HEADS)}")
    check_kwargs(kw, [o for o in dense_head_options(head) if o != "head"], f"the {head} dense head")
    return DENSE_HEADS[head](method, in_channels, num_classes, ignore_index=ignore_index, **kw)


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
