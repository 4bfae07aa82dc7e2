"""Cuts for timm's token families whose forward hands more than one tensor from stage to stage (PiT, XCiT, CoaT-Lite).

PiT passes (feature map, class tokens) between its stages, XCiT a token sequence plus the patch grid it reshapes to,
CoaT-Lite a sequence with a class token that each stage strips, reshapes to a map and puts back. None is a chain of
single-tensor module calls, so `_stages.trace` cannot cut them; each is still a chain of *stages*. Here each stage
becomes a unit that owns its modules and parameters and calls timm's own modules (and, where timm has one, its method:
XCiT's `forward_cls`); what crosses a boundary is one tensor: PiT's class tokens packed in front of its flattened map,
the grid fixed by the traced input size. `zoo.adapters.timm` checks every cut numerically against timm's forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from timm.models import coat as timm_coat

from ..heads import GlobalPool

__all__ = ["TOKEN_CUTS", "Fn"]


class Fn(nn.Module):
    """One stage of a timm forward that is more than a module call: `fn(self, x)` on the modules and parameters
    registered here (the timm model's own objects, so its state dict and this one's hold the same tensors)."""

    def __init__(
        self,
        fn: Callable[[Fn, torch.Tensor], torch.Tensor],
        modules: dict[str, nn.Module],
        params: dict[str, nn.Parameter] | None = None,
    ):
        super().__init__()
        self.parts = nn.ModuleDict({n.replace(".", "_"): m for n, m in modules.items()})
        for n, p in (params or {}).items():
            self.register_parameter(n, p)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _head(model: nn.Module, take: Callable[[torch.Tensor], torch.Tensor], modules: dict[str, nn.Module]) -> Fn:
    """timm's head on what `take` picks from the last unit's output; the timm model stays unregistered."""
    owner = [model]

    def run(self: Fn, h: torch.Tensor) -> torch.Tensor:
        owner[0].training = self.training  # timm reads the root flag (head dropout, distillation)
        return owner[0].forward_head(take(h))

    return Fn(run, modules)


def _head_modules(model: nn.Module, units: list[nn.Module]) -> dict[str, nn.Module]:
    """The model's children no unit holds any part of: what its head may use (the caller keeps the called ones)."""
    used = {id(m) for u in units for m in u.modules()}
    return {n: m for n, m in model.named_children() if not any(id(sub) in used for sub in m.modules())}


