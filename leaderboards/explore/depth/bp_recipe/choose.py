"""BP's own recipe at depth 48 with BatchNorm (issue 25): every tried recipe, the one the selection rule picks, and
DeInfoReg and greedy (the leaderboard's default recipe) against it, seed by seed.

    python leaderboards/explore/depth/bp_recipe/choose.py [--out leaderboards/explore/depth/bp_recipe/README.md]

Reads the leaderboard's 72-epoch depth grid (the default recipe: AdamW lr 2e-3, cosine, no warm-up, no clipping),
`leaderboards/explore/depth/lr1e-3/` and every folder of this one holding a `depth_cls_digits.csv` (one recipe each,
trained with `python -m benchmarks.run --bench depth ... --depths 48 --norms bn --methods bp --epochs 72` and the
recipe's flags). The rule, the same for every method and setting of the bench: the best mean *selected validation*
accuracy over seeds (each run's best (epoch, exit) on validation); the test accuracy is read only afterwards. Nothing
is trained here; the numbers are the rows' own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))

from leaderboards._depth import _SETTING, _per_seed, _read  # noqa: E402
from leaderboards.convergence import selected_val  # noqa: E402
from leaderboards.stats import format_delta, mean_std, paired, paired_ttest  # noqa: E402

BOARD = ROOT / "leaderboards" / "depth_cls_digits.csv"
HERE = Path(__file__).resolve().parent
EPOCHS = 72
DEPTH, NORM = "48", "bn"


def _summary(path: Path) -> list[dict[str, str]]:
    """Depth-48 BN rows at 72 epochs, as the leaderboard's renderer reads them (the latest row per setting)."""
    rows = _read(path, _SETTING)
    return [r for r in rows if r["depth"] == DEPTH and r["norm"] == NORM and int(r["epochs"]) == EPOCHS]


def _name(row: dict[str, str]) -> str:
    clip = f", clip {float(row['grad_clip']):g}" if row.get("grad_clip") else ""
    warm = f", warm-up {float(row['warmup_epochs']):g} ep" if float(row.get("warmup_epochs") or 0) else ""
    return f"{row['optimizer']} lr {float(row['lr']):g}{warm}{clip}"


def recipes() -> list[tuple[str, Path]]:
    """(label, folder) of every recipe tried: the leaderboard's default first (it wins ties), then the others."""
    out = [("default (leaderboard)", BOARD.parent), ("lr1e-3", ROOT / "leaderboards/explore/depth/lr1e-3")]
    out += [
        (d.name, d) for d in sorted(HERE.iterdir()) if (d / "depth_cls_digits.csv").exists() and "e108" not in d.name
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="also write the tables to this Markdown file")
    args = ap.parse_args(argv)
    lines = ["| recipe | init | seeds | selected val | test (selected) | test per seed | chosen |", "|" + "---|" * 7]
    chosen: dict[str, tuple[float, str, dict[str, str]]] = {}
    table = []
    for label, folder in recipes():
        vals = selected_val(folder / "depth_cls_digits_runs.csv", EPOCHS)
        for row in _summary(folder / "depth_cls_digits.csv"):
            if row["method"] != "bp":
                continue
            per = vals.get(("plain_cnn", DEPTH, NORM, row["init"], "bp"), {})
            seeds = row["seeds"].split(";")
            if sorted(per) != sorted(seeds):
                continue
            v_mean, v_std = mean_std([per[s] for s in seeds])
            table.append((label, row, v_mean, v_std))
            best = chosen.get(row["init"])
            if best is None or v_mean > best[0]:
                chosen[row["init"]] = (v_mean, label, row)
    for label, row, v_mean, v_std in table:
        test = _per_seed(row)
        t_mean, t_std = mean_std(list(test.values()))
        mark = "**yes**" if chosen[row["init"]][1] == label else ""
        lines.append(f"| {label}: {_name(row)} | {row['init']} | {row['seeds'].replace(';', ', ')} | {v_mean:.2f} ± "
                     f"{v_std:.2f} | {t_mean:.2f} ± {t_std:.2f} | "
                     f"{', '.join(f'{v:.2f}' for v in test.values())} | {mark} |")  # fmt: skip
    lines += ["", "Decoupled methods (the leaderboard's default recipe) against BP's chosen recipe, by seed:", "",
              "| init | BP recipe | BP test | method | test | Δ vs BP (p) |", "|" + "---|" * 6]  # fmt: skip
    board = _summary(BOARD)
    for init, (_, label, bp) in sorted(chosen.items()):
        base = _per_seed(bp)
        b_mean, b_std = mean_std(list(base.values()))
        for row in board:
            if row["init"] != init or row["method"] == "bp":
                continue
            mine = _per_seed(row)
            m_mean, m_std = mean_std(list(mine.values()))
            delta = format_delta(paired_ttest(paired(mine, base)))
            lines.append(f"| {init} | {label}: {_name(bp)} | {b_mean:.2f} ± {b_std:.2f} | {row['method']} | "
                         f"{m_mean:.2f} ± {m_std:.2f} | {delta} |")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
