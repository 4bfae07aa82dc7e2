"""Render the design screen's table from the harness-written CSVs in this folder (no figure is typed by hand).

python leaderboards/explore/seg_sweep/table.py  → markdown on stdout: one line per finished run (the harness's
rows), then every run's validation curve (best exit per epoch) from its copied `logs/*.metrics.jsonl`, which also
covers a run stopped before its last epoch (it wrote no row).
"""

from __future__ import annotations

import csv
import json
import re
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


if __name__ == "__main__":
    main()
