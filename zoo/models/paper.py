"""The DeInfoReg paper's own vision models, laid out as in the authors' public code.

- `paper_vgg`: 4 blocks for 32×32 inputs, `[128,128,128,256,M] | [256,512,M] | [512,512,M] | [512,M]`, each
  number a 3×3 conv (no bias) + BN + ReLU, `M` a 2×2 max-pool. Block outputs 256×16², 512×8², 512×4², 512×2².
- `paper_resnet18`: the CIFAR ResNet-18 (3×3 stride-1 stem, no max-pool); the four stages are the four blocks and
  the stem, which has no loss of its own, belongs to block 1.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torchvision.models.resnet import BasicBlock

from .._registry import register_model
from ..decoupled import BUILD_KEYS, MODEL_KEYS, DecoupledModel, build_decoupled, merge_units
from ..errors import check_kwargs
from ..heads import GlobalPool

__all__ = ["paper_vgg", "paper_resnet18", "VGG_CFG"]

VGG_CFG: tuple[tuple[int | str, ...], ...] = (
    (128, 128, 128, 256, "M"),
    (256, 512, "M"),
    (512, 512, "M"),
    (512, "M"),
)


def _w(channels: int, width: float) -> int:
    """Channels scaled by the width multiplier (a cheaper model for CPU leaderboards), at least 8."""
    return max(8, int(round(channels * width)))


def _vgg_stage(in_ch: int, cfg: tuple[int | str, ...], width: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            out = _w(int(v), width)
            layers += [nn.Conv2d(in_ch, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
            in_ch = out
    return nn.Sequential(*layers), in_ch


def _resnet_stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or in_ch != out_ch:
        down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride, down), BasicBlock(out_ch, out_ch))


def _classifier(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(GlobalPool(), nn.Linear(channels, num_classes))


def _create(
    name: str,
    units: list[nn.Module],
    channels: list[int],
    reductions: list[int],
    method: str,
    num_classes: int,
    num_blocks: int | None,
    img_size: int,
    width: float,
    **kw: Any,
) -> DecoupledModel:
    named = ("num_classes", "num_blocks", "img_size", "width", "projector")
    check_kwargs(kw, [*named, *MODEL_KEYS, *BUILD_KEYS], name)
    bodies, ends = merge_units(units, num_blocks)
    shapes = [(channels[e], img_size // reductions[e], img_size // reductions[e]) for e in ends]
    config = {"name": name, "task": "cls", "method": method, "num_classes": num_classes, "num_blocks": len(bodies)}
    config.update(img_size=img_size, width=width, **{k: v for k, v in kw.items() if k in ("projector",)})
    return build_decoupled(
        bodies, shapes, _classifier(channels[-1], num_classes), method, "cls", num_classes, config=config, **kw
    )


@register_model
def paper_vgg(
    method: str = "deinforeg",
    num_classes: int = 10,
    num_blocks: int | None = None,
    img_size: int = 32,
    width: float = 1.0,
    **kw: Any,
) -> DecoupledModel:
    """The paper's 4-block VGG for 32×32 inputs (`width` scales every conv's channels)."""
    units, channels, in_ch = [], [], 3
    for cfg in VGG_CFG:
        stage, in_ch = _vgg_stage(in_ch, cfg, width)
        units.append(stage)
        channels.append(in_ch)
    return _create("paper_vgg", units, channels, [2, 4, 8, 16], method, num_classes, num_blocks, img_size, width, **kw)


@register_model
def paper_resnet18(
    method: str = "deinforeg",
    num_classes: int = 10,
    num_blocks: int | None = None,
    img_size: int = 32,
    width: float = 1.0,
    **kw: Any,
) -> DecoupledModel:
    """The paper's CIFAR ResNet-18: 3×3 stride-1 stem (in block 1), four stages as four blocks."""
    c = [_w(v, width) for v in (64, 128, 256, 512)]
    stem = nn.Sequential(nn.Conv2d(3, c[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(True))
    units = [
        nn.Sequential(stem, _resnet_stage(c[0], c[0], 1)),
        _resnet_stage(c[0], c[1], 2),
        _resnet_stage(c[1], c[2], 2),
        _resnet_stage(c[2], c[3], 2),
    ]
    return _create("paper_resnet18", units, c, [1, 2, 4, 8], method, num_classes, num_blocks, img_size, width, **kw)
