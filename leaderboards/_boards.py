"""The accuracy and noise leaderboards: one table per setup and noise kind (each method beside BP, paired over
seeds), findings in plain sentences, the noise audit beside them, and three plots (metric vs noise rate, per block,
cost per method)."""

from __future__ import annotations

import csv
from pathlib import Path

from ._common import COLORS, _f, _finish, _fmt2, _group, _method_key, load_board, paired_diff, plt, setup_name

__all__ = ["board_section", "plot_cost"]


def board_section(path: Path) -> tuple[list[str], list[Path]]:
    """The README lines and PNGs of an accuracy or noise leaderboard."""
    rows = load_board(path)
    if not rows:
        return [], []
    stem, groups, written = path.stem, _group(rows), []
    md = [f"## {stem}", ""]
    findings = _findings(rows)
    if findings:
        md += ["Findings (DeInfoReg − BP, paired over seeds; a win or loss means more than 2 std apart):", ""]
        md += findings + [""]
    for rs in groups.values():
        md += [f"### {setup_name(rs[0])}", "", _setup_line(rs[0]), ""] + _table(rs) + [""]
    audit = path.with_name(f"{stem}_audit.csv")
    if audit.is_file():
        md += _audit_section(audit)
    for suffix, fn in (("noise", _plot_noise), ("blocks", _plot_blocks), ("cost", plot_cost)):
        png = fn(groups, path.with_name(f"{stem}_{suffix}.png"))
        if png:
            written.append(png)
            md += [f"![{stem} {suffix}]({png.name})", ""]
    return md, written


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


def plot_cost(groups: dict[tuple, list[dict[str, str]]], path: Path) -> Path | None:
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
