"""Where a run happens: the device, the commit and the environment columns every result row records.

One definition of each, used by every bench and by checkpoints, so rows of different benches compare. Peak memory
is `zoo.memory` (tensors counted: CPU allocator events, CUDA `max_memory_allocated`), the same for every bench.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import UserError

__all__ = ["RESULT_FILES", "environment", "git_commit", "resolve_device", "sync"]

# what runs append to and the renderer rewrites (leaderboards, their learning curves and noise audits, plots, README):
# changes there leave the code a row or a checkpoint names unchanged, so they never make a commit `+dirty`
RESULT_FILES = ("leaderboards/*.csv", "leaderboards/*.png", "leaderboards/README.md")

ENV_COLUMNS = ("device", "torch", "commit", "date")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`auto` → cuda when available, else cpu; `cpu`, `cuda`, `cuda:N` as given (a UserError if unavailable)."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device {name!r} is not valid; valid choices: auto, cpu, cuda, cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name}: CUDA is not available here; valid choices: auto, cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device {name!r} is not valid ({e}); valid choices: auto, cpu, cuda, cuda:N") from None


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a timer measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _git(*args: str, cwd: Path) -> str:
    out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, cwd=cwd)
    return out.stdout.strip() if out.returncode == 0 else ""


def git_commit(path: str | os.PathLike | None = None, full: bool = False, ignore: Sequence[str] = ()) -> str | None:
    """The commit of the repository holding `path` (default: this package), with `+dirty` when tracked files
    differ from it. Outside a git checkout (an installed package, or a copy of a clean tree sent to another machine)
    it is $DEINFOREG_COMMIT if the sender set it, else None. `ignore`: git pathspecs (relative to the repository
    root) whose changes do not make the tree dirty, e.g. result files that runs append to."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = _git("rev-parse", "HEAD" if full else "--short=12", *([] if full else ["HEAD"]), cwd=cwd)
        if not commit:
            return os.environ.get("DEINFOREG_COMMIT") or None
        exclude = [f":(top,exclude){p}" for p in ignore]
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", *exclude, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def environment(device: str | torch.device = "cpu", ignore: Sequence[str] = ()) -> dict[str, str]:
    """The columns every result row records about where it ran: device name, torch version, commit (`ignore`: see
    `git_commit`), date."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu:{platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"
    return {
        "device": name,
        "torch": torch.__version__,
        "commit": git_commit(ignore=ignore) or "unknown",
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
