"""The CPU tracker's rows (leaderboards/memory_*.csv) beside the H200 run's CUDA rows (this folder), per setting.

python leaderboards/explore/memory/h200/compare.py      # prints the markdown table of README.md's H200 section
"""

import csv
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOARDS = HERE.parents[2]


def load(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def key(r: dict[str, str]) -> tuple:
    return (r["task"], r["model"], r["img_size"], r["method"], "-" if r["method"] == "bp" else r["num_blocks"],
            r["batch_size"])  # fmt: skip


def main() -> None:
    cpu = {}
    for name in ("memory_cls_digits.csv", "memory_seg_shapes.csv"):
        for r in load(BOARDS / name):
            if r["mem_kind"] == "cpu_tensor_events" and r["balance"] in ("memory", "") and not r["largest_batch"]:
                cpu[key(r)] = r
    print("| setup | method | K | cut | batch | CPU tracker MB (× BP) | CUDA, H200, MB (× BP) | CUDA / CPU |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    seen = set()
    for name in ("memory_cls_digits.csv", "memory_seg_shapes.csv"):
        for r in load(HERE / name):
            k = key(r)
            if k in seen or r["largest_batch"]:
                continue
            seen.add(k)
            c = cpu[k]
            assert c["units_per_block"] == r["units_per_block"], (k, c["units_per_block"], r["units_per_block"])
            setup = f"{'Unet-' if r['task'] == 'seg' else ''}{r['model']} {r['img_size']} px"
            cut = r["units_per_block"] or ("adapter" if r["task"] == "seg" and r["method"] != "bp" else "-")
            print(f"| {setup} | {r['method']} | {k[4]} | {cut} | {r['batch_size']} | {float(c['peak_mb']):.1f} "
                  f"({float(c['ratio_vs_bp']):.3f}) | {float(r['peak_mb']):.1f} ({float(r['ratio_vs_bp']):.3f}) "
                  f"| {float(r['peak_mb']) / float(c['peak_mb']):.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
