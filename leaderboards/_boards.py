"""The accuracy and noise leaderboards: one table per setup, noise kind and validation protocol (each method beside
BP, paired over seeds with the paired t-test), findings in plain sentences, the noise audit beside them, and three
plots (metric vs noise rate, per block, cost per method).

Every figure is read at the (epoch, exit) each run selected on its validation split (BP: early stopping); the last
epoch's figure (`final`) stands beside it. A difference is called a win or a loss only at p < 0.05 (two-sided paired
t-test over seeds, `leaderboards.stats`), and each table says how many such comparisons it makes. Rows written before
the selection rule (no `final_*` columns, e.g. `archive/`) render with those cells empty."""

from __future__ import annotations

import csv
from pathlib import Path

from . import stats
from ._common import (
    COLORS,
    _distinct,
    _f,
    _finish,
    _fmt2,
    _group,
    _method_key,
    load_board,
    paired_test,
    plt,
    setup_name,
)

__all__ = ["board_section", "plot_cost"]


def board_section(path: Path) -> tuple[list[str], list[Path]]:
    """The README lines and PNGs of an accuracy or noise leaderboard."""
    rows = load_board(path)
    if not rows:
        return [], []
    stem, groups, written = path.stem, _group(rows), []
    md = [f"## {path.stem}", ""]
    findings = _findings(rows)
    if findings:
        point = "the selected (epoch, exit)" if rows[0].get("val_protocol") else "the last epoch's chosen exit"
        md += [f"Findings (DeInfoReg − BP at {point}, paired over seeds; \"beats\" / \"loses\" only "
               f"where the two-sided paired t-test gives p < {stats.ALPHA:g}, with the number of comparisons in its "
               "table):", ""]  # fmt: skip
        md += findings + [""]
    for rs in groups.values():
        md += [f"### {setup_name(rs[0])}", "", _setup_line(rs), "", _caption(rs), ""] + _table(rs) + [""]
    audit = path.with_name(f"{stem}_audit.csv")
    if audit.is_file():
        md += _audit_section(audit)
    for suffix, fn in (("noise", _plot_noise), ("blocks", _plot_blocks), ("cost", plot_cost)):
        png = fn(groups, path.with_name(f"{stem}_{suffix}.png"))
        if png:
            written.append(png)
            md += [f"![{stem} {suffix}]({png.name})", ""]
    return md, written


def _protocol(r: dict[str, str]) -> str:
    return {"noisy": "noisy validation labels (the training noise's kind and rate, their own draw)",
            "clean": "clean validation labels"}.get(r.get("val_protocol") or "", "validation labels (protocol not "
                                                                              "recorded)")  # fmt: skip


def _caption(rows: list[dict[str, str]]) -> str:
    n = _comparisons(rows)
    if not rows[0].get("val_protocol"):  # written before the selection rule (archive/)
        return (
            f"`{rows[0].get('metric', 'metric')}`: rows written before the selection rule: test metric at the last "
            "epoch, exit chosen on validation (BP: no early stopping). Δ vs bp: mean ± std of the per-seed "
            f"differences, two-sided paired t-test p; bold where p < {stats.ALPHA:g} ({n} comparisons in this table)."
        )
    return (
        f"`{rows[0].get('metric', 'metric')}`: test metric at the (epoch, exit) each run selected on "
        f"{_protocol(rows[0])} (BP, one exit: early stopping); `final`: the last epoch, exit chosen on validation "
        "then. Δ vs bp: mean ± std of the per-seed differences at the selected point, two-sided paired t-test p; bold "
        f"where p < {stats.ALPHA:g} ({n} comparison{'s' if n != 1 else ''} in this table)."
    )


def _comparisons(rows: list[dict[str, str]]) -> int:
    """How many method-vs-BP paired tests a table makes (every non-BP row with a BP row at its rate)."""
    bp_rates = {r["noise_rate"] for r in rows if r["method"] == "bp"}
    return sum(1 for r in rows if r["method"] != "bp" and r["noise_rate"] in bp_rates)


