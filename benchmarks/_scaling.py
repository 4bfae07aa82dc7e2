"""The pipeline bench's scaling model: predicted speedup of the DeInfoReg pipeline over single-device BP for more
stages and other links, from measured per-block compute and transfer sizes, the GPipe bubble bound, and the plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from zoo.pipeline import balanced_split, stage_slices

__all__ = ["gpipe_bound", "plot_scaling", "scaling_model"]


def _expand(costs: list[float], heads: list[float], out_bytes: list[float], stages: int):
    """Cut the costliest unit in two until there are `stages` units; each new cut adds one local head's cost."""
    units = [[c, h, b] for c, h, b in zip(costs, heads, out_bytes, strict=True)]
    while len(units) < stages:
        i = max(range(len(units)), key=lambda k: units[k][0])
        c, h, b = units[i]
        body = max(c - h, 0.0) / 2
        units[i : i + 1] = [[body + h, h, b], [body + h, h, b]]
    return [u[0] for u in units], [u[2] for u in units]


def scaling_model(
    profile: Sequence[dict[str, Any]],
    bp_step_s: float,
    stages: int,
    bandwidth_bytes_s: float | None,
    latency_s: float = 0.0,
    head_s: Sequence[float] | None = None,
) -> dict[str, float]:
    """Predicted DeInfoReg-pipeline speedup over single-device BP for `stages` stages.

    Stages run concurrently and sends overlap compute (a bounded queue of isends), so a step takes the slowest of
    the stages' compute and the links' transfer (latency + bytes / bandwidth). With fewer blocks than stages the
    costliest block is assumed cut in two, paying one more local head each time (`head_s`, default 0).
    """
    costs = [float(p["seconds"]) for p in profile]
    out_b = [float(p["out_bytes"]) for p in profile]
    heads = list(head_s) if head_s is not None else [0.0] * len(costs)
    costs, out_b = _expand(costs, heads, out_b, stages)
    link = [(latency_s + b / bandwidth_bytes_s) if bandwidth_bytes_s else 0.0 for b in out_b]
    sizes = balanced_split(costs, stages, link)
    stage_s = [sum(costs[i] for i in r) for r in stage_slices(sizes)]
    link_s = [link[r[-1]] for r in stage_slices(sizes)[:-1]]
    cycle = max(stage_s + link_s)
    return {"stages": stages, "cycle_s": cycle, "speedup": bp_step_s / cycle, "max_stage_s": max(stage_s)}


def gpipe_bound(balance: float, stages: int, micro_batches: int) -> float:
    """Upper bound of GPipe/1F1B speedup over single-device BP: the bubble (M / (M+S-1)) times the balance."""
    return balance * micro_batches / (micro_batches + stages - 1)


def plot_scaling(
    path: Path, title: str, model_lines: dict[str, list[tuple[int, float]]], measured: dict[str, float], s: int
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = sorted({x for line in model_lines.values() for x, _ in line})
    ax.plot(xs, xs, ":", color="#999999", label="ideal (S×)")
    styles = iter(["-o", "-s", "-^", "-v", "-D", "-P"])
    for name, line in model_lines.items():
        style = next(styles, "-o") if " model, " in name else "--"
        ax.plot([x for x, _ in line], [y for _, y in line], style, label=name, ms=4, alpha=0.8, mfc="none")
    markers = {"deinforeg-pipe": ("*", "#d62728"), "gpipe": ("s", "#444444"), "1f1b": ("^", "#1f77b4")}
    for i, (label, v) in enumerate(measured.items()):
        m, c = markers.get(label.split(" ")[0], ("x", "k"))
        x = s * (1 + 0.04 * (i - (len(measured) - 1) / 2))  # side by side, not on top of each other
        face = "none" if "M=" in label else c
        ax.plot([x], [v], m, color=c, ms=9, label=f"measured {label}", linestyle="none", mfc=face)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("stages (devices)")
    ax.set_ylabel("speedup over single-device BP (samples/s)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
