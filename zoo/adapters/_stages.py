"""The stage contract the adapters rest on: a network's forward, read as an ordered chain of modules.

Both adapters trace one forward pass of the original network with hooks on a chosen set of modules (the "leaves"),
check that the pass really is a chain (each leaf reads the previous leaf's output, nothing happens in between), and
cut the chain after the modules that produce the network's stage features. Nothing here keeps a per-model table:
the cut points come from what timm (`feature_info`) or SMP (the encoder's feature list) already expose, and the
chain is verified numerically against the original forward, so a network that does not fit fails loudly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "Call",
    "NotSequentialError",
    "Step",
    "ancestors",
    "chain_calls",
    "check_close",
    "eval_mode",
    "leaf_modules",
    "make_unit",
    "trace",
]


class NotSequentialError(ValueError):
    """The network's forward is not a plain chain of modules at the granularity the cut needs."""


@dataclass
class Call:
    """One recorded leaf call: its name, module, first input, other positional/keyword arguments, output."""

    name: str
    module: nn.Module
    input: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Any = None


class Step(nn.Module):
    """Calls `module(x, *args, **kwargs)` with the constant extra arguments seen when tracing.

    SMP's EfficientNet encoder, for one, calls each block as `block(x, drop_connect_rate)`; replaying the constant
    keeps training behaviour (stochastic depth) identical to the original network.
    """

    def __init__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
        super().__init__()
        self.module = module
        self.args = args
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, *self.args, **self.kwargs)


class eval_mode:
    """Context manager: put a module in eval mode and restore every submodule's own mode afterwards."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes:
            m.training = mode


def leaf_modules(root: nn.Module, expand: Iterable[str]) -> list[tuple[str, nn.Module]]:
    """Children of `root`, recursively replacing any module named in `expand` by its own children."""
    expand = set(expand)
    out: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if full in expand and len(child._modules) > 0:
                visit(full + ".", child)
            else:
                out.append((full, child))

    visit("", root)
    return out


def ancestors(names: Iterable[str]) -> set[str]:
    """Every strict dotted prefix of `names`: the containers that must be opened to reach them."""
    out = set()
    for n in names:
        parts = n.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out


def trace(fn: Callable[..., Any], modules: Sequence[tuple[str, nn.Module]], *inputs: Any) -> tuple[list[Call], Any]:
    """Run `fn(*inputs)` without gradients, recording the first call of each module in call order.

    A module called twice is recorded twice, so `chain_calls` can refuse it (weights used at two places cannot be
    owned by one block).
    """
    calls: list[Call] = []
    names = {id(m): n for n, m in modules}
    handles = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        first, rest = (args[0], args[1:]) if args else (None, ())
        calls.append(Call(names[id(module)], module, first, rest, dict(kwargs), output))

    try:
        for _, m in modules:
            handles.append(m.register_forward_hook(hook, with_kwargs=True))
        with torch.no_grad():
            result = fn(*inputs)
    finally:
        for h in handles:
            h.remove()
    return calls, result


def chain_calls(calls: Sequence[Call], x: torch.Tensor) -> list[Call]:
    """Check that `calls` form a chain starting at `x`; raise NotSequentialError saying where it breaks."""
    seen: set[str] = set()
    prev: Any = x
    for c in calls:
        if c.name in seen:
            raise NotSequentialError(f"module {c.name!r} runs more than once in the forward pass")
        seen.add(c.name)
        if c.input is not prev:
            raise NotSequentialError(
                f"module {c.name!r} does not read the previous module's output (the forward pass does more than "
                "chain modules)"
            )
        if any(isinstance(a, torch.Tensor) for a in (*c.args, *c.kwargs.values())):
            raise NotSequentialError(f"module {c.name!r} takes more than one tensor input")
        prev = c.output
    return list(calls)


def make_unit(calls: Sequence[Call]) -> nn.Module:
    """A named Sequential replaying `calls` (dots in names become underscores, as in timm's FeatureListNet)."""
    items: OrderedDict[str, nn.Module] = OrderedDict()
    for c in calls:
        m = Step(c.module, c.args, c.kwargs) if (c.args or c.kwargs) else c.module
        items[c.name.replace(".", "_")] = m
    return nn.Sequential(items)


def check_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise NotSequentialError unless the chained forward reproduced the original (same ops, so ~exact)."""
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise NotSequentialError("the chained modules do not reproduce the original forward pass")
