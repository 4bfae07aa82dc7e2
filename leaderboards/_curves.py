"""Learning curves: one PNG per recipe (config hash) of a `curves_*.csv`, validation metric per epoch of the exit
chosen that epoch, mean over seeds with the min–max band, one panel per noise rate."""

from __future__ import annotations

import csv
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from ._common import COLORS, _f, _finish, _method_key, plt

__all__ = ["curve_title", "curves_section"]


def _latest_runs(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Curve rows of the latest run per (recipe, model, method, noise rate, seed): a rerun supersedes the older."""
    key = lambda r: tuple(r.get(k) for k in ("config_hash", "model", "method", "noise_rate", "seed"))  # noqa: E731
    last = {key(r): r.get("run_id") for r in rows}
    return [r for r in rows if r.get("run_id") == last[key(r)]]


def curve_title(r: dict[str, str], models: Sequence[str]) -> str:
    size = f"{r['img_size']} px, " if r.get("img_size") else ""
    budget = f", {r['budget']} budget" if r.get("budget") else ""
    return (f"{', '.join(models)} on {r.get('dataset')}: {size}train {r.get('train_size')} images, {r.get('epochs')} "
            f"epochs, lr {_f(r.get('lr')) or 0:g}{budget}")  # fmt: skip


def _plot_curves(rows: list[dict[str, str]], path: Path) -> str:
    """One recipe's validation curves: a panel per noise rate, a line per (model, method), mean over seeds with the
    min–max band; returns the plot's title."""
    models = sorted({r["model"] for r in rows})
    rates = sorted({float(r["noise_rate"]) for r in rows})
    fig, axes = plt.subplots(1, len(rates), figsize=(5.0 * len(rates), 3.8), squeeze=False)
    for ax, rate in zip(axes[0], rates):
        at = [r for r in rows if float(r["noise_rate"]) == rate]
        lines = sorted({(r["model"], r["method"]) for r in at}, key=lambda mm: (mm[0], _method_key(mm[1])))
        for model, method in lines:
            by_epoch: dict[int, list[float]] = {}
            for r in at:
                v = _f(r.get("val_chosen"))
                if r["model"] == model and r["method"] == method and v is not None:
                    by_epoch.setdefault(int(r["epoch"]), []).append(v)
            if not by_epoch:
                continue
            x = sorted(by_epoch)
            mean = [statistics.fmean(by_epoch[e]) for e in x]
            label = method if len(models) == 1 else f"{model} {method}"
            style = ("-", "--", ":", "-.")[models.index(model) % 4]
            ax.plot(x, mean, style, marker="o", markersize=3, label=label, color=COLORS.get(method))
            ax.fill_between(x, [min(by_epoch[e]) for e in x], [max(by_epoch[e]) for e in x], alpha=0.15,
                            color=COLORS.get(method, "#888888"))  # fmt: skip
        ax.set_title(f"training label noise {rate:g}" if len(rates) > 1 else "", fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"val {rows[0].get('metric', '')} (%), exit chosen that epoch")
        ax.grid(alpha=0.3)
    title = curve_title(rows[0], models)
    fig.suptitle(textwrap.fill(title, 70), fontsize=9)  # wrapped: one panel is narrower than the title
    _finish(fig, axes[0][0], path)
    return title


def curves_section(path: Path) -> tuple[list[str], list[Path]]:
    """One PNG per recipe (config hash) of a `curves_*.csv`, and the README lines that link them."""
    with open(path, newline="") as f:
        rows = _latest_runs(list(csv.DictReader(f)))
    recipes: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        recipes.setdefault(r.get("config_hash") or "none", []).append(r)
    md: list[str] = []
    written: list[Path] = []
    for h, rs in recipes.items():
        png = path.with_name(f"{path.stem}_{h}.png")
        title = _plot_curves(rs, png)
        written.append(png)
        seeds = sorted({int(r["seed"]) for r in rs})
        md.append(f"- [{title}]({png.name}) (recipe `{h}`, seeds {', '.join(map(str, seeds))})")
    return md, written
