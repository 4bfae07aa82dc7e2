"""A W&B run that can never stop the harness: every call is guarded and falls back to a no-op.

`offline` (the default) writes `<dir>/wandb/offline-run-*/` and needs no account; upload later with
`wandb sync <run folder>/wandb/offline-run-*`. `online` needs `WANDB_API_KEY` or `wandb login`; `disabled` skips W&B.
Local files written by the harness stay the source of truth whatever happens here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SafeRun", "start_run"]


class SafeRun:
    """Wraps a wandb run; after the first failure it warns once and turns into a no-op."""

    def __init__(self, run: Any = None, warn: Callable[[str], None] = print):
        self._run = run
        self._warn = warn
        self.failed = run is None

    @property
    def dir(self) -> str | None:
        """The local folder of this run (`.../wandb/offline-run-*/files`), None when disabled or failed."""
        return self._guard("dir", lambda: self._run.dir if self._run is not None else None)

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        if self._run is None:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - W&B must never stop a run
            self._warn(f"W&B {what} failed ({type(e).__name__}: {e}); continuing without W&B, results stay local")
            self._run = None
            self.failed = True
            return None

    def log(self, data: Mapping[str, Any], step: int | None = None) -> None:
        self._guard("log", lambda: self._run.log(dict(data), step=step))

    def summary(self, data: Mapping[str, Any]) -> None:
        def _set() -> None:
            for k, v in data.items():
                self._run.summary[k] = v

        self._guard("summary", _set)

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        def _log() -> None:
            import wandb

            self._run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

        self._guard("table", _log)

    def artifact(self, path: str | Path, name: str, kind: str = "model", metadata: dict | None = None) -> None:
        def _log() -> None:
            import wandb

            art = wandb.Artifact(name, type=kind, metadata=metadata or {})
            p = Path(path)
            # immutable: W&B reads the files where they are instead of copying them into its staging cache
            if p.is_dir():
                art.add_dir(str(p), skip_cache=True, policy="immutable")
            else:
                art.add_file(str(p), skip_cache=True, policy="immutable")
            self._run.log_artifact(art)

        self._guard("artifact", _log)

    def finish(self, exit_code: int = 0) -> None:
        self._guard("finish", lambda: self._run.finish(exit_code=exit_code))
        self._run = None


def _has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        import netrc

        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        hosts = netrc.netrc(path).hosts
        return any("wandb" in h for h in hosts)
    except (OSError, netrc.NetrcParseError):
        return False


def start_run(
    mode: str,
    project: str,
    directory: str | Path,
    name: str,
    group: str,
    config: Mapping[str, Any],
    tags: Sequence[str] = (),
    warn: Callable[[str], None] = print,
) -> SafeRun:
    """Start a W&B run in `directory`; any failure (no package, no key, no network) gives a no-op run."""
    if mode == "disabled":
        return SafeRun(None, warn)
    if mode == "online" and not _has_key():
        # wandb would otherwise ask for a key on the terminal and wait: log offline instead
        warn("W&B online: no API key (WANDB_API_KEY or `wandb login`); logging offline, `wandb sync` later")
        mode = "offline"
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        Path(directory).mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=project,
            mode=mode,
            dir=str(directory),
            name=name,
            group=group,
            config=dict(config),
            tags=list(tags),
            reinit="create_new",
        )
        return SafeRun(run, warn)
    except Exception as e:  # noqa: BLE001
        warn(f"W&B init failed in {mode} mode ({type(e).__name__}: {e}); results are still written locally")
        return SafeRun(None, warn)
