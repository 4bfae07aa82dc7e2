"""`export`: a decoupled-trained model as a plain network, without local heads or loss code.

- timm-adapted classifiers → the plain timm model (`zoo.adapters.timm.export`); SMP networks → the plain SMP model
  (`zoo.adapters.smp.export`), when the exit is the last block.
- The paper's models, and any model whose chosen exit is not the last block → `ExitNet`: the block bodies up to the
  exit followed by that exit's head (projector + classifier, a decoding head's context convs + projector +
  classifier, or the task head), all plain torch modules. A segmentation block holding several encoder stages
  returns them all (`zoo.decoupled.Features`); the next body and the head read the deepest, as in the model.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoupled import DecoupledModel, deepest
from .errors import UserError
from .heads import DecodingHead, DenseLocalHead, LocalHead, TaskHead

__all__ = ["ExitNet", "export"]


class ExitNet(nn.Module):
    """`bodies` in sequence (each reads the deepest feature of the one before), then `head` on the deepest feature;
    segmentation logits are resized to the input (as DecoupledModel does)."""

    def __init__(self, bodies: list[nn.Module], head: nn.Module, resize_to_input: bool = False):
        super().__init__()
        self.bodies = nn.Sequential(*bodies)
        self.head = head
        self.resize_to_input = resize_to_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for body in self.bodies:
            h = body(deepest(h))
        out = self.head(deepest(h))
        if self.resize_to_input and out.dim() == 4 and tuple(out.shape[-2:]) != tuple(x.shape[-2:]):
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


def _plain_head(head: nn.Module) -> nn.Module:
    """The inference path of a head, without its loss code."""
    if isinstance(head, (LocalHead, DenseLocalHead)):
        return nn.Sequential(copy.deepcopy(head.projector), copy.deepcopy(head.classifier))
    if isinstance(head, DecodingHead):  # its reconstruction branch only trains
        return nn.Sequential(*(copy.deepcopy(m) for m in (head.context, head.projector, head.classifier)))
    if isinstance(head, TaskHead):
        return copy.deepcopy(head.module)
    return copy.deepcopy(head)


def _exit_net(model: DecoupledModel, k: int) -> ExitNet:
    blocks = list(model.blocks[: k + 1])
    if any(b.takes_skips for b in blocks):
        raise NotImplementedError("a block that reads skip features can only be exported by its adapter")
    head = blocks[k].head
    if head is None:
        raise UserError(f"block {k} has no head to exit through")
    bodies = [copy.deepcopy(b.body) for b in blocks]
    return ExitNet(bodies, _plain_head(head), resize_to_input=model.task == "seg").eval()


def export(model: DecoupledModel) -> nn.Module:
    """A plain model with `model`'s weights computing `model(x)` (in eval mode) for the chosen exit."""
    if not isinstance(model, DecoupledModel):
        raise TypeError(f"export needs a DecoupledModel, got {type(model).__name__}")
    k = model.exit_block
    last = k == model.num_blocks - 1
    adapter = model.config.get("adapter")
    device = next(model.parameters()).device
    if last and adapter == "timm":
        from .adapters import timm as timm_adapter

        try:
            return timm_adapter.export(model).to(device)
        except NotImplementedError:  # a head timm cannot express (e.g. flatten projector): keep the exit net
            pass
    if last and adapter == "smp":
        from .adapters import smp as smp_adapter

        return smp_adapter.export(model).to(device)
    return _exit_net(model, k).to(device)
