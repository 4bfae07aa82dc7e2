"""The depth bench's README section (benchmarks/depth.py, issue 25): does decoupling rescue deep plain networks?

Reads `depth_<task>_<dataset>.csv` (one row per depth, norm, init and method, over seeds) and its `_runs.csv` (one
row per run: the deepest head's loss per epoch and every layer's weight-gradient norm at initialisation and at the
start of epoch 2). Per recipe (config hash): a table with each method's paired difference to BP of the same setting
(`leaderboards.stats`: paired t-test over seeds, the number of comparisons stated), and the plots
`<stem>_accuracy.png` (test accuracy against depth per method, the deepest exit dashed),
`<stem>_grad_norms_depth<D>.png` (one per depth: the vanishing-gradient picture) and `<stem>_loss_curves.png`
(the seed-to-seed spread of the training loss). More than one recipe in a file: the hash joins the plot names.
Reads CSVs only; `render_depth` draws the same table and plots into one folder from rows held as text (what
benchmarks/depth.py `render` hands over for a run that has not been appended to a board).
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from ._common import COLORS, _distinct, _f, _legend, _method_key, _save, plt
from .stats import format_delta, paired, paired_ttest

__all__ = ["depth_section", "depth_table", "render_depth"]

NORMS = ("none", "bn")
INITS = ("default", "kaiming")
_SETTING = ("config_hash", "depth", "norm", "init", "method")


def _read(path: Path, key: tuple[str, ...]) -> list[dict[str, str]]:
    """The latest row per `key` (a rerun of the same recipe replaces the earlier row)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        latest = {tuple(r.get(k, "") for k in key): r for r in csv.DictReader(f)}
    return list(latest.values())


def _floats(text: str | None, sep: str = ";") -> list[float]:
    return [math.nan if v in ("", "-") else float(v) for v in (text or "").split(sep)] if text else []


def _per_seed(r: dict[str, str]) -> dict[str, float]:
    return dict(zip(r["seeds"].split(";"), _floats(r["metric_per_seed"])))


def _order(r: dict[str, str]) -> tuple:
    return (_idx(NORMS, r["norm"]), _idx(INITS, r["init"]), int(r["depth"]), _method_key(r["method"]))


def _idx(choices: tuple[str, ...], v: str) -> int:
    return choices.index(v) if v in choices else len(choices)


def _panels(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    seen = {(r["norm"], r["init"]) for r in rows}
    return sorted(seen, key=lambda p: (_idx(NORMS, p[0]), _idx(INITS, p[1])))


def _figure(panels: list, size: tuple[float, float], nrows: int | None = None):
    rows = nrows or (2 if len(panels) == 4 else 1)
    cols = max(1, len(panels) // rows) if nrows is None else len(panels)
    return plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), sharey=True, squeeze=False)


def _methods(rows: list[dict[str, str]]) -> list[str]:
    return sorted({r["method"] for r in rows}, key=_method_key)


