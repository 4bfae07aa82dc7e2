"""Is a budget converged? Issue 20's rule, read from the learning curves the harness appends.

A recipe is converged when running every method at 1.5x its epochs moves no method's *selected* validation metric
(the best validation value over the run's epochs and exits, the point the selection rule picks) by more than
max(1 point, its std over seeds at the base budget). The check pairs each (model, method, noise rate, validation
protocol) of the base curves with the same setting trained longer, seed by seed, and prints one line per setting and
a verdict; nothing is trained here.

    python -m leaderboards.convergence leaderboards/curves_cls_digits.csv \\
        leaderboards/explore/convergence/curves_cls_digits.csv --epochs 12 --longer 18 [--out table.md]

Both files are `curves_<task>_<dataset>.csv` (one row per run and epoch: `val_chosen` is that epoch's best exit on
validation), or both are the depth bench's per-run tables `depth_<task>_<dataset>_runs.csv` (one row per run:
`val_best_per_epoch` holds each epoch's best exit on validation; a setting is depth × norm × init × method):

    python -m leaderboards.convergence leaderboards/depth_cls_digits_runs.csv \\
        leaderboards/explore/depth/e108/depth_cls_digits_runs.csv --epochs 72

Runs are grouped by `run_id` + `seed` + setting, so two grids appended to one file stay apart; a setting present in
only one of the two files is not compared. Exit code 0 when every compared setting holds, 1 when one moves more
than the rule allows, 2 on a user error (a missing file, no runs at an epoch count).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from .stats import mean_std

__all__ = ["Setting", "compare", "main", "selected_val"]

KEY = ("model", "model_kwargs", "img_size", "method", "noise_kind", "noise_rate", "val_protocol")
RUNS_KEY = ("model", "depth", "norm", "init", "method")  # a depth bench's per-run table


class Setting(NamedTuple):
    """One compared setting: the selected validation metric per seed at both budgets and the verdict."""

    key: tuple[str, ...]
    seeds: list[str]
    base: list[float]
    longer: list[float]
    moved: float  # mean(longer) - mean(base)
    allowed: float  # max(1, std(base))
    holds: bool


def selected_val(path: str | Path, epochs: int) -> dict[tuple[str, ...], dict[str, float]]:
    """Setting → seed → best `val_chosen` over the epochs of runs trained for `epochs` epochs (the latest run of a
    seed wins when a file holds the same setting twice)."""
    best: dict[tuple[str, ...], dict[str, tuple[str, float]]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            per_run = "val_best_per_epoch" in r  # a per-run table: the run's whole curve in one cell
            curve = [float(v) for v in r["val_best_per_epoch"].split(";") if v] if per_run else []
            if int(r["epochs"]) != epochs or not (curve if per_run else r["val_chosen"]):
                continue
            key = tuple(r.get(k, "") for k in (RUNS_KEY if per_run else KEY))
            per_seed = best.setdefault(key, {})
            run, value = r["run_id"], max(curve) if per_run else float(r["val_chosen"])
            old = per_seed.get(r["seed"])
            if old is None or run > old[0]:
                per_seed[r["seed"]] = (run, value)
            elif run == old[0]:
                per_seed[r["seed"]] = (run, max(value, old[1]))
    return {k: {s: v for s, (_, v) in seeds.items()} for k, seeds in best.items()}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """`stats.mean_std`, with a single seed's std taken as 0 (the rule then allows 1 point)."""
    mean, std = mean_std(values)
    return mean, 0.0 if math.isnan(std) else std


def compare(base_path: str | Path, longer_path: str | Path, epochs: int, longer: int) -> list[Setting]:
    """Every setting of the base curves at `epochs` against the same setting at `longer`, on the seeds both have."""
    base, more = selected_val(base_path, epochs), selected_val(longer_path, longer)
    out = []
    for key in sorted(set(base) & set(more)):
        seeds = sorted(set(base[key]) & set(more[key]), key=int)
        if not seeds:
            continue
        b, m = [base[key][s] for s in seeds], [more[key][s] for s in seeds]
        (bm, bs), (mm, _) = _mean_std(b), _mean_std(m)
        allowed = max(1.0, bs)
        out.append(Setting(key, seeds, b, m, mm - bm, allowed, abs(mm - bm) <= allowed))
    return out


def _table(rows: Sequence[Setting], epochs: int, longer: int) -> str:
    if rows and len(rows[0].key) == len(RUNS_KEY):
        return _runs_table(rows, epochs, longer)
    head = (f"| model | method | noise | val labels | seeds | selected val at {epochs} ep | at {longer} ep | moved | "
            "allowed | holds |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for s in rows:
        model, kw, size, method, kind, rate, protocol = s.key
        (b, sb), (m, sm) = _mean_std(s.base), _mean_std(s.longer)
        name = model + (f" ({kw})" if kw else "") + (f" {size}px" if size else "")
        holds = "yes" if s.holds else "**no**"
        lines.append(f"| {name} | {method} | {kind} {float(rate):g} | {protocol} | {len(s.seeds)} | {b:.2f} ± {sb:.2f} "
                     f"| {m:.2f} ± {sm:.2f} | {s.moved:+.2f} | {s.allowed:.2f} | {holds} |")  # fmt: skip
    return "\n".join(lines)


def _runs_table(rows: Sequence[Setting], epochs: int, longer: int) -> str:
    head = (f"| model | depth | norm | init | method | seeds | selected val at {epochs} ep | at {longer} ep | moved | "
            "allowed | holds |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for s in sorted(rows, key=lambda s: (s.key[2], s.key[3], int(s.key[1] or 0), s.key[4])):
        model, depth, norm, init, method = s.key
        (b, sb), (m, sm) = _mean_std(s.base), _mean_std(s.longer)
        holds = "yes" if s.holds else "**no**"
        lines.append(f"| {model} | {depth} | {norm} | {init} | {method} | {len(s.seeds)} | {b:.2f} ± {sb:.2f} | "
                     f"{m:.2f} ± {sm:.2f} | {s.moved:+.2f} | {s.allowed:.2f} | {holds} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m leaderboards.convergence", description=__doc__.splitlines()[0])
    p.add_argument("base", help="curves CSV (or a depth bench's _runs.csv) of the grid at the budget under test")
    p.add_argument(
        "longer", help="the same kind of file for the same settings trained 1.5x longer (may be the same file)"
    )
    p.add_argument("--epochs", type=int, required=True, help="the budget under test")
    p.add_argument("--longer", dest="more", type=int, help="the longer budget (default: 1.5x --epochs)")
    p.add_argument("--out", help="also write the table (markdown) here")
    a = p.parse_args(argv)
    more = a.more or round(1.5 * a.epochs)
    for path in (a.base, a.longer):
        if not Path(path).is_file():
            print(f"error: {path}: no such curves file", file=sys.stderr)
            return 2
    rows = compare(a.base, a.longer, a.epochs, more)
    if not rows:
        print(f"error: no setting has runs at both {a.epochs} and {more} epochs in these files", file=sys.stderr)
        return 2
    table = _table(rows, a.epochs, more)
    moved = [s for s in rows if not s.holds]
    if moved:
        verdict = f"not converged: {len(moved)} of {len(rows)} settings move more than max(1, std) at {more} epochs"
    else:
        verdict = (f"converged: no method's selected validation metric moves more than max(1, std) at {more} epochs "
                   f"({len(rows)} settings)")  # fmt: skip
    print(table + "\n\n" + verdict)
    if a.out:
        Path(a.out).write_text(table + "\n\n" + verdict + "\n")
    return 0 if not moved else 1


if __name__ == "__main__":
    raise SystemExit(main())
