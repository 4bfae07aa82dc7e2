"""Render a depth grid kept outside the leaderboard (e48/, e108/): its table and plots, next to its CSVs.

    python leaderboards/explore/depth/archive.py leaderboards/explore/depth/e48

Writes `table.md`, `accuracy_vs_depth.png`, `loss_curves.png` and `grad_norms_depth<D>.png` (leaderboards/_depth.py,
the renderer the leaderboard uses) from `depth_cls_digits.csv` and `depth_cls_digits_runs.csv` in that folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from leaderboards._depth import _SETTING, _read, render_depth  # noqa: E402


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python leaderboards/explore/depth/archive.py FOLDER")
    folder = Path(sys.argv[1])
    rows = _read(folder / "depth_cls_digits.csv", _SETTING)  # as the leaderboard's depth section reads them
    runs = _read(folder / "depth_cls_digits_runs.csv", (*_SETTING, "seed"))
    for path in render_depth(rows, runs, folder):
        print(path)


if __name__ == "__main__":
    main()
