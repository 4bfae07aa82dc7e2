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
import sys
from collections.abc import Sequence
from pathlib import Path

from ._boards import board_section
from ._common import BEGIN, END, load_board, paired_diff, setup_name
from ._curves import _latest_runs, curve_title, curves_section
from .sections import SECTIONS

__all__ = ["load_board", "render", "main", "paired_diff", "setup_name", "curve_title", "BEGIN", "END"]
_ = _latest_runs  # re-exported: tests read the curves' latest-run rule from here


def _section(path: Path):
    """The renderer of a CSV: the bench section of its longest matching prefix, else an accuracy / noise board."""
    hits = [p for p in SECTIONS if path.stem.startswith(p)]
    return SECTIONS[max(hits, key=len)] if hits else board_section


def render(board_dir: str | Path = "leaderboards", readme: str | Path | None = None) -> list[Path]:
    """Regenerate the README's generated part and every PNG; returns the files written."""
    board_dir = Path(board_dir)
    readme = Path(readme) if readme else board_dir / "README.md"
    written: list[Path] = []
    md: list[str] = [BEGIN, "", "_Generated from the CSVs in this folder; do not edit between the markers._", ""]
    curves: list[str] = []
    for csv_path in sorted(board_dir.glob("*.csv")):
        if csv_path.stem.endswith("_audit"):
            continue  # under its leaderboard's tables
        if csv_path.stem.startswith("curves_"):
            lines, pngs = curves_section(csv_path)
            curves += lines
        else:
            lines, pngs = _section(csv_path)(csv_path)
            md += lines
        written += pngs
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


if __name__ == "__main__":
    sys.exit(main())
