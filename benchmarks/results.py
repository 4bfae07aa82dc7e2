"""Result rows: the environment every row records, and an atomic, lock-protected CSV append.

Leaderboard CSVs have fixed columns and are only ever appended to by the harness. Two runs that finish at once
must not lose or tear a row: each append takes an exclusive `flock` on a sidecar lock file, writes the header only
when the file is new, and writes the rows in one `write` followed by `fsync`.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fcntl
import io
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["append_rows", "read_rows", "environment", "format_value"]


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
                    raise ValueError(f"{path} has columns {header}, expected {list(columns)}")
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            if new:
                w.writerow(columns)
            for r in rows:
                w.writerow([format_value(r.get(c)) for c in columns])
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, buf.getvalue().encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return len(rows)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    return out.stdout.strip()


def _git_commit() -> str:
    """Short commit hash, with `+dirty` when tracked files differ from it."""
    try:
        commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: str | torch.device = "cpu") -> dict[str, str]:
    """What every row records about where it ran: device name, torch version, commit, date."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"
    return {
        "device": name,
        "torch": torch.__version__,
        "commit": _git_commit(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
