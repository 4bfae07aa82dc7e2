"""What every leaderboard section shares: reading a board (the latest row per setup and method), number formats,
setup names, paired differences over seeds (and their paired t-test, `leaderboards.stats`), method order and colours,
and the plotting backend."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import matplotlib

from .stats import PairedTest, paired, paired_ttest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["BEGIN", "COLORS", "END", "METHOD_ORDER", "SETUP_KEYS", "TABLE_KEYS", "load_board", "paired_diff",
           "paired_test", "setup_name"]  # fmt: skip

BEGIN = "<!-- BEGIN GENERATED (python -m leaderboards.render) -->"
END = "<!-- END GENERATED -->"
SETUP_KEYS = (
    "model",
    "arch",
    "model_kwargs",
    "img_size",
    "dataset",
    "train_size",
    "epochs",
    "batch_size",
    "num_blocks",
)
# one table per setup, noise kind and validation protocol (each method is compared with the BP row of the same kind,
# rate and protocol): clean- and noisy-validation rows select on different labels and never share a table
TABLE_KEYS = SETUP_KEYS + ("noise_kind", "val_protocol")
METHOD_ORDER = ("bp", "deinforeg", "greedy", "scpl")
COLORS = {"bp": "#444444", "deinforeg": "#d62728", "greedy": "#1f77b4", "scpl": "#2ca02c"}


def load_board(path: str | Path) -> list[dict[str, str]]:
    """Rows of one CSV, the latest per (setup, method, noise kind, noise rate)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    latest: dict[tuple, dict[str, str]] = {}
    for r in rows:
        key = tuple(r.get(k, "") for k in TABLE_KEYS + ("method", "noise_rate", "stages"))
        latest[key] = r
    return list(latest.values())


def _f(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "", "-") else None
    except ValueError:
        return None


def _fmt2(v: str | None) -> str:
    x = _f(v)
    return "-" if x is None else f"{x:.2f}"


def _distinct(rows: list[dict[str, str]], key: str) -> list[str]:
    """The distinct non-empty values of `key` among `rows`, sorted (every commit or device of a table, say)."""
    return sorted({r.get(key) or "" for r in rows} - {""})


def _method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def setup_name(r: dict[str, str]) -> str:
    name = r["model"] if r.get("task") != "seg" else f"{r.get('arch') or 'unet'}-{r['model']}"
    extras = [r["model_kwargs"]] if r.get("model_kwargs") else []
    if r.get("img_size"):
        extras.append(f"{r['img_size']}px")
    if r.get("epochs"):
        extras.append(f"{r['epochs']} ep")
    if r.get("noise_kind") not in (None, "", "symmetric"):
        extras.append(f"{r['noise_kind']} noise")  # symmetric is the default; other kinds get their own table
    if r.get("val_protocol") == "noisy":
        extras.append("noisy validation labels")  # clean validation is the default; noisy gets its own table
    return name + (f" ({', '.join(extras)})" if extras else "")


def _per_seed(r: dict[str, str], column: str = "metric_per_seed") -> dict[str, float]:
    seeds = (r.get("seeds") or "").split(";")
    vals = (r.get(column) or "").split(";")
    return {s: float(v) for s, v in zip(seeds, vals) if s and v not in ("", "-")}


def paired_test(row: dict[str, str], base: dict[str, str], column: str = "metric_per_seed") -> PairedTest | None:
    """The paired t-test of (row − base) over the seeds both have, on a per-seed column (`metric_per_seed`: the
    selected point; `final_per_seed`: the last epoch); None when no seed pairs."""
    p = paired(_per_seed(row, column), _per_seed(base, column))
    return paired_ttest(p) if p.seeds else None


def paired_diff(row: dict[str, str], base: dict[str, str]) -> tuple[float, float, int] | None:
    """Mean and std over common seeds of (row − base), and how many seeds were paired."""
    a, b = _per_seed(row), _per_seed(base)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    d = [a[s] - b[s] for s in common]
    return statistics.fmean(d), statistics.stdev(d) if len(d) > 1 else 0.0, len(d)


def _group(rows: list[dict[str, str]]) -> dict[tuple, list[dict[str, str]]]:
    """Rows by TABLE_KEYS, the same fields load_board keeps the latest row under (less method, rate and stages)."""
    groups: dict[tuple, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in TABLE_KEYS), []).append(r)
    return groups


def _save(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close a figure (pyplot keeps every open figure alive otherwise)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _legend(axes, **kwargs) -> None:
    """A legend on the first of `axes` that has labelled series; none when no axis has (a board with one unlabelled
    series, a panel of a partial grid left empty)."""
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(**kwargs)
            return


def _finish(fig, legend_ax, path: Path) -> Path:
    _legend([legend_ax], fontsize=8)
    return _save(fig, path)
