"""Gradient diagnostics: the norm of every layer's weight gradient, at initialisation and over training.

"Vanishing gradients" is a statement about this picture: under end-to-end backprop through a deep plain network the
first layers' gradients are orders of magnitude smaller than the last layers'. A decoupled method trains each block
by its own local loss, so a layer's gradient only travels back through the layers of its own block; the same
measurement then shows whether every block's layers get gradients of a usable size (the DeInfoReg paper's first
claim). A layer is every convolution or linear layer of the backbone (block bodies, not the local heads), numbered
in forward order.

`GradNorms` is a `zoo.train.Callback`: it reads the gradients the trainer has just computed (they stay on the
parameters until the next step's `zero_grad`), so it measures exactly what the optimizer used; `grad_norms_at`
measures one batch without training. `activation_scales` gives the forward side (each layer's output scale and
spread across samples), which separates a starved forward signal from a vanishing backward one. `plot_grad_norms`
draws norm against layer index, one line per method (matplotlib, imported only there). Logging goes through any
`log(data, step=...)` callable, such as a W&B run's, so this module needs nothing beyond torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from .decoupled import DecoupledModel
from .train import Callback, Trainer

__all__ = [
    "GradNormRecord",
    "GradNorms",
    "Layer",
    "ActivationScale",
    "activation_scales",
    "draw_grad_norms",
    "grad_norms_at",
    "plot_grad_norms",
    "weight_layers",
]

_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


class Layer(NamedTuple):
    """One weighted layer of the backbone: its index in forward order, the block that owns it, name and module."""

    index: int
    block: int
    name: str
    module: nn.Module


class GradNormRecord(NamedTuple):
    """Per-layer norms after one training step (`step` 0 is the first update, computed on the initial weights)."""

    step: int
    epoch: int
    grad_norms: list[float]  # ||∂L/∂W|| per layer (NaN where the layer got no gradient)
    weight_norms: list[float]  # ||W|| per layer at the time the gradient was computed


def weight_layers(model: DecoupledModel) -> list[Layer]:
    """Every conv and linear layer of the block bodies, in forward order (the local heads are not the backbone)."""
    out: list[Layer] = []
    for k, block in enumerate(model.blocks):
        for name, m in block.body.named_modules():
            if isinstance(m, _WEIGHTED):
                out.append(Layer(len(out), k, f"blocks.{k}.body.{name}", m))
    return out


@torch.no_grad()
def _norms(layers: Sequence[Layer]) -> tuple[list[float], list[float]]:
    grads = [layer.module.weight.grad for layer in layers]
    present = [g for g in grads if g is not None]
    values = iter(torch.stack([g.float().norm() for g in present]).tolist() if present else [])
    grad = [next(values) if g is not None else math.nan for g in grads]
    weight = torch.stack([layer.module.weight.float().norm() for layer in layers]).tolist() if layers else []
    return grad, weight


def grad_norms_at(model: DecoupledModel, x: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Per-layer weight-gradient norms of one batch under the model's own losses (summed: under a decoupled method
    each block's layers only receive their own block's loss), without an optimizer step; gradients are cleared."""
    layers = weight_layers(model)
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model.step(x, y).losses
    torch.stack([loss.float() for loss in losses]).sum().backward()
    grad, _ = _norms(layers)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grad


class ActivationScale(NamedTuple):
    """The forward signal at one layer's output: its RMS, and its spread across samples (std over the batch,
    averaged over features): a layer can keep a large RMS made of biases while the input's trace has vanished."""

    rms: float
    spread: float


@torch.no_grad()
def activation_scales(model: DecoupledModel, x: torch.Tensor) -> list[ActivationScale]:
    """Every weighted layer's output scale on the batch `x` (eval mode, at least 2 samples): the forward side."""
    layers = weight_layers(model)
    scales: list[ActivationScale] = [ActivationScale(math.nan, math.nan)] * len(layers)

    def hook(i: int) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            h = output.float()
            scales[i] = ActivationScale(float(h.pow(2).mean().sqrt()), float(h.std(dim=0).mean()))

        return record

    handles = [layer.module.register_forward_hook(hook(layer.index)) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        feats = [x]
        for block in model.blocks:
            feats.append(block(feats))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return scales


class GradNorms(Callback):
    """Records every layer's weight-gradient norm after the chosen training steps.

    `steps`: 0-based step indices to record (0: the gradient of the initial weights); `every`: also every that many
    steps. `log(data, step=...)` (e.g. a W&B run's `log`) receives `{prefix}/layerNN` per layer and `{prefix}/step`.
    The records are in `self.records`; `self.layers` names the layers they index."""

    def __init__(
        self,
        steps: Iterable[int] = (0,),
        every: int | None = None,
        log: Callable[..., None] | None = None,
        prefix: str = "grad_norm",
    ):
        self.steps = {int(s) for s in steps}
        self.every = every
        self.log = log
        self.prefix = prefix
        self.layers: list[Layer] = []
        self.records: list[GradNormRecord] = []

    def on_train_start(self, trainer: Trainer) -> None:
        self.layers = weight_layers(trainer.model)

    def wanted(self, step: int) -> bool:
        return step in self.steps or (self.every is not None and self.every > 0 and step % self.every == 0)

    def on_step(self, trainer: Trainer, out: dict[str, Any]) -> None:
        step = trainer.step - 1  # the trainer has counted the step whose gradients are still on the parameters
        if not self.wanted(step):
            return
        grad, weight = _norms(self.layers)
        self.records.append(GradNormRecord(step, trainer.epoch, grad, weight))
        if self.log is not None:
            data: dict[str, float] = {
                f"{self.prefix}/layer{layer.index + 1:02d}": g for layer, g in zip(self.layers, grad)
            }
            data[f"{self.prefix}/step"] = step
            self.log(data, step=trainer.step)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: layer names and blocks, and every record."""
        return {
            "layers": [{"index": layer.index, "block": layer.block, "name": layer.name} for layer in self.layers],
            "records": [r._asdict() for r in self.records],
        }


def draw_grad_norms(
    ax: Any,
    curves: Mapping[str, Sequence[float]],
    title: str = "",
    block_ends: Sequence[int] = (),
    ylabel: str = "weight-gradient norm",
    styles: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Norm against layer index (1-based) on a matplotlib axes, one line per label (`styles[label]`: plot keywords),
    log scale; dotted lines after `block_ends` (1-based indices of each block's last layer). Zero, NaN and missing
    values are left out (a log axis cannot show them)."""
    for label, values in curves.items():
        xs = [i + 1 for i, v in enumerate(values) if v is not None and math.isfinite(v) and v > 0]
        ys = [values[i - 1] for i in xs]
        ax.plot(xs, ys, marker="o", markersize=2.5, label=label, **dict((styles or {}).get(label, {})))
    for e in block_ends:
        ax.axvline(e + 0.5, color="grey", linestyle=":", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("layer (forward order)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="x-small")
    ax.grid(True, which="major", alpha=0.3)


def plot_grad_norms(
    curves: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "",
    block_ends: Sequence[int] = (),
    ylabel: str = "weight-gradient norm",
) -> Path:
    """`draw_grad_norms` on a figure of its own, written to `path` (PNG or PDF by suffix); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    draw_grad_norms(ax, curves, title, block_ends, ylabel)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
