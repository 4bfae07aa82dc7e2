"""Render the design screen's table from the harness-written CSVs in this folder (no figure is typed by hand).

python leaderboards/explore/seg_sweep/table.py  → markdown on stdout: one line per finished run (the harness's
rows), then every run's validation curve (best exit per epoch) from its copied `logs/*.metrics.jsonl`, which also
covers a run stopped before its last epoch (it wrote no row); and `k_sweep.png` beside this file: test mIoU at the
exit chosen on validation against K, one line per head (mean ± std over the seeds each row holds), BP as a band, and
each design's training peak (tensors counted by the harness) in a second panel.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    rows = list(csv.DictReader(open(HERE / "accuracy_seg_shapes.csv")))
    curves = list(csv.DictReader(open(HERE / "curves_seg_shapes.csv")))
    walls = {}
    for log in (HERE / "logs").glob("*.log"):
        m = re.search(r"^run (\S+) ", log.read_text(), re.M)
        if m:
            walls[m.group(1)] = log.name
    print(
        "| method | K | model_kwargs | best val mIoU (epoch, exit) | test mIoU there | last-epoch test | "
        "test per exit (at the chosen epoch) | ms/step | peak MB | log |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mine = [c for c in curves if c["run_id"] == r["run_id"] and c["method"] == r["method"]]
        best = max(mine, key=lambda c: float(c["val_chosen"]))
        print(
            f"| {r['method']} | {r['num_blocks']} | {r['model_kwargs'] or '-'} | {float(best['val_chosen']):.2f} "
            f"({best['epoch']}, {best['val_block']}/{r['num_blocks']}) | {float(r['metric_mean']):.2f} | "
            f"{float(r['last_mean']):.2f} | {r['per_block_mean'].replace(';', ' ')} | {float(r['step_ms']):.0f} | "
            f"{float(r['peak_mem_mb']):.0f} | {walls.get(r['run_id'], '?')} |"
        )

    print("\n| run (log) | validation mIoU of the best exit, epoch 1, 2, ... | exit chosen at the last epoch listed |")
    print("|---|---|---|")
    for f in sorted((HERE / "logs").glob("*.metrics.jsonl")):
        recs = [json.loads(line) for line in open(f)]
        recs = [r for r in recs if "val_per_block" in r]
        vals = [max(v for v in r["val_per_block"] if v is not None) for r in recs]
        last = [v for v in recs[-1]["val_per_block"]] if recs else []
        exit_ = (last.index(max(v for v in last if v is not None)) + 1) if last else "-"
        print(
            f"| {f.name.removesuffix('.metrics.jsonl')} | {' '.join(f'{v:.1f}' for v in vals)} | {exit_}/{len(last)} |"
        )

    print(f"\n![test mIoU against K]({plot(rows).name})")


def _head(row: dict[str, str]) -> str:
    m = re.search(r"head=(\w+)", row["model_kwargs"] or "")
    return m.group(1) if m else "default"  # the row does not say; the adapter's default changed on 2026-12-03


def _n_seeds(row: dict[str, str]) -> int:
    return row["seeds"].count(";") + 1


def plot(rows: list[dict[str, str]], path: Path = HERE / "k_sweep.png") -> Path:
    """Test mIoU (chosen exit) and training peak MB against K, one line per (method, head); BP as a horizontal band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
    bp = [r for r in rows if r["method"] == "bp"]
    for r in rows:
        if r["method"] == "bp":
            continue
        key = f"{r['method']}, {_head(r)} head"
        lines[key].append(
            (int(r["num_blocks"]), float(r["metric_mean"]), float(r["metric_std"] or 0), float(r["peak_mem_mb"]))
        )
    fig, (acc, mem) = plt.subplots(1, 2, figsize=(10, 4))
    for key, pts in sorted(lines.items()):
        pts.sort()
        ks = [p[0] for p in pts]
        acc.errorbar(ks, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=key)
        mem.plot(ks, [p[3] for p in pts], marker="o", label=key)
    for r in bp:
        mean, std = float(r["metric_mean"]), float(r["metric_std"] or 0)
        acc.axhline(mean, color="k", ls="--", lw=1, label=f"bp ({_n_seeds(r)} seed(s))")
        if std:
            acc.axhspan(mean - std, mean + std, color="k", alpha=0.1)
        mem.axhline(float(r["peak_mem_mb"]), color="k", ls="--", lw=1, label="bp")
    n_seeds = sorted({_n_seeds(r) for r in rows})
    acc.set(
        xlabel="K (blocks)",
        ylabel="test mIoU, exit chosen on validation",
        title=f"shapes, Unet-resnet18, 64 px ({'/'.join(map(str, n_seeds))} seed(s) per point)",
    )
    return finish(fig, acc, mem, sorted({k for pts in lines.values() for k, *_ in pts}), path)


def finish(fig, acc, mem, ks: list[int], path: Path) -> Path:
    """The memory panel's labels, K ticks and grid on both panels, the legend; saved to `path` and closed."""
    import matplotlib.pyplot as plt

    mem.set(xlabel="K (blocks)", ylabel="training peak (MB, tensors counted)", title="memory of the same runs")
    for ax in (acc, mem):
        ax.set_xticks(ks)
        ax.grid(alpha=0.3)
    acc.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
