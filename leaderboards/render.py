"""`python -m leaderboards.render`: turn the leaderboard CSVs into README tables and PNG plots.

Never edit the CSVs by hand: the harness appends them. For each setup (model, its kwargs, input size, dataset,
budget) and noise rate the latest row per method wins. Tables put each method beside BP: the difference is the mean
over seeds of the paired per-seed difference (same seed, same data order and noise draw), ± its standard deviation.
Plots: metric vs noise rate per method, test metric per block, step time and peak memory per method, and one
learning-curve PNG per recipe (`curves_<task>_<dataset>_<config hash>.png`, from `curves_*.csv`: validation metric
per epoch, mean over seeds with the min–max band, one panel per noise rate). A noise leaderboard's `*_audit.csv`
(what flipped, per seed) is summarised under its tables. The README keeps everything outside the generated markers
as written. This module reads CSVs only: it imports nothing of the repository outside `leaderboards`.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["load_board", "render", "main", "paired_diff", "BEGIN", "END"]

BEGIN = "<!-- BEGIN GENERATED (python -m leaderboards.render) -->"
END = "<!-- END GENERATED -->"
SETUP_KEYS = (
    "model",
    "arch",
    "model_kwargs",
    "img_size",
    "dataset",
    "train_size",
    "epochs",
    "batch_size",
    "num_blocks",
)
# one table per setup and noise kind (each method is compared with the BP row of the same kind and rate)
TABLE_KEYS = SETUP_KEYS + ("noise_kind",)
METHOD_ORDER = ("bp", "deinforeg", "greedy", "scpl")
COLORS = {"bp": "#444444", "deinforeg": "#d62728", "greedy": "#1f77b4", "scpl": "#2ca02c"}


def load_board(path: str | Path) -> list[dict[str, str]]:
    """Rows of one CSV, the latest per (setup, method, noise kind, noise rate)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    latest: dict[tuple, dict[str, str]] = {}
    for r in rows:
        key = tuple(r.get(k, "") for k in TABLE_KEYS + ("method", "noise_rate", "stages"))
        latest[key] = r
    return list(latest.values())


def _f(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "", "-") else None
    except ValueError:
        return None


def _fmt2(v: str | None) -> str:
    x = _f(v)
    return "-" if x is None else f"{x:.2f}"


def _method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def setup_name(r: dict[str, str]) -> str:
    name = r["model"] if r.get("task") != "seg" else f"{r.get('arch') or 'unet'}-{r['model']}"
    extras = [r["model_kwargs"]] if r.get("model_kwargs") else []
    if r.get("img_size"):
        extras.append(f"{r['img_size']}px")
    if r.get("epochs"):
        extras.append(f"{r['epochs']} ep")
    if r.get("noise_kind") not in (None, "", "symmetric"):
        extras.append(f"{r['noise_kind']} noise")  # symmetric is the default; other kinds get their own table
    return name + (f" ({', '.join(extras)})" if extras else "")


def _per_seed(r: dict[str, str]) -> dict[str, float]:
    seeds = (r.get("seeds") or "").split(";")
    vals = (r.get("metric_per_seed") or "").split(";")
    return {s: float(v) for s, v in zip(seeds, vals) if s and v not in ("", "-")}


def paired_diff(row: dict[str, str], base: dict[str, str]) -> tuple[float, float, int] | None:
    """Mean and std over common seeds of (row − base), and how many seeds were paired."""
    a, b = _per_seed(row), _per_seed(base)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    d = [a[s] - b[s] for s in common]
    return statistics.fmean(d), statistics.stdev(d) if len(d) > 1 else 0.0, len(d)


def _group(rows: list[dict[str, str]]) -> dict[tuple, list[dict[str, str]]]:
    """Rows by TABLE_KEYS, the same fields load_board keeps the latest row under (less method, rate and stages)."""
    groups: dict[tuple, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in TABLE_KEYS), []).append(r)
    return groups


