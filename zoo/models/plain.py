"""Plain deep CNNs: 3×3 conv (+ BatchNorm) + ReLU layers with no residual connection, for the depth bench.

A plain stack is where end-to-end training is known to fail as depth grows (He et al., "Deep Residual Learning",
CVPR 2016, fig. 1: a 56-layer plain net trains worse than a 20-layer one), so it is the network on which the
DeInfoReg paper's first claim (short local gradient paths mitigate vanishing gradients) can be measured.

- Every layer keeps `width` channels; a 2×2 max-pool follows the last layer of each of the first three quarters of
  the stack, so a `depth`-layer network sees the input at 1, 1/2, 1/4 and 1/8 of its size. Depth is a multiple of 4.
- `norm="bn"` puts a BatchNorm after every conv (the conv then has no bias); `norm="none"` keeps the conv's bias.
- `init="kaiming"`: He et al. (ICCV 2015) normal init, fan-in mode, ReLU gain, zero biases: the forward signal's
  scale is kept layer after layer. `init="default"`: PyTorch's own (Kaiming-uniform with a=√5, weight variance
  1/(3·fan_in)); after a ReLU the signal's second moment then falls about 6× per layer unless BatchNorm restores it,
  so without BN a deep default-init stack starves its deep layers of input before any gradient vanishes.
- Blocks hold `layers_per_block` consecutive layers (4 by default), so the number of blocks K grows with depth.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .._registry import register_model
from ..decoupled import BUILD_KEYS, MODEL_KEYS, DecoupledModel, build_decoupled, merge_units
from ..errors import UserError, check_kwargs
from ..heads import GlobalPool

__all__ = ["NORMS", "INITS", "PlainCNN", "plain_cnn", "plain_layout"]

NORMS = ("none", "bn")
INITS = ("default", "kaiming")
DEFAULT_LAYERS_PER_BLOCK = 4


def _plain_layer(in_ch: int, out_ch: int, norm: str, pool: bool) -> nn.Sequential:
    """One layer of the stack: conv 3×3 → (BN) → ReLU → (2×2 max-pool)."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=norm == "none")]
    if norm == "bn":
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(nn.ReLU(inplace=True))
    if pool:
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def _pool_after(depth: int) -> set[int]:
    """Indices (0-based) of the layers a max-pool follows: the last of each of the first three quarters."""
    q = depth // 4
    return {q - 1, 2 * q - 1, 3 * q - 1}


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < low:
        raise UserError(f"plain_cnn {name}={value!r} is not possible: it must be an integer >= {low}")
    return int(value)


def plain_layout(depth: int, layers_per_block: int | None = None, num_blocks: int | None = None) -> tuple[int, int]:
    """`(layers_per_block, num_blocks)` of a `depth`-layer stack, checked: a UserError names what is possible.

    `layers_per_block` wins; else `num_blocks` sets it; else 4 layers per block (for depth 4, one block)."""
    depth = _check_int("depth", depth, 4)
    if depth % 4:
        raise UserError(
            f"plain_cnn depth={depth} cannot be built: depth must be a multiple of 4 (a pool ends each of the first "
            "three quarters), e.g. 8, 16, 32, 48"
        )
    if layers_per_block is None:
        if num_blocks is not None:
            k = _check_int("num_blocks", num_blocks, 1)
            if depth % k:
                raise UserError(f"plain_cnn num_blocks={k} does not divide depth={depth} into equal blocks")
            layers_per_block = depth // k
        else:
            layers_per_block = min(DEFAULT_LAYERS_PER_BLOCK, depth)
    lpb = _check_int("layers_per_block", layers_per_block, 1)
    if depth % lpb:
        divisors = [d for d in range(1, depth + 1) if depth % d == 0]
        raise UserError(
            f"plain_cnn layers_per_block={lpb} does not divide depth={depth}; valid: {', '.join(map(str, divisors))}"
        )
    if num_blocks is not None and int(num_blocks) != depth // lpb:
        raise UserError(
            f"plain_cnn num_blocks={num_blocks} contradicts depth={depth} with layers_per_block={lpb} "
            f"({depth // lpb} blocks)"
        )
    return lpb, depth // lpb


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"plain_cnn {name}={value!r} is unknown; valid choices: {', '.join(choices)}")
    return value


class PlainCNN(nn.Module):
    """The whole plain network: `features` (one module per layer) → global average pool → linear classifier.

    The registered `plain_cnn` cuts exactly this network into blocks (built with the same RNG draws, in the same
    order), so under `method="bp"` the decoupled model computes what this module computes."""

    def __init__(self, depth: int, width: int = 32, norm: str = "none", init: str = "default", num_classes: int = 10):
        super().__init__()
        plain_layout(depth, depth)
        width = _check_int("width", width, 1)
        _check_choice("norm", norm, NORMS)
        _check_choice("init", init, INITS)
        pools = _pool_after(depth)
        self.features = nn.Sequential(
            *[_plain_layer(3 if i == 0 else width, width, norm, i in pools) for i in range(depth)]
        )
        self.classifier = nn.Sequential(GlobalPool(), nn.Linear(width, num_classes))
        if init == "kaiming":
            for m in self.features.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model
def plain_cnn(
    method: str = "deinforeg",
    num_classes: int = 10,
    num_blocks: int | None = None,
    depth: int = 16,
    width: int = 32,
    norm: str = "none",
    init: str = "default",
    layers_per_block: int | None = None,
    img_size: int = 32,
    **kw: Any,
) -> DecoupledModel:
    """A plain `depth`-layer CNN (no residuals) cut into blocks of `layers_per_block` layers (see module doc)."""
    named = ("num_classes", "num_blocks", "depth", "width", "norm", "init", "layers_per_block", "img_size")
    check_kwargs(kw, [*named, "projector", *MODEL_KEYS, *BUILD_KEYS], "plain_cnn")
    lpb, k = plain_layout(depth, layers_per_block, num_blocks)
    img_size = _check_int("img_size", img_size, 8)
    if img_size % 8:
        raise UserError(f"plain_cnn img_size={img_size} is not possible: three 2×2 pools need a multiple of 8")
    net = PlainCNN(depth, width, norm, init, num_classes)
    depth, width = int(depth), int(width)
    bodies, ends = merge_units(list(net.features), None, sizes=[lpb] * k)
    pools = _pool_after(depth)
    shapes = []
    for e in ends:
        side = img_size // 2 ** sum(p <= e for p in pools)
        shapes.append((width, side, side))
    config = {"name": "plain_cnn", "task": "cls", "method": method, "num_classes": num_classes, "num_blocks": k}
    config.update(depth=depth, width=width, norm=norm, init=init, layers_per_block=lpb, img_size=img_size)
    config.update({key: v for key, v in kw.items() if key == "projector"})
    return build_decoupled(bodies, shapes, net.classifier, method, "cls", num_classes, config=config, **kw)
