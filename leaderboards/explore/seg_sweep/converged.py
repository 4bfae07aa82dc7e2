"""The converged K × head sweep (issue 21, step 3): every design against BP at the converged shapes budget, 3 seeds.

    python leaderboards/explore/seg_sweep/converged.py [--epochs 24] [--out leaderboards/explore/seg_sweep/converged.md]

Reads noise-bench rows at region-noise rate 0 with clean validation (shapes, Unet-resnet18, 64 px) trained for
`--epochs` epochs from the leaderboard's `noise_seg_shapes.csv` (BP, greedy, SCPL and DeInfoReg at the default
design, K = 2 with the decoding head: the grid of `leaderboards/configs/noise_seg_shapes_unet_resnet18.yaml`) and
from `converged/noise_seg_shapes.csv` beside this file (DeInfoReg's other designs, one command each:
`--num-blocks K --model-kwargs head=H --leaderboard-dir leaderboards/explore/seg_sweep/converged`). The selected
validation mIoU per seed comes from each folder's `curves_seg_shapes.csv`, matched on the row's `run_id` (the curves
do not record K, so a design is told apart by the command that ran it).

One rule for every design, the harness's: the best (epoch, exit) on validation, the test mIoU read there; the design
the sweep would choose is the one with the best mean selected validation mIoU. Beside each: the paired test Δ against
BP with its t-test p (seeds both hold), whether it falls more than 3 mIoU behind BP, and the training peak (tensors
counted, `mem_kind`). Writes the table (stdout, and `--out`) and `k_sweep_converged.png` (test mIoU and training peak
against K, one line per head, BP as a band). Nothing is trained here; every number is a harness-written row's.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from leaderboards._common import _per_seed, load_board  # noqa: E402
from leaderboards.stats import format_p, mean_std, paired, paired_ttest  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from table import finish  # noqa: E402  (the design screen's plot finish, beside this file)

SOURCES = (ROOT / "leaderboards", HERE / "converged")
BOARD, CURVES = "noise_seg_shapes.csv", "curves_seg_shapes.csv"
FALLS_BEHIND = 3.0  # mIoU: the "falls more than 3 mIoU behind BP"


def _head(row: dict[str, str]) -> str:
    m = re.search(r"head=(\w+)", row.get("model_kwargs") or "")
    if m:
        return m.group(1)
    from zoo.adapters.smp import DEFAULT_HEAD

    return DEFAULT_HEAD  # every 24-epoch row postdates the switch of the default to the decoding head (2026-12-03)


def _selected_val(folder: Path, epochs: int) -> dict[tuple[str, str], dict[str, float]]:
    """(run_id, method) → seed → the best `val_chosen` over that run's epochs."""
    out: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    path = folder / CURVES
    if not path.exists():
        return out
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if int(r["epochs"]) != epochs or not r["val_chosen"] or float(r["noise_rate"]) != 0:
                continue
            per = out[(r["run_id"], r["method"])]
            per[r["seed"]] = max(per.get(r["seed"], float("-inf")), float(r["val_chosen"]))
    return out


def designs(epochs: int) -> list[dict]:
    """One entry per (method, K, head): the latest matching row of either source, its per-seed val and test."""
    found: dict[tuple[str, int, str], dict] = {}
    for folder in SOURCES:
        if not (folder / BOARD).exists():
            continue
        vals = _selected_val(folder, epochs)
        for r in load_board(folder / BOARD):
            if (int(r["epochs"]), float(r["noise_rate"]), r["val_protocol"], r["model"], r["img_size"]) != (
                epochs, 0.0, "clean", "resnet18", "64",
            ):  # fmt: skip
                continue
            key = (r["method"], int(r["num_blocks"]), "-" if r["method"] == "bp" else _head(r))
            old = found.get(key)
            if old is not None and old["row"]["date"] > r["date"]:
                continue
            val = vals.get((r["run_id"], r["method"]), {})
            found[key] = {"key": key, "row": r, "val": val, "test": _per_seed(r)}
    order = {"bp": 0, "deinforeg": 1, "greedy": 2, "scpl": 3}
    return sorted(found.values(), key=lambda d: (order.get(d["key"][0], 9), d["key"][2], d["key"][1]))


def table(items: list[dict]) -> list[str]:
    bp = next((d for d in items if d["key"][0] == "bp"), None)
    dein = [d for d in items if d["key"][0] == "deinforeg" and d["val"]]
    chosen = max(dein, key=lambda d: mean_std(list(d["val"].values()))[0], default=None)
    lines = [
        "| method | K | head | seeds | selected val mIoU | test mIoU (selected) | Δ test vs BP (paired) | p | "
        f"> {FALLS_BEHIND:g} behind BP | training peak MB (counted) | commit |",
        "|" + "---|" * 11,
    ]
    for d in items:
        r, (method, k, head) = d["row"], d["key"]
        seeds = sorted(d["test"], key=int)
        v = mean_std([d["val"][s] for s in seeds if s in d["val"]]) if d["val"] else None
        t = mean_std([d["test"][s] for s in seeds])
        delta = p = behind = "-"
        if bp is not None and d is not bp:
            pair = paired(d["test"], bp["test"])
            if len(pair.seeds) >= 2:
                test = paired_ttest(pair)
                delta, p = f"{test.mean:+.2f} ± {test.std:.2f}", format_p(test.p)
                behind = "**yes**" if test.mean < -FALLS_BEHIND else "no"
        mark = " (chosen on val)" if d is chosen else ""
        lines.append(
            f"| {method}{mark} | {k} | {head} | {len(seeds)} | {f'{v[0]:.2f} ± {v[1]:.2f}' if v else '-'} | "
            f"{t[0]:.2f} ± {t[1]:.2f} | {delta} | {p} | {behind} | {float(r['peak_mem_mb']):.0f} ({r['mem_kind']}) | "
            f"{r['commit']} |"
        )
    return lines


def plot(items: list[dict], path: Path) -> Path:
    """Test mIoU (selected) and training peak against K, one line per (method, head); BP as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
    fig, (acc, mem) = plt.subplots(1, 2, figsize=(10, 4))
    for d in items:
        method, k, head = d["key"]
        m, s = mean_std(list(d["test"].values()))
        peak = float(d["row"]["peak_mem_mb"])
        if method == "bp":
            acc.axhline(m, color="k", ls="--", lw=1, label=f"bp ({len(d['test'])} seeds)")
            acc.axhspan(m - s, m + s, color="k", alpha=0.1)
            mem.axhline(peak, color="k", ls="--", lw=1, label="bp")
        else:
            lines[f"{method}, {head} head"].append((k, m, s, peak))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ks = [p[0] for p in pts]
        acc.errorbar(ks, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=label)
        mem.plot(ks, [p[3] for p in pts], marker="o", label=label)
    acc.set(xlabel="K (blocks)", ylabel="test mIoU at the exit chosen on validation",
            title="shapes, Unet-resnet18, 64 px, converged budget")  # fmt: skip
    return finish(fig, acc, mem, sorted({p[0] for pts in lines.values() for p in pts}), path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=24, help="the budget's epochs (default 24, the converged one)")
    ap.add_argument("--out", help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    items = designs(args.epochs)
    if not items:
        print(f"no {args.epochs}-epoch rows at noise 0 in {', '.join(str(s / BOARD) for s in SOURCES)}")
        return 2
    lines = table(items)
    png = plot(items, HERE / "k_sweep_converged.png")
    lines += ["", f"![test mIoU and training peak against K]({png.name})"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