def _table(rows: list[dict[str, str]]) -> list[str]:
    """Markdown table of one setup: one line per noise rate × method, each method against BP."""
    metric = rows[0].get("metric", "metric")
    out = [
        f"| noise | method | test {metric}, chosen exit (mean ± std) | Δ vs bp (paired ± std) | chosen block "
        f"| last block | per-block {metric} | adaptive (mean depth) | ms/step | step × bp | peak MB |",
        "|---:|---|---:|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    by_rate: dict[float, list[dict[str, str]]] = {}
    for r in rows:
        by_rate.setdefault(float(r["noise_rate"]), []).append(r)
    for rate in sorted(by_rate):
        rs = sorted(by_rate[rate], key=lambda r: _method_key(r["method"]))
        bp = next((r for r in rs if r["method"] == "bp"), None)
        for r in rs:
            d = paired_diff(r, bp) if bp is not None and r is not bp else None
            delta = "" if d is None else f"{d[0]:+.2f} ± {d[1]:.2f}"
            if d is not None and abs(d[0]) > max(d[1], 1e-9) * 2:
                delta = f"**{delta}**"  # larger than twice its spread over seeds
            step, bstep = _f(r.get("step_ms")), _f(bp.get("step_ms")) if bp else None
            ratio = f"{step / bstep:.2f}" if step and bstep else ""
            ada = _f(r.get("adaptive_mean"))
            ada_s = "" if ada is None else f"{ada:.2f} ({_f(r.get('adaptive_depth')) or 0:.2f})"
            blocks = " / ".join(b for b in (r.get("per_block_mean") or "").split(";"))
            out.append(
                f"| {rate:g} | {r['method']} | {float(r['metric_mean']):.2f} ± {float(r['metric_std']):.2f} | {delta} "
                f"| {r.get('best_block', '')} | {_fmt2(r.get('last_mean'))} | {blocks} | {ada_s} | {step or 0:.0f} "
                f"| {ratio} "
                f"| {_f(r.get('peak_mem_mb')) or 0:.0f} |"
            )
    return out


def _setup_line(r: dict[str, str]) -> str:
    return (
        f"{r.get('dataset')} (train {r.get('train_size')} images), {r.get('epochs')} epochs, batch "
        f"{r.get('batch_size')}, {r.get('num_blocks')} blocks, seeds {r.get('seeds', '').replace(';', ', ')}, "
        f"{r.get('noise_kind')} noise; {r.get('device')}, torch {r.get('torch')}, commit {r.get('commit')}, "
        f"{r.get('date', '')[:10]}"
    )


def _findings(rows: list[dict[str, str]]) -> list[str]:
    """Plain sentences per setup: where DeInfoReg beats or loses to BP on the chosen exit (paired Δ beyond 2 std of
    the per-seed differences; otherwise "within 2 std"), and its last block against BP."""
    lines = []
    for _, rs in _group(rows).items():
        bp = {float(r["noise_rate"]): r for r in rs if r["method"] == "bp"}
        beats, losses, ties, last = [], [], [], []
        for r in sorted(rs, key=lambda r: float(r["noise_rate"])):
            rate = float(r["noise_rate"])
            if r["method"] != "deinforeg" or rate not in bp:
                continue
            d = paired_diff(r, bp[rate])
            if d is None:
                continue
            label = f"noise {rate:g} ({d[0]:+.2f} ± {d[1]:.2f})"
            (beats if d[0] > 2 * d[1] else losses if d[0] < -2 * d[1] else ties).append(label)
            a, b = _f(r.get("last_mean")), _f(bp[rate].get("last_mean"))
            if a is not None and b is not None:
                last.append(f"{rate:g}: {a - b:+.2f}")
        if beats or losses or ties:
            parts = []
            for name, items in (("beats BP at", beats), ("loses to BP at", losses), ("within 2 std of BP at", ties)):
                if items:
                    parts.append(f"{name} {', '.join(items)}")
            tail = f" Its last block against BP's, by noise rate: {', '.join(last)}." if last else ""
            lines.append(f"- {setup_name(rs[0])}: DeInfoReg (chosen exit) {'; '.join(parts)}.{tail}")
    return lines


def _plot_noise(groups: dict[tuple, list[dict[str, str]]], path: Path) -> Path | None:
    setups = [rs for rs in groups.values() if len({r["noise_rate"] for r in rs}) > 1]
    if not setups:
        return None
    n = len(setups)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, rs in zip(axes[0], setups):
        for m in sorted({r["method"] for r in rs}, key=_method_key):
            pts = sorted((float(r["noise_rate"]), float(r["metric_mean"]), float(r["metric_std"]))
                         for r in rs if r["method"] == m)  # fmt: skip
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=m, color=COLORS.get(m))
        ax.set_title(setup_name(rs[0]), fontsize=9)
        ax.set_xlabel("training label noise rate")
        ax.set_ylabel(f"test {rs[0].get('metric', '')} (%)")
        ax.grid(alpha=0.3)
    return _finish(fig, axes[0][0], path)