def _table(rows: list[dict[str, str]]) -> list[str]:
    bp = {(r["norm"], r["init"], r["depth"]): r for r in rows if r["method"] == "bp"}
    m = sum(1 for r in rows if r["method"] != "bp" and (r["norm"], r["init"], r["depth"]) in bp)
    out = [f"Δ vs bp: mean ± std over seeds of the per-seed difference to BP of the same depth, norm and init, paired "
           f"t-test p; {m} comparisons in this table (at p < 0.05 about {0.05 * m:.1f} would pass by chance). `exit "
           "per seed`: the exit chosen on validation; `deepest exit`: the last block's test accuracy there.", "",
           "| norm | init | depth | K | method | test acc | Δ vs bp | exit per seed | deepest exit | final "
           "| grad first/last @init | ms/step |",
           "|---|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(rows, key=_order):
        base = bp.get((r["norm"], r["init"], r["depth"]))
        delta = "" if base is None or r is base else format_delta(paired_ttest(paired(_per_seed(r), _per_seed(base))))
        ratio = _f(r.get("grad_first_over_last"))
        k = "1" if r["method"] == "bp" else r["num_blocks"]
        out.append(
            f"| {r['norm']} | {r['init']} | {r['depth']} | {k} | {r['method']} | {float(r['metric_mean']):.2f} ± "
            f"{float(r['metric_std']):.2f} | {delta} | {r['selected_exit'].replace(';', ', ')} "
            f"| {_f(r.get('deepest_exit_mean')) or 0:.2f} | {float(r['final_mean']):.2f} "
            f"| {'-' if ratio is None else f'{ratio:.1e}'} | {_f(r.get('step_ms')) or 0:.0f} |"
        )
    return out


def depth_table(rows: list[dict[str, str]]) -> str:
    """The Markdown table of `depth_section` (with its note on Δ vs bp), one string."""
    return "\n".join(_table(rows))


def _plot_accuracy(rows: list[dict[str, str]], path: Path) -> Path:
    panels = _panels(rows)
    fig, axes = _figure(panels, (4.4, 3.4))
    for ax, (norm, init) in zip(axes.flat, panels):
        for method in _methods(rows):
            rs = sorted((r for r in rows if (r["norm"], r["init"], r["method"]) == (norm, init, method)),
                        key=lambda r: int(r["depth"]))  # fmt: skip
            d, c = [int(r["depth"]) for r in rs], COLORS.get(method)
            ax.errorbar(d, [float(r["metric_mean"]) for r in rs], yerr=[float(r["metric_std"]) for r in rs],
                        marker="o", capsize=3, color=c, label=f"{method} (selected exit)")  # fmt: skip
            if method != "bp":
                ax.plot(d, [_f(r["deepest_exit_mean"]) for r in rs], "--", color=c, alpha=0.7,
                        label=f"{method} deepest exit")  # fmt: skip
        ax.axhline(10, color="grey", linestyle=":", linewidth=0.8)  # chance on 10 classes
        ax.set(title=f"norm={norm}, init={init}", xlabel="depth (conv layers)")
        ax.set_xticks(sorted({int(r["depth"]) for r in rows}))
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    axes.flat[0].legend(fontsize="x-small", loc="lower left")
    return _save(fig, path, dpi=100)


def _geo_mean(columns: list[list[float]]) -> list[float]:
    out = []
    for vals in zip(*columns):
        ok = [v for v in vals if math.isfinite(v) and v > 0]
        out.append(math.exp(statistics.fmean(map(math.log, ok))) if ok else math.nan)
    return out


def _plot_grads(runs: list[dict[str, str]], depth: str, path: Path) -> Path:
    """Every layer's weight-gradient norm per method, geometric mean over seeds: initialisation solid, start of
    epoch 2 dashed; dotted lines at the decoupled blocks' boundaries."""
    rs = [r for r in runs if r["depth"] == depth]
    panels = _panels(rs)
    fig, axes = _figure(panels, (5.0, 3.6))
    for ax, (norm, init) in zip(axes.flat, panels):
        for method in _methods(rs):
            mine = [r for r in rs if (r["norm"], r["init"], r["method"]) == (norm, init, method)]
            for col, ls, when in (("grad_init", "-", "init"), ("grad_epoch2", "--", "epoch 2")):
                norms = [_floats(r[col]) for r in mine if r.get(col)]
                if norms:
                    ys = _geo_mean(norms)
                    xs = [i + 1 for i, v in enumerate(ys) if math.isfinite(v)]
                    ax.plot(xs, [ys[i - 1] for i in xs], ls, marker="o", markersize=2.5, color=COLORS.get(method),
                            label=f"{method} {when}")  # fmt: skip
        lpb = int(rs[0]["layers_per_block"])
        for e in range(lpb, int(depth), lpb):
            ax.axvline(e + 0.5, color="grey", linestyle=":", linewidth=0.8)
        ax.set(yscale="log", xlabel="layer (forward order)", title=f"depth {depth}: norm={norm}, init={init}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    for ax in axes[:, 0]:
        ax.set_ylabel("weight-gradient norm")
    return _save(fig, path, dpi=100)


def _plot_losses(runs: list[dict[str, str]], path: Path) -> Path:
    """The deepest head's training loss per epoch, mean over seeds with a ±std band (the seed-to-seed spread)."""
    depths = sorted({r["depth"] for r in runs}, key=int)
    panels = _panels(runs)
    fig, axes = _figure(panels, (3.6, 2.6), nrows=len(depths))
    for row, d in zip(axes, depths):
        for ax, (norm, init) in zip(row, panels):
            for method in _methods(runs):
                curves = [_floats(r["train_loss_per_epoch"]) for r in runs
                          if (r["depth"], r["norm"], r["init"], r["method"]) == (d, norm, init, method)]  # fmt: skip
                if not curves:
                    continue
                n = min(map(len, curves))
                mean = [statistics.fmean(c[e] for c in curves) for e in range(n)]
                std = [statistics.stdev(c[e] for c in curves) if len(curves) > 1 else 0.0 for e in range(n)]
                xs = list(range(1, n + 1))
                c = COLORS.get(method)
                ax.plot(xs, mean, color=c, label=method)
                ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=c,
                                alpha=0.2)  # fmt: skip
            ax.set_title(f"depth {d}, {norm}, {init}", fontsize="small")
            ax.grid(True, alpha=0.3)
        row[0].set_ylabel("deepest head's loss")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    _legend(axes.flat, fontsize="x-small")
    return _save(fig, path, dpi=100)


def depth_section(path: Path) -> tuple[list[str], list[Path]]:
    """README lines and PNGs of one depth leaderboard (its `_runs.csv` sidecar renders with it, not alone)."""
    if path.stem.endswith("_runs"):
        return [], []
    rows = _read(path, _SETTING)
    runs = _read(path.with_name(f"{path.stem}_runs.csv"), (*_SETTING, "seed"))
    hashes = list(dict.fromkeys(r["config_hash"] for r in rows))
    md: list[str] = []
    pngs: list[Path] = []
    for h in hashes:
        rs = [r for r in rows if r["config_hash"] == h]
        mine = [r for r in runs if r["config_hash"] == h]
        stem = path.stem if len(hashes) == 1 else f"{path.stem}_{h}"
        r0 = rs[-1]
        md += [f"## {path.stem}" + ("" if len(hashes) == 1 else f" (recipe {h})"), "",
               f"plain_cnn, width {r0['width']}, {r0['layers_per_block']} layers per block, {r0['img_size']} px, "
               f"{r0['train_size']} training images, {r0['epochs']} epochs (budget {r0.get('budget') or '-'}), "
               f"batch {r0['batch_size']}, {r0['optimizer']} lr {r0['lr']}, seeds {r0['seeds'].replace(';', ', ')}; "
               f"selection: {r0['selection']}; config {h}; commits {', '.join(_distinct(rs, 'commit'))}; devices "
               f"{'; '.join(_distinct(rs, 'device'))}; torch {', '.join(_distinct(rs, 'torch'))}.", ""]  # fmt: skip
        md += _table(rs) + [""]
        acc = _plot_accuracy(rs, path.with_name(f"{stem}_accuracy.png"))
        pngs.append(acc)
        md += [f"![{stem} accuracy vs depth]({acc.name})", ""]
        if mine:
            for d in sorted({r["depth"] for r in mine}, key=int):
                p = _plot_grads(mine, d, path.with_name(f"{stem}_grad_norms_depth{d}.png"))
                pngs.append(p)
                md += [f"![{stem} gradient norms, depth {d}]({p.name})", ""]
            p = _plot_losses(mine, path.with_name(f"{stem}_loss_curves.png"))
            pngs.append(p)
            md += [f"![{stem} loss curves]({p.name})", ""]
    return md, pngs


def render_depth(rows: list[dict[str, str]], runs: list[dict[str, str]], out_dir: str | Path) -> list[Path]:
    """`table.md`, `accuracy_vs_depth.png`, `loss_curves.png` and one `grad_norms_depth<D>.png` per depth of one
    recipe's rows (`COLUMNS` of benchmarks/_depth_rows.py) and run rows (`RUN_COLUMNS`), as a board's CSV holds them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "table.md"
    table.write_text(depth_table(rows) + "\n")
    paths = [table, _plot_accuracy(rows, out / "accuracy_vs_depth.png"), _plot_losses(runs, out / "loss_curves.png")]
    for d in sorted({r["depth"] for r in runs}, key=int):
        paths.append(_plot_grads(runs, d, out / f"grad_norms_depth{d}.png"))
    return paths
