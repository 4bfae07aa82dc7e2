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
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.models import coat as timm_coat

from ..heads import GlobalPool

__all__ = ["TOKEN_CUTS", "Fn"]


class Fn(nn.Module):
    """One stage of a timm forward that is more than a module call: `fn(self, x)` on the modules and parameters
    registered here (the timm model's own objects, so its state dict and this one's hold the same tensors).

    `fn` is a module-level function (bound to plain numbers with `functools.partial`) that reaches modules only
    through `self.parts`, parameters through `self`, and the timm model through `self.owner()`: a deep copy of the
    unit then runs on the copy's tensors, never on the original's."""

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        modules: dict[str, nn.Module],
        params: dict[str, nn.Parameter] | None = None,
        owner: nn.Module | None = None,
    ):
        super().__init__()
        self.parts = nn.ModuleDict({n.replace(".", "_"): m for n, m in modules.items()})
        for n, p in (params or {}).items():
            self.register_parameter(n, p)
        self.fn = fn
        self._owner = [owner]  # unregistered: the timm model's other modules belong to other blocks

    def owner(self) -> nn.Module:
        return self._owner[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self, x)


def _run_head(self: Fn, h: torch.Tensor, prefix: int | None = None) -> torch.Tensor:
    """timm's `forward_head` on the last unit's output, after `norm` (of the first `prefix` tokens: PiT) if it has
    one outside the units."""
    owner = self.owner()
    owner.training = self.training  # timm reads the root flag (head dropout, distillation)
    if "norm" in self.parts:
        h = self.parts["norm"](h if prefix is None else h[:, :prefix])
    return owner.forward_head(h)


def _head_modules(model: nn.Module, units: list[nn.Module]) -> dict[str, nn.Module]:
    """The model's children no unit holds any part of: what its head may use (the caller keeps the called ones)."""
    used = {id(m) for u in units for m in u.modules()}
    return {n: m for n, m in model.named_children() if not any(id(sub) in used for sub in m.modules())}


# -- PiT: (map, class tokens) ------------------------------------------------------------------------------------
def _pack(x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return torch.cat([cls, x.flatten(2).transpose(1, 2)], dim=1)


def _pit_stage(self: Fn, h: torch.Tensor, index: int, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    p = self.parts
    if index == 0:  # the image: patch embedding, position embedding, class (and distillation) tokens
        x = p["pos_drop"](p["patch_embed"](h) + self.pos_embed)
        cls = self.cls_token.expand(h.shape[0], -1, -1)
    else:  # the previous stage's class tokens and flattened map, as _pack put them
        x = h[:, prefix:].transpose(1, 2).reshape(h.shape[0], -1, *grid)
        cls = h[:, :prefix]
    return _pack(*p[f"transformers_{index}"]((x, cls)))


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
        fn = partial(_pit_stage, index=i, prefix=prefix, grid=grids[i])
        if i == 0:
            mods = {"patch_embed": model.patch_embed, "pos_drop": model.pos_drop, "transformers.0": stage}
            units.append(Fn(fn, mods, {"pos_embed": model.pos_embed, "cls_token": model.cls_token}))
        else:
            units.append(Fn(fn, {f"transformers.{i}": stage}))
    head = Fn(partial(_run_head, prefix=prefix), _head_modules(model, units), owner=model)
    return units, head, GlobalPool("token")


# -- XCiT: tokens and their patch grid ---------------------------------------------------------------------------
def _xcit_unit(self: Fn, h: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    p = self.parts
    if "patch_embed" in p:  # the first unit embeds the image
        b = h.shape[0]
        h, _ = p["patch_embed"](h)
        if "pos_embed" in p:
            h = h + p["pos_embed"](b, *grid).reshape(b, -1, h.shape[1]).permute(0, 2, 1)
        h = p["pos_drop"](h)
    h = p["block"](h, *grid)
    if "cls_attn_blocks" in p:  # the last unit prepends the class token and runs the class-attention blocks
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        for blk in p["cls_attn_blocks"]:
            h = blk(h)
    return h


def cut_xcit(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], nn.Module, Any]:
    with torch.no_grad():
        _, grid = model.patch_embed(x)
    fn = partial(_xcit_unit, grid=tuple(grid))
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
        units.append(Fn(fn, mods, params))
    head = Fn(_run_head, _head_modules(model, units), owner=model)
    return units, head, GlobalPool("avg", 0)  # only the last unit's output carries the class token


# -- CoaT-Lite: a class token per stage, stripped and put back between stages -----------------------------------
def _coat_stage(self: Fn, h: torch.Tensor, k: int, prev: tuple[int, int] | None) -> torch.Tensor:
    p = self.parts
    if prev is not None:  # tokens of the previous stage, class token dropped, back to a map
        h = timm_coat.remove_cls(h).reshape(h.shape[0], *prev, -1).permute(0, 3, 1, 2).contiguous()
    embed = p[f"patch_embed{k}"]
    h = timm_coat.insert_cls(embed(h), getattr(self, f"cls_token{k}"))
    for blk in p[f"serial_blocks{k}"]:
        h = blk(h, size=tuple(embed.grid_size))
    return p["norm4"](h) if "norm4" in p else h


def cut_coat(model: nn.Module, x: torch.Tensor) -> tuple[list[nn.Module], nn.Module, Any]:
    if model.parallel_blocks is not None:
        raise ValueError("its parallel blocks read all four stages at once (only the CoaT-Lite models are chains)")
    units: list[nn.Module] = []
    for k in range(1, 5):
        prev = tuple(getattr(model, f"patch_embed{k - 1}").grid_size) if k > 1 else None
        mods = {
            f"patch_embed{k}": getattr(model, f"patch_embed{k}"),
            f"serial_blocks{k}": getattr(model, f"serial_blocks{k}"),
        }
        if k == 4:
            mods["norm4"] = model.norm4
        units.append(Fn(partial(_coat_stage, k=k, prev=prev), mods, {f"cls_token{k}": getattr(model, f"cls_token{k}")}))
    head = Fn(_run_head, _head_modules(model, units), owner=model)
    pool = GlobalPool("avg", 1) if model.global_pool == "avg" else GlobalPool("token")
    return units, head, pool


# module name of the timm family → its cut
TOKEN_CUTS: dict[str, Callable[[nn.Module, torch.Tensor], tuple[list[nn.Module], nn.Module, Any]]] = {
    "pit": cut_pit,
    "xcit": cut_xcit,
    "coat": cut_coat,
}