def _finish(fig, legend_ax, path: Path) -> Path:
    legend_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_blocks(groups: dict[tuple, list[dict[str, str]]], path: Path) -> Path | None:
    setups = list(groups.values())
    if not setups:
        return None
    n = len(setups)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, rs in zip(axes[0], setups):
        rate = min(float(r["noise_rate"]) for r in rs)
        for r in sorted((r for r in rs if float(r["noise_rate"]) == rate), key=lambda r: _method_key(r["method"])):
            vals = [_f(v) for v in (r.get("per_block_mean") or "").split(";")]
            pts = [(k + 1, v) for k, v in enumerate(vals) if v is not None]
            if not pts:
                continue
            x, y = zip(*pts)
            style = dict(marker="s", markersize=8, linestyle="none") if len(pts) == 1 else dict(marker="o")
            ax.plot(x, y, label=r["method"], color=COLORS.get(r["method"]), **style)
        ax.set_title(f"{setup_name(rs[0])}, noise {rate:g}", fontsize=9)
        ax.set_xlabel("block (exit)")
        ax.set_ylabel(f"test {rs[0].get('metric', '')} (%)")
        ax.set_xticks(range(1, int(rs[0].get("num_blocks") or 1) + 1))
        ax.grid(alpha=0.3)
    return _finish(fig, axes[0][0], path)


