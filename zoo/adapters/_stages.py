"""The stage contract the adapters rest on: a network's forward, read as an ordered chain of modules.

Both adapters trace one forward pass of the original network with hooks on a chosen set of modules (the "leaves"),
check that the pass really is a chain (each leaf reads the previous leaf's output, nothing happens in between), and
cut the chain after the modules that produce the network's stage features. A parameter-free change of layout between
two modules (feature map to tokens, tokens back to a map, channels-first to channels-last: LeViT flattens its stem's
map into tokens) is found by comparing tensors and replayed as a `Layout` step. Nothing here keeps a per-model table:
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
    "Layout",
    "NotSequentialError",
    "Prefix",
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
    """The network's forward is not a plain chain of modules at the granularity the cut needs; `at` is the index of
    the call where the chain breaks (how far it got)."""

    def __init__(self, message: str, at: int = 0):
        super().__init__(message)
        self.at = at


@dataclass
class Call:
    """One recorded leaf call: its name, module, first input, other positional/keyword arguments, output."""

    name: str
    module: nn.Module
    input: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    glue: nn.Module | None = None  # a Layout step between the previous module's output and this call's input


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


class Layout(nn.Module):
    """A parameter-free layout change found between two chained modules: `tokens` (NCHW → NLC), `map` (NLC → NCHW
    of the traced grid), `nhwc` / `nchw` (permutes). The grid is the one traced; the batch size is read per call."""

    KINDS = ("tokens", "map", "nhwc", "nchw")

    def __init__(self, kind: str, grid: tuple[int, int] = (0, 0)):
        super().__init__()
        self.kind, self.grid = kind, tuple(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "tokens":
            return x.flatten(2).transpose(1, 2)
        if self.kind == "map":
            return x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        return x.permute(0, 2, 3, 1) if self.kind == "nhwc" else x.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.kind}" + (f", grid={self.grid}" if self.kind == "map" else "")


class _Stop(Exception):
    def __init__(self, value: Any):
        self.value = value


class Prefix(nn.Module):
    """The opening of a forward that is not a chain of module calls (a ViT-like's patch embedding, class token and
    position embedding): runs the original forward `owner.<method>(x)` only up to the first call of `stop` and
    returns that call's input. It owns the modules and parameters used on the way; the owner and `stop` are held
    unregistered, since they belong to the whole model and to the next unit."""

    def __init__(
        self,
        owner: nn.Module,
        method: str,
        stop: nn.Module,
        modules: dict[str, nn.Module],
        params: dict[str, nn.Parameter],
    ):
        super().__init__()
        self.parts = nn.ModuleDict({n.replace(".", "_"): m for n, m in modules.items()})
        for n, p in params.items():
            self.register_parameter(n, p)
        self.method = method
        self._refs = [owner, stop]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner, stop = self._refs

        def halt(module: nn.Module, args: tuple[Any, ...]) -> None:
            raise _Stop(args[0])

        handle = stop.register_forward_pre_hook(halt)
        owner.training = self.training  # the owner's own flag; its modules keep theirs
        try:
            getattr(owner, self.method)(x)
        except _Stop as s:
            return s.value
        finally:
            handle.remove()
        raise NotSequentialError(f"the forward pass never reached {type(stop).__name__}")


def find_layout(prev: Any, inp: Any) -> Layout | None:
    """The Layout step that turns `prev` into exactly `inp`, or None if no such step does."""
    if not (isinstance(prev, torch.Tensor) and isinstance(inp, torch.Tensor)) or prev.numel() != inp.numel():
        return None
    kinds = {(4, 3): ["tokens"], (3, 4): ["map"], (4, 4): ["nhwc", "nchw"]}.get((prev.dim(), inp.dim()), [])
    for kind in kinds:
        step = Layout(kind, tuple(inp.shape[2:]) if kind == "map" else (0, 0))
        try:
            out = step(prev)
        except RuntimeError:
            continue
        if out.shape == inp.shape and torch.equal(out, inp):
            return step
    return None


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
    for i, c in enumerate(calls):
        if c.name in seen:
            raise NotSequentialError(f"module {c.name!r} runs more than once in the forward pass", i)
        seen.add(c.name)
        if isinstance(c.input, (list, tuple)) and len(c.input) > 1:
            raise NotSequentialError(
                f"module {c.name!r} reads {len(c.input)} tensors at once (parallel branches, e.g. HRNet's "
                "multi-resolution streams), not one chain",
                i,
            )
        glue = None if c.input is prev else find_layout(prev, c.input)
        if c.input is not prev and glue is None:
            raise NotSequentialError(
                f"module {c.name!r} does not read the previous module's output (the forward pass does more than "
                "chain modules)",
                i,
            )
        if any(isinstance(a, torch.Tensor) for a in (*c.args, *c.kwargs.values())):
            raise NotSequentialError(f"module {c.name!r} takes more than one tensor input", i)
        c.glue = glue
        prev = c.output
    return list(calls)


def make_unit(calls: Sequence[Call]) -> nn.Module:
    """A named Sequential replaying `calls` (dots in names become underscores, as in timm's FeatureListNet)."""
    items: OrderedDict[str, nn.Module] = OrderedDict()
    for c in calls:
        m = Step(c.module, c.args, c.kwargs) if (c.args or c.kwargs) else c.module
        if c.glue is not None:
            items[c.name.replace(".", "_") + "_layout"] = c.glue
        items[c.name.replace(".", "_")] = m
    return nn.Sequential(items)


def check_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Raise NotSequentialError unless the chained forward reproduced the original (same ops, so ~exact)."""
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise NotSequentialError("the chained modules do not reproduce the original forward pass")
