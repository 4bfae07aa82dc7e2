"""How a stage's failure reaches every other process: what a failed stage records (`StageFailure`, data in the
rendezvous store, never a sentence to parse), the error the launcher raises (`PipelineError`, carrying it), and the
launcher's watch over its stage processes (the first failure stops the rest within seconds, naming it)."""

from __future__ import annotations

import json
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass

import torch.distributed as dist

from ..errors import UserError
from ._comm import connect_store, first_error, report_error

__all__ = ["PipelineError", "StageFailure"]


@dataclass(frozen=True)
class StageFailure:
    """Why a stage failed, as that stage recorded it: which stage, the exception's type, whether it was the
    user's mistake (a `UserError`), the module it was raised in, and its message. It crosses the process boundary
    as data (JSON in the rendezvous store), so nobody reads a cause back out of a sentence."""

    stage: int
    error_type: str
    user_error: bool
    origin: str  # module of the innermost frame: "torch.distributed.pipelining..." is torch refusing a schedule
    message: str

    @classmethod
    def of(cls, stage: int, e: BaseException) -> StageFailure:
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        origin = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
        return cls(stage, type(e).__name__, isinstance(e, UserError), origin, str(e).split("\n")[0])

    def __str__(self) -> str:
        return f"stage {self.stage} failed: {self.error_type}: {self.message}"


class PipelineError(RuntimeError):
    """A stage failed; the message names the stage and the cause, and `failure` holds them as data (None when no
    stage recorded one: a stage killed or gone silent)."""

    def __init__(self, message: str, failure: StageFailure | None = None):
        super().__init__(message)
        self.failure = failure


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "is still running"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _is_connection_error(e: BaseException) -> bool:
    text = str(e)
    return "Connection closed by peer" in text or "Connection reset by peer" in text


def _failed(host: str, port: int, prefix: str, rank: int, e: BaseException) -> int:
    failure = StageFailure.of(rank, e)
    _report(host, port, prefix, f"stage {rank} failed: {type(e).__name__}: {e}", failure)
    traceback.print_exc()
    print(f"[stage {rank}] {failure}", file=sys.stderr, flush=True)
    return 1


def _report(host: str, port: int, prefix: str, msg: str, failure: StageFailure | None = None) -> None:
    """Tell every stage and the launcher: `msg` for people, and the first stage's own `failure` as data."""
    try:
        store = dist.PrefixStore(prefix, connect_store(host, port, 5.0))
        if failure is not None and store.add("failures", 1) == 1:
            store.set("failure", json.dumps(asdict(failure)))
        report_error(store, msg)
    except Exception:  # noqa: BLE001 - the store may be gone; the watchdogs then see the silence
        pass


def _stage_failure(store: dist.Store) -> StageFailure | None:
    """The failure the first failing stage recorded, if one did."""
    if store.add("failures", 0) == 0 or not store.check(["failure"]):
        return None
    return StageFailure(**json.loads(store.get("failure")))


def _monitor(procs: list, store: dist.Store, poll_s: float = 0.1, stop_within_s: float = 25.0) -> None:
    """Wait for every stage; on the first failure make the rest stop and raise PipelineError naming it."""
    while True:
        codes = [p.exitcode for p in procs]
        if all(c == 0 for c in codes):
            return
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        bad = min(failed, key=lambda r: (codes[r] > 0, r)) if failed else None  # a killed stage first
        err = first_error(store)
        if bad is not None or err is not None:
            if err is None:
                time.sleep(0.5)  # the stage may have reported its cause just before exiting
                err = first_error(store)
            if err is None:
                err = f"stage {bad} {_describe_exit(codes[bad])}"
                report_error(store, err)
            _stop_all(procs, stop_within_s)
            summary = ", ".join(f"stage {r} {_describe_exit(p.exitcode)}" for r, p in enumerate(procs))
            raise PipelineError(f"pipeline failed: {err} ({summary})", _stage_failure(store))
        time.sleep(poll_s)


def _stop_all(procs: list, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=3)
        if p.is_alive():
            p.kill()
            p.join(timeout=3)