def _plot_cost(groups: dict[tuple, list[dict[str, str]]], path: Path) -> Path | None:
    setups = list(groups.values())
    if not setups:
        return None
    n = len(setups)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 5.6), squeeze=False)
    for j, rs in enumerate(setups):
        rate = min(float(r["noise_rate"]) for r in rs) if "noise_rate" in rs[0] else None
        rs = [r for r in rs if rate is None or float(r["noise_rate"]) == rate]
        rs.sort(key=lambda r: _method_key(r["method"]))
        names = [r["method"] for r in rs]
        colors = [COLORS.get(m, "#888888") for m in names]
        for i, (col, label) in enumerate((("step_ms", "ms / training step"), ("peak_mem_mb", "peak memory (MB)"))):
            ax = axes[i][j]
            ax.bar(names, [_f(r.get(col)) or 0 for r in rs], color=colors)
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(setup_name(rs[0]), fontsize=9)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"cost per method ({setups[0][0].get('mem_kind', '')}, {setups[0][0].get('device', '')})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _speed_section(path: Path) -> list[str]:
    rows = load_board(path)
    out = [f"### Step-time ratio ({path.name}, pytest-benchmark)", ""]
    out += ["| model | img | batch | projector | bp ms | deinforeg ms | ratio | ratio (interleaved) | target | device "
            "| date |", "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]  # fmt: skip
    for r in rows:
        out.append(
            f"| {r.get('model')} | {r.get('img_size')} | {r.get('batch_size')} | {r.get('projector')} "
            f"| {float(r['bp_ms']):.1f} | {float(r['deinforeg_ms']):.1f} | {float(r['ratio']):.3f} "
            f"| {_f(r.get('ratio_interleaved')) or 0:.3f} | ≤ {r.get('target')} | {r.get('device')} "
            f"| {r.get('date', '')[:10]} |"
        )
    return out + [""]


def _pipeline_section(path: Path) -> list[str]:
    """Multi-process pipeline rows (written by benchmarks/pipeline.py, which also draws the scaling plot)."""
    rows = list(csv.DictReader(path.open(newline="")))
    out = [f"## {path.stem}", "", "Each CPU stage process runs one thread and stands for one device (on its own core "
           "where the note says so). `M`: micro-batches per batch; `× best GPipe/1F1B` compares with the best "
           "GPipe / 1F1B row of the same run.", ""]  # fmt: skip
    out += ["| model | engine | stages | batch | partition | samples/s | × BP | × best GPipe/1F1B | busy/stage "
            "| ms/stage predicted → measured | optimizer | commit | date (UTC) |",
            "|---|---|---:|---:|---|---:|---:|---:|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        engine, m = r.get("engine"), r.get("micro_batches", "1")
        if engine in ("gpipe", "1f1b"):
            engine += f" (M={m})"
        opt = r.get("note", "").partition("optimizer ")[2] or "not recorded (see findings)"
        if "gpu:" in r.get("note", ""):
            engine += f" [{r.get('device')}]"
        out.append(
            f"| {r.get('model')} ({r.get('task')}, {r.get('img_size')}px) | {engine} | {r.get('stages')} "
            f"| {r.get('batch_size')} | {r.get('partition')} | {float(r['samples_per_s']):.1f} "
            f"| {_fmt2(r.get('speedup_vs_bp'))} | {_fmt2(r.get('speedup_vs_pipelining_bp'))} "
            f"| {r.get('busy_per_stage')} | {r.get('predicted_ms_per_stage')} → {r.get('measured_ms_per_stage')} "
            f"| {opt} | {r.get('commit', '')} | {r.get('date', '')[:16].replace('T', ' ')} |"
        )
    for png in sorted(path.parent.glob(f"{path.stem}_*.png")):
        out += ["", f"![{png.stem}]({png.name})"]
    return out + [""]


def _grow_section(path: Path) -> list[str]:
    """Grown models next to the same model trained whole: every exit, and what each spent (every row: each run is
    its own comparison)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = [f"## {path.stem}", "",
           "A grown model against the same model trained with all blocks (same seeds, same epochs). `block-steps`: "
           "optimizer steps summed over the blocks that trained; ratios against the whole-model row of the run.", "",
           "| model | variant | setup | epochs | seeds | chosen exit (mean ± std) | every exit | block-steps (×) "
           "| train s (×) | commit |",
           "|---|---|---|---:|---|---:|---|---:|---:|---|"]  # fmt: skip
    for r in rows:
        setup = f"grow at {r['grow_at']}" if r.get("grow_at") else ""
        if r.get("freeze_overtaken") == "true" and r.get("variant") == "progressive":
            setup += ", overtaken frozen"
        if r.get("init_from"):
            setup = f"{r['init_from']} + {r.get('add_blocks')}"
        exits = " / ".join(r.get("per_block_mean", "").split(";"))
        out.append(
            f"| {r['model']} | {r['variant']} | {setup} | {r['epochs']} | {r['seeds'].replace(';', ', ')} "
            f"| {float(r['metric_mean']):.2f} ± {float(r['metric_std']):.2f} | {exits} "
            f"| {_f(r.get('block_steps')) or 0:.0f} ({_fmt2(r.get('block_steps_ratio'))}) "
            f"| {_f(r.get('train_s')) or 0:.1f} ({_fmt2(r.get('train_s_ratio'))}) | {r.get('commit', '')} |"
        )
    return out + [""]


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


def _curves_section(path: Path) -> tuple[list[str], list[Path]]:
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


def _audit_section(path: Path) -> list[str]:
    """The label-noise audit beside a leaderboard: flipped against round(rate · N) per seed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    out = [f"Noise audit ([{path.name}]({path.name})): what flipped in each noisy training set, the same for every "
           "method (and for every model of a recipe: one line each).", "",
           "| recipe | kind | rate | seed | flipped / expected | of | per true class |",
           "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    seen = set()
    for r in rows:
        key = tuple(r.get(k) for k in ("config_hash", "noise_kind", "noise_rate", "seed", "flips_per_class",
                                       "transitions"))  # fmt: skip
        if key in seen:
            continue  # another model trained on the same noisy labels
        seen.add(key)
        out.append(
            f"| {r.get('config_hash')} | {r.get('noise_kind')} | {_f(r.get('noise_rate')) or 0:g} | {r.get('seed')} "
            f"| {r.get('num_flipped')} / {r.get('expected')} | {r.get('num_items')} {r.get('unit')} "
            f"| {(r.get('flips_per_class') or '').replace(';', ' ')} |"
        )
    return out + [""]


def render(board_dir: str | Path = "leaderboards", readme: str | Path | None = None) -> list[Path]:
    """Regenerate the README's generated part and every PNG; returns the files written."""
    board_dir = Path(board_dir)
    readme = Path(readme) if readme else board_dir / "README.md"
    written: list[Path] = []
    md: list[str] = [BEGIN, "", "_Generated from the CSVs in this folder; do not edit between the markers._", ""]
    curves: list[str] = []
    for csv_path in sorted(board_dir.glob("*.csv")):
        stem = csv_path.stem
        if stem.endswith("_audit"):
            continue  # under its leaderboard's tables
        if stem.startswith("curves_"):
            lines, pngs = _curves_section(csv_path)
            curves += lines
            written += pngs
            continue
        if stem.startswith("speed_"):
            md += _speed_section(csv_path)
            continue
        if stem.startswith("throughput_pipeline_"):
            md += _pipeline_section(csv_path)
            continue
        if stem.startswith("grow_"):
            md += _grow_section(csv_path)
            continue
        rows = load_board(csv_path)
        if not rows:
            continue
        groups = _group(rows)
        md += [f"## {stem}", ""]
        if stem.startswith("throughput_"):
            md += [
                "| setup | method | stages | ms/step | × bp | samples/s | peak MB |",
                "|---|---|---:|---:|---:|---:|---:|",
            ]
            for rs in groups.values():
                for r in sorted(rs, key=lambda r: _method_key(r["method"])):
                    ratio = _f(r.get("ratio_vs_bp"))
                    md.append(
                        f"| {setup_name(r)} | {r['method']} | {r.get('stages')} | {float(r['step_ms']):.1f} "
                        f"| {'' if ratio is None else f'{ratio:.2f}'} | {float(r['samples_per_s']):.1f} "
                        f"| {_f(r.get('peak_mem_mb')) or 0:.0f} |"
                    )
            md.append("")
            cost = _plot_cost(groups, board_dir / f"{stem}_cost.png")
            if cost:
                written.append(cost)
                md += [f"![{stem} cost]({cost.name})", ""]
            continue
        findings = _findings(rows)
        if findings:
            md += ["Findings (DeInfoReg − BP, paired over seeds; a win or loss means more than 2 std apart):", ""]
            md += findings + [""]
        for rs in groups.values():
            md += [f"### {setup_name(rs[0])}", "", _setup_line(rs[0]), ""] + _table(rs) + [""]
        audit = csv_path.with_name(f"{stem}_audit.csv")
        if audit.is_file():
            md += _audit_section(audit)
        for suffix, fn in (("noise", _plot_noise), ("blocks", _plot_blocks), ("cost", _plot_cost)):
            png = fn(groups, board_dir / f"{stem}_{suffix}.png")
            if png:
                written.append(png)
                md += [f"![{stem} {suffix}]({png.name})", ""]
    if curves:
        note = ("Validation metric per epoch of the exit chosen that epoch (BP: its last), mean over seeds with the "
                "min–max band; one plot per recipe (config hash).")  # fmt: skip
        md += ["## Learning curves", "", note, "", *curves, ""]
    md.append(END)
    text = readme.read_text() if readme.exists() else "# Leaderboards\n\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + "\n".join(md) + tail
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(md) + "\n"
    readme.write_text(text)
    written.append(readme)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m leaderboards.render", description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=str(Path(__file__).resolve().parent), help="folder of the leaderboard CSVs")
    p.add_argument("--readme", default=None, help="README to update (default: DIR/README.md)")
    args = p.parse_args(argv)
    if not Path(args.dir).is_dir():
        print(f"python -m leaderboards.render: error: {args.dir} is not a folder", file=sys.stderr)
        return 2
    for path in render(args.dir, args.readme):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