# -- PiT: (map, class tokens) ------------------------------------------------------------------------------------
def _pack(x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return torch.cat([cls, x.flatten(2).transpose(1, 2)], dim=1)


def _unpack(h: torch.Tensor, prefix: int, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    return h[:, prefix:].transpose(1, 2).reshape(h.shape[0], -1, *grid), h[:, :prefix]


def cut_pit(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], nn.Module, Any]:
    prefix = model.cls_token.shape[1]  # 1, or 2 with the distillation token
    stages = list(model.transformers)
    grids: list[tuple[int, int]] = []
    with torch.no_grad():
        h, cls = model.patch_embed(x), model.cls_token
        for s in stages:
            grids.append(tuple(h.shape[-2:]))
            h, cls = s((h, cls))
    units: list[nn.Module] = []
    for i, stage in enumerate(stages):
        if i == 0:

            def first(self: Fn, img: torch.Tensor, stage: nn.Module = stage) -> torch.Tensor:
                p = self.parts
                h = p["pos_drop"](p["patch_embed"](img) + self.pos_embed)
                return _pack(*stage((h, self.cls_token.expand(img.shape[0], -1, -1))))

            mods = {"patch_embed": model.patch_embed, "pos_drop": model.pos_drop, "transformers.0": stage}
            units.append(Fn(first, mods, {"pos_embed": model.pos_embed, "cls_token": model.cls_token}))
        else:

            def later(self: Fn, h: torch.Tensor, stage: nn.Module = stage, grid: tuple = grids[i]) -> torch.Tensor:
                return _pack(*stage(_unpack(h, prefix, grid)))

            units.append(Fn(later, {f"transformers.{i}": stage}))
    head = _head(model, lambda h: model.norm(h[:, :prefix]), _head_modules(model, units))
    return units, head, GlobalPool("token")


# -- XCiT: tokens and their patch grid ---------------------------------------------------------------------------
def cut_xcit(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], nn.Module, Any]:
    with torch.no_grad():
        _, (hp, wp) = model.patch_embed(x)
    owner = [model]

    def unit(self: Fn, h: torch.Tensor) -> torch.Tensor:
        p = self.parts
        if "patch_embed" in p:  # the first unit embeds the image
            b = h.shape[0]
            h, _ = p["patch_embed"](h)
            if "pos_embed" in p:
                h = h + p["pos_embed"](b, hp, wp).reshape(b, -1, h.shape[1]).permute(0, 2, 1)
            h = p["pos_drop"](h)
        h = p["block"](h, hp, wp)
        if "cls_attn_blocks" in p:  # the last unit runs timm's class-attention stage (it owns its modules)
            h = owner[0].forward_cls(h)
        return h

    blocks = list(model.blocks)
    units: list[nn.Module] = []
    for i, blk in enumerate(blocks):
        mods: dict[str, nn.Module] = {"block": blk}
        params: dict[str, nn.Parameter] = {}
        if i == 0:
            mods.update(patch_embed=model.patch_embed, pos_drop=model.pos_drop)
            if model.pos_embed is not None:
                mods["pos_embed"] = model.pos_embed
        if i == len(blocks) - 1 and model.cls_attn_blocks is not None:
            mods["cls_attn_blocks"] = model.cls_attn_blocks
            params["cls_token"] = model.cls_token
        units.append(Fn(unit, mods, params))
    head = _head(model, model.norm, _head_modules(model, units))
    return units, head, GlobalPool("avg", 0)  # only the last unit's output carries the class token


# -- CoaT-Lite: a class token per stage, stripped and put back between stages -----------------------------------
def cut_coat(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], nn.Module, Any]:
    if model.parallel_blocks is not None:
        raise ValueError("its parallel blocks read all four stages at once (only the CoaT-Lite models are chains)")
    units: list[nn.Module] = []
    for k in range(1, 5):
        embed, cls = getattr(model, f"patch_embed{k}"), getattr(model, f"cls_token{k}")
        blocks = getattr(model, f"serial_blocks{k}")
        prev = getattr(model, f"patch_embed{k - 1}").grid_size if k > 1 else None

        def stage(self: Fn, h: torch.Tensor, k: int = k, prev: Any = prev) -> torch.Tensor:
            p = self.parts
            if prev is not None:  # tokens of the previous stage, class token dropped, back to a map
                h = timm_coat.remove_cls(h).reshape(h.shape[0], *prev, -1).permute(0, 3, 1, 2).contiguous()
            embed = p[f"patch_embed{k}"]
            h = timm_coat.insert_cls(embed(h), getattr(self, f"cls_token{k}"))
            for blk in p[f"serial_blocks{k}"]:
                h = blk(h, size=tuple(embed.grid_size))
            return p["norm4"](h) if "norm4" in p else h

        mods = {f"patch_embed{k}": embed, f"serial_blocks{k}": blocks}
        if k == 4:
            mods["norm4"] = model.norm4
        units.append(Fn(stage, mods, {f"cls_token{k}": cls}))
    head = _head(model, lambda h: h, _head_modules(model, units))
    pool = GlobalPool("avg", 1) if model.global_pool == "avg" else GlobalPool("token")
    return units, head, pool


# module name of the timm family → its cut
TOKEN_CUTS: dict[str, Callable[[nn.Module, torch.Tensor], tuple[list[nn.Module], nn.Module, Any]]] = {
    "pit": cut_pit,
    "xcit": cut_xcit,
    "coat": cut_coat,
}