def _table(rows: list[dict[str, str]]) -> list[str]:
    """Markdown table of one setup: one line per noise rate × method, each method against BP."""
    metric = rows[0].get("metric", "metric")
    out = [
        f"| noise | method | {metric}, selected (mean ± std) | Δ vs bp (paired ± std, p) | epoch | exit "
        f"| final (mean ± std) | final exit | last block | per-block {metric} | adaptive (mean depth) | ms/step "
        "| step × bp | peak MB |",
        "|---:|---|---:|---:|---|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    by_rate: dict[float, list[dict[str, str]]] = {}
    for r in rows:
        by_rate.setdefault(float(r["noise_rate"]), []).append(r)
    for rate in sorted(by_rate):
        rs = sorted(by_rate[rate], key=lambda r: _method_key(r["method"]))
        bp = next((r for r in rs if r["method"] == "bp"), None)
        for r in rs:
            t = paired_test(r, bp) if bp is not None and r is not bp else None
            delta = "" if t is None else stats.format_delta(t)
            if t is not None and stats.verdict(t, 1).word in ("beats", "loses"):
                delta = f"**{delta}**"
            step, bstep = _f(r.get("step_ms")), _f(bp.get("step_ms")) if bp else None
            ratio = f"{step / bstep:.2f}" if step and bstep else ""
            ada = _f(r.get("adaptive_mean"))
            ada_s = "" if ada is None else f"{ada:.2f} ({_f(r.get('adaptive_depth')) or 0:.2f})"
            blocks = " / ".join(b for b in (r.get("per_block_mean") or "").split(";"))
            fm, fs = _f(r.get("final_mean")), _f(r.get("final_std"))
            final = "-" if fm is None else f"{fm:.2f} ± {fs or 0:.2f}"
            out.append(
                f"| {rate:g} | {r['method']} | {float(r['metric_mean']):.2f} ± {float(r['metric_std']):.2f} | {delta} "
                f"| {_seeds_list(r.get('selected_epoch'))} | {_seeds_list(r.get('best_block'))} | {final} "
                f"| {_seeds_list(r.get('final_block'))} | {_fmt2(r.get('last_mean'))} | {blocks} | {ada_s} "
                f"| {step or 0:.0f} | {ratio} | {_f(r.get('peak_mem_mb')) or 0:.0f} |"
            )
    return out


def _seeds_list(v: str | None) -> str:
    return "-" if not v else v.replace(";", " ")


def _setup_line(rows: list[dict[str, str]]) -> str:
    """What every row of a table shares, and every commit, device and thread count among them (not the first's)."""
    r = rows[0]
    seeds = sorted({s for x in rows for s in (x.get("seeds") or "").split(";") if s}, key=lambda s: (len(s), s))
    days = sorted({d[:10] for d in _distinct(rows, "date")})
    when = " to ".join(days[:: max(1, len(days) - 1)])  # one day, or the first and the last
    threads = sorted({t for x in rows for t in (x.get("threads") or "").split(";") if t}, key=int)
    thr = f"; threads per run: {', '.join(threads)}" if threads else ""
    return (
        f"{r.get('dataset')} (train {r.get('train_size')} images), {r.get('epochs')} epochs, batch "
        f"{r.get('batch_size')}, {r.get('num_blocks')} blocks, seeds {', '.join(seeds)}, {r.get('noise_kind')} noise, "
        f"{_protocol(r)}; devices: {'; '.join(_distinct(rows, 'device'))}{thr}; torch "
        f"{', '.join(_distinct(rows, 'torch'))}; commits {', '.join(_distinct(rows, 'commit'))}; {when}"
    )


def _findings(rows: list[dict[str, str]]) -> list[str]:
    """Plain sentences per table: where DeInfoReg beats or loses to BP at the selected point (two-sided paired t-test,
    p < 0.05; otherwise "no significant difference"), how many comparisons its table makes, and its last block and its
    final (last-epoch) figure against BP's."""
    lines = []
    for _, rs in _group(rows).items():
        n = _comparisons(rs)
        bp = {float(r["noise_rate"]): r for r in rs if r["method"] == "bp"}
        found: dict[str, list[str]] = {w: [] for w in stats.VERDICTS}
        last, final = [], []
        for r in sorted(rs, key=lambda r: float(r["noise_rate"])):
            rate = float(r["noise_rate"])
            if r["method"] != "deinforeg" or rate not in bp:
                continue
            t = paired_test(r, bp[rate])
            if t is None:
                continue
            found[stats.verdict(t, n).word].append(f"noise {rate:g} ({stats.format_delta(t)})")
            a, b = _f(r.get("last_mean")), _f(bp[rate].get("last_mean"))
            if a is not None and b is not None:
                last.append(f"{rate:g}: {a - b:+.2f}")
            tf = paired_test(r, bp[rate], "final_per_seed")
            if tf is not None:
                final.append(f"{rate:g}: {stats.format_delta(tf)}")
        parts = [f"{name} {', '.join(found[w])}" for w, name in (("beats", "beats BP at"), ("loses", "loses to BP at"),
                 ("no significant difference", "no significant difference from BP at"),
                 ("not tested", "not tested (one seed) at")) if found[w]]  # fmt: skip
        if parts:
            tail = f" Its last block against BP's, by noise rate: {', '.join(last)}." if last else ""
            tail += f" Last epoch against BP's last epoch: {', '.join(final)}." if final else ""
            lines.append(f"- {setup_name(rs[0])}: DeInfoReg (selected) {'; '.join(parts)} ({n} comparison"
                         f"{'s' if n != 1 else ''} in its table).{tail}")  # fmt: skip
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
    out = [f"Noise audit ([{path.name}]({path.name})): what flipped in each noisy training set (`train`) and, under "
           "the noisy-validation protocol, validation set (`val`), the same for every method (and for every model of "
           "a recipe: one line each).", "",
           "| recipe | split | kind | rate | seed | flipped / expected | of | per true class |",
           "|---|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    seen = set()
    for r in rows:
        key = tuple(r.get(k) for k in ("config_hash", "split", "noise_kind", "noise_rate", "seed", "flips_per_class",
                                       "transitions"))  # fmt: skip
        if key in seen:
            continue  # another model trained on the same noisy labels
        seen.add(key)
        out.append(
            f"| {r.get('config_hash')} | {r.get('split') or 'train'} | {r.get('noise_kind')} "
            f"| {_f(r.get('noise_rate')) or 0:g} | {r.get('seed')} "
            f"| {r.get('num_flipped')} / {r.get('expected')} | {r.get('num_items')} {r.get('unit')} "
            f"| {(r.get('flips_per_class') or '').replace(';', ' ')} |"
        )
    return out + [""]
