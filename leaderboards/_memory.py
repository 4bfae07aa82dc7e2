"""The `memory_` section: training peak per method and K against BP (benchmarks/memory.py), a table and a stacked
plot of what each peak holds (parameters, gradients, optimizer state, activations), and the largest batch under a
memory cap where a run measured one."""

from __future__ import annotations

import csv
from pathlib import Path

from ._common import COLORS, _f, _method_key, plt, setup_name

__all__ = ["memory_section"]

PARTS = (("parameters_mb", "parameters", "#7f7f7f"), ("gradients_mb", "gradients", "#bcbd22"),
         ("optimizer_mb", "optimizer", "#9467bd"), ("activations_mb", "activations", "#d62728"))  # fmt: skip
SETUP = ("task", "model", "arch", "model_kwargs", "img_size", "dataset", "mem_kind")


def _latest(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The latest row per setup, method, K, cut balance, batch and cap (a rerun replaces its row; under a cap the
    batch is the result, not part of the setting)."""
    out: dict[tuple, dict[str, str]] = {}
    for r in rows:
        batch = "" if r.get("largest_batch") else r.get("batch_size", "")
        key = (*(r.get(k, "") for k in (*SETUP, "method", "num_blocks", "balance")), batch, r.get("memory_cap_mb", ""))
        out[key] = r
    return list(out.values())


def _order(r: dict[str, str]) -> tuple:
    return (_method_key(r["method"]), r.get("balance", ""), int(r.get("num_blocks") or 0))


def _k(r: dict[str, str]) -> str:
    return "-" if r["method"] == "bp" else r["num_blocks"]  # BP trains uncut whatever its stage count


def _on_cuda(r: dict[str, str]) -> bool:
    return r.get("mem_kind") == "cuda_max_allocated"


def _counted(r: dict[str, str]) -> str:
    """How the peak was counted, and on what: the CPU tracker, or CUDA's allocator on the named card."""
    if _on_cuda(r):
        return f"CUDA max allocated ({r.get('device', 'GPU')})"
    return "CPU tensor events"


def _label(r: dict[str, str]) -> str:
    if r["method"] == "bp":
        return "bp"
    return f"{r['method']} K={r['num_blocks']}" + (f" ({r['balance']})" if r.get("balance") else "")


def _plot(groups: dict[tuple, list[dict[str, str]]], path: Path) -> Path | None:
    """One panel per setup: a stacked bar per method and K (parameters, gradients, optimizer, activations at the
    peak), BP's peak as a line."""
    groups = {k: rs for k, rs in groups.items() if rs}
    if not groups:
        return None
    ncol = min(4, len(groups))
    nrow = -(-len(groups) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 4.2 * nrow), squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.set_visible(False)
    for ax, rs in zip(axes.flat, groups.values()):
        rs = sorted(rs, key=_order)
        bottom = [0.0] * len(rs)
        for col, name, color in PARTS:
            vals = [_f(r.get(col)) or 0.0 for r in rs]
            ax.bar(range(len(rs)), vals, bottom=bottom, color=color, label=name)
            bottom = [b + v for b, v in zip(bottom, vals)]
        for i, r in enumerate(rs):
            ratio = _f(r.get("ratio_vs_bp"))
            ax.text(i, _f(r["peak_mb"]) or 0, f"{ratio:.2f}×" if ratio is not None else "", ha="center",
                    va="bottom", fontsize=7, color=COLORS.get(r["method"], "black"))  # fmt: skip
        bp = [_f(r["peak_mb"]) for r in rs if r["method"] == "bp"]
        if bp:
            ax.axhline(bp[0], color=COLORS["bp"], lw=0.8, ls="--")
        ax.set_xticks(range(len(rs)), [_label(r) for r in rs], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("training peak (MB)")
        gpu = " [CUDA]" if _on_cuda(rs[0]) else ""
        ax.set_title(f"{setup_name(rs[0])}, batch {rs[0]['batch_size']}{gpu}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def memory_section(path: Path) -> tuple[list[str], list[Path]]:
    """README lines and the plot of one `memory_<task>_<dataset>.csv`."""
    with open(path, newline="") as f:
        rows = _latest(list(csv.DictReader(f)))
    if not rows:
        return [], []
    peaks = [r for r in rows if not r.get("largest_batch")]
    capped = [r for r in rows if r.get("largest_batch")]
    md = [f"## {path.stem}", "",
          "Training peak of one step (after a warm-up step), tensors counted (`zoo.memory`: CPU allocator events, or "
          "CUDA `max_memory_allocated`), split at the peak; local methods trained block by block. `units`: residual "
          "blocks per block of the chosen cut; `balance`: cuts balancing the blocks' activation memory or time; "
          "`counted`: the CPU tracker, or CUDA on the named card (its rows ran that machine's own torch).", "",
          "| setup | counted | method | K | balance | units | batch | peak MB | × BP | params | grads | optimizer "
          "| activations | commit |", "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    groups: dict[tuple, list[dict[str, str]]] = {}
    for r in peaks:
        groups.setdefault(tuple(r.get(k, "") for k in SETUP) + (r.get("batch_size", ""),), []).append(r)
    for rs in groups.values():
        for r in sorted(rs, key=_order):
            ratio = _f(r.get("ratio_vs_bp"))
            parts = " | ".join(f"{_f(r.get(c)) or 0:.1f}" for c, _, _ in PARTS)
            md.append(
                f"| {setup_name(r)} | {_counted(r)} | {r['method']} | {_k(r)} | {r.get('balance') or '-'} "
                f"| {r.get('units_per_block') or '-'} | {r['batch_size']} | {float(r['peak_mb']):.1f} "
                f"| {'-' if ratio is None else f'{ratio:.3f}'} | {parts} | {r.get('commit', '')} |"
            )
    if capped:
        md += ["", "Largest batch whose training peak fits the cap:", "",
               "| setup | counted | method | K | balance | cap MB | largest batch | its peak MB | commit |",
               "|---|---|---|---:|---|---:|---:|---:|---|"]  # fmt: skip
        for r in sorted(capped, key=lambda r: (setup_name(r), r.get("mem_kind", ""), *_order(r))):
            md.append(
                f"| {setup_name(r)} | {_counted(r)} | {r['method']} | {_k(r)} | {r.get('balance') or '-'} "
                f"| {float(r['memory_cap_mb']):g} | {r['largest_batch']} | {float(r['peak_mb']):.1f} "
                f"| {r.get('commit', '')} |"
            )
    md.append("")
    png = _plot(groups, path.with_name(f"{path.stem}_peak.png"))
    if png is None:
        return md, []
    return md + [f"![{path.stem} peak]({png.name})", ""], [png]
