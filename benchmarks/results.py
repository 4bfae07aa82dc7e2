"""Result rows: an atomic, lock-protected CSV append, and the run's own record of them (rows.json and W&B).

The environment every row records (`zoo.runtime.environment`: device, torch, commit, date) is defined in `zoo`.

Leaderboard CSVs have fixed columns and are only ever appended to by the harness. Two runs that finish at once
must not lose or tear a row: each append takes an exclusive `flock` on a sidecar lock file, writes the header only
when the file is new, and writes the rows in one `write` followed by `fsync`. A CSV written before its bench gained
columns is rewritten once with the new header (its rows leave the new columns empty).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from zoo import runtime
from zoo.runtime import ENV_COLUMNS

__all__ = [
    "ENV_COLUMNS",
    "RESULT_FILES",
    "SETUP_COLUMNS",
    "setup_columns",
    "append_rows",
    "read_rows",
    "environment",
    "format_value",
    "record_rows",
]

# the columns that name a row's setup, first in every bench's CSV (see `setup_columns`)
SETUP_COLUMNS = ("bench", "task", "model", "arch", "model_kwargs", "img_size", "method", "num_blocks", "dataset")


def setup_columns(cfg: Any, bench: str, model: str, method: str, num_blocks: int) -> dict[str, Any]:
    """The values of `SETUP_COLUMNS` for one row of a run."""
    return {
        "bench": bench,
        "task": cfg.task,
        "model": model,
        "arch": cfg.arch or "",
        "model_kwargs": ";".join(f"{k}={v}" for k, v in sorted(cfg.model_kwargs.items())),
        "img_size": cfg.img_size or "",
        "method": method,
        "num_blocks": num_blocks,
        "dataset": cfg.dataset,
    }


# what runs append to and the renderer rewrites: defined in zoo.runtime, which checkpoints use too
RESULT_FILES = runtime.RESULT_FILES


def environment(device: Any = "cpu") -> dict[str, str]:
    """`zoo.runtime.environment`, with a commit that is not `+dirty` for result files runs appended to."""
    return runtime.environment(device, ignore=RESULT_FILES)


def format_value(v: Any) -> str:
    """Floats with fixed precision so git diffs of leaderboards stay readable."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "" if v != v else f"{v:.4f}"
    if v is None:
        return ""
    return str(v)


def append_rows(path: str | Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> int:
    """Append `rows` (dicts; keys must be a subset of `columns`) to the CSV at `path`; returns rows written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    for r in rows:
        extra = set(r) - set(columns)
        if extra:
            raise ValueError(f"row has columns {sorted(extra)} that {path.name} does not have")
    lock_path = path.with_suffix(path.suffix + ".lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            new = not path.exists() or path.stat().st_size == 0
            if not new:
                with open(path, newline="") as f:
                    header = next(csv.reader(f), [])
                if header != list(columns):
                    _add_columns(path, header, list(columns))
            text = _csv_text(rows, columns, header=new)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return len(rows)


def _add_columns(path: Path, header: list[str], columns: list[str]) -> None:
    """A bench that gained columns since `path` was written: rewrite it with the new header (old rows leave the new
    columns empty), atomically, under the caller's lock. A file with columns the bench no longer writes is refused."""
    gone = [c for c in header if c not in columns]
    if gone:
        raise ValueError(
            f"{path} has columns {gone} that this version no longer writes; move the file aside (for example to "
            f"leaderboards/archive/) and run again"
        )
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(_csv_text(read_rows(path), columns, header=True))
    os.replace(tmp, path)


def _csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str], header: bool) -> str:
    """`rows` as CSV lines in `columns` order (missing keys empty), the header line first when `header`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    for r in rows:
        w.writerow([format_value(r.get(c)) for c in columns])
    return buf.getvalue()


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _summary_key(r: Mapping[str, Any]) -> str:
    if "engine" not in r:  # one device: model / method
        return f"{r['model']}/{r['method']}"
    m = f"/M{r['micro_batches']}" if r["engine"] in ("gpipe", "1f1b") else ""
    mb = f"/batch{r['batch_size']}" if r["engine"] == "bp-single-mb" else ""
    meth = f"/{r['method']}" if r["engine"] in ("deinforeg-pipe", "deinforeg-single") else ""
    return f"{r['model']}/{r['engine']}{meth}{m}{mb}"


SUMMARY_FIGURES = (
    "samples_per_s",
    "step_ms",
    "ratio_vs_bp",
    "speedup_vs_bp",
    "speedup_vs_pipelining_bp",
    "peak_mem_mb",
)


def record_rows(cfg: Any, run_dir: Path, run_id: str, rows: list[dict[str, Any]], log: Any = print) -> None:
    """rows.json in the run folder, and one W&B run (`<run dir>/runs/<bench>/wandb`) with the rows as a table and
    the headline figures as its summary, keyed by model and method or engine."""
    from ._wandb import start_run

    (Path(run_dir) / "rows.json").write_text(json.dumps(rows, indent=1, default=float))
    if not rows:
        return
    tags = [cfg.bench, cfg.task] + ([f"stages{cfg.options.stages}"] if cfg.bench == "pipeline" else [])
    wb = start_run(
        cfg.wandb, cfg.wandb_project, Path(run_dir) / "runs" / cfg.bench, f"{run_id}-{cfg.bench}", run_id,
        cfg.to_dict(), tags, log,
    )  # fmt: skip
    columns = list(rows[0])
    wb.table("rows", columns, [[r.get(c) for c in columns] for r in rows])
    figures = {f"{_summary_key(r)}/{k}": r[k] for r in rows for k in SUMMARY_FIGURES if r.get(k) not in (None, "")}
    wb.summary(figures)
    wb.finish()
