"""Point-to-point messages between stages, and the watchdog that makes a dead stage fatal for every other one.

Messages are a fixed-size int64 header (kind, step, then dtype and shape of each tensor) followed by the tensors,
sent with plain `isend` / `irecv` (gloo's `batch_isend_irecv` can hang on CPU, pytorch issue 132644). Every wait
polls `Work.is_completed()` in Python, so it honours a timeout, a failure reported by the watchdog, and Ctrl-C.

The watchdog is a thread with its own connection to the rendezvous store: it beats a per-stage counter, watches the
other stages' counters and the shared error list, and turns silence or a reported failure into `PeerFailure`. It also
watches its own stage's progress during training (`mark`): a stage whose process is alive but that has not moved for
`stall_after_s` (or 10× its slowest step, if longer) while not waiting for a message has stalled; one that has waited
twice that long for a message names what it waits for. Either stops the whole run, naming what each stage was doing.
"""

from __future__ import annotations

import datetime
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = [
    "Link",
    "LinkStats",
    "Message",
    "PeerFailure",
    "PeerLost",
    "Watchdog",
    "connect_store",
    "report_error",
    "first_error",
]

HEADER_LEN = 128
_SLOT = 8  # dtype code, ndim, up to 6 dims
MAX_TENSORS = (HEADER_LEN - 3) // _SLOT
DATA, STOP, BLOB = 1, 2, 3

_DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
    torch.int16,
    torch.int8,
]
_CODE = {d: i for i, d in enumerate(_DTYPES)}


class PeerFailure(RuntimeError):
    """Another stage failed (or the run was stopped); this stage stops without blaming itself."""


class PeerLost(PeerFailure):
    """The connection to a neighbour broke: the neighbour died. Reported to the store (nobody else may have)."""


@dataclass
class Message:
    kind: int
    step: int
    tensors: list[torch.Tensor]


@dataclass
class LinkStats:
    """What crossed this stage's links: bytes, time waiting for an upstream message (idle), time moving data."""

    bytes_sent: int = 0
    bytes_received: int = 0
    idle_s: float = 0.0  # waiting for a header: upstream was still computing
    transfer_s: float = 0.0  # receiving the payload after its header, and issuing sends
    blocked_s: float = 0.0  # waiting for in-flight sends to complete: downstream was still busy (backpressure)
    log: list[tuple[float, float]] = field(default_factory=list)  # per message received: (idle, transfer)


def connect_store(host: str, port: int, timeout_s: float, is_master: bool = False) -> dist.TCPStore:
    """A client (or the master) of the rendezvous TCPStore."""
    return dist.TCPStore(
        host,
        port,
        None,
        is_master,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def report_error(store: dist.Store, message: str) -> None:
    """Append `message` to the run's error list (the first one is the root cause)."""
    n = store.add("errors", 1)
    store.set(f"error/{n}", message)


def first_error(store: dist.Store) -> str | None:
    if store.add("errors", 0) == 0:
        return None
    if not store.check(["error/1"]):
        return None
    return store.get("error/1").decode(errors="replace")


class Watchdog(threading.Thread):
    """Heartbeat + failure detector of one stage (see the module docstring).

    `failure` is set when another stage reported an error or went silent for `dead_after_s`. If the main thread has
    not stopped `grace_s` later (it is stuck outside a polled wait), the process exits hard with the message.
    """

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        rank: int,
        world: int,
        beat_s: float = 0.5,
        dead_after_s: float = 10.0,
        grace_s: float = 10.0,
        stall_after_s: float = 15.0,
        first_step_s: float = 120.0,
    ):
        super().__init__(name=f"stage{rank}-watchdog", daemon=True)
        self.host, self.port, self.prefix = host, port, prefix
        self.rank, self.world = rank, world
        self.beat_s, self.dead_after_s, self.grace_s = beat_s, dead_after_s, grace_s
        self.stall_after_s, self.first_step_s = stall_after_s, first_step_s
        self.failure: str | None = None
        self._halt = threading.Event()
        self._status: tuple[str, bool, float] | None = None  # (what the stage is doing, waiting?, since)
        self._slowest_step = 0.0

    # -- progress, from the stage's main thread ----------------------------------------------------------------------
    def mark(self, what: str | None, waiting: bool = False) -> None:
        """The stage now does `what` (None: stop watching progress, e.g. outside the training loop)."""
        self._status = None if what is None else (what, waiting, time.monotonic())

    @property
    def status(self) -> str | None:
        return self._status[0] if self._status is not None else None

    def step_done(self, seconds: float) -> None:
        self._slowest_step = max(self._slowest_step, seconds)

    def stall_limit_s(self) -> float:
        """No progress for this long is a stall: the first step may take up to `first_step_s` (nothing measured yet)."""
        if self._slowest_step == 0.0:
            return max(self.stall_after_s, self.first_step_s)
        return max(self.stall_after_s, 10 * self._slowest_step)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)

    def _store(self) -> dist.Store:
        return dist.PrefixStore(self.prefix, connect_store(self.host, self.port, 10.0))

    def run(self) -> None:
        try:
            store = self._store()
        except Exception as e:  # noqa: BLE001 - any failure to reach the store is fatal here
            self._fail(f"stage {self.rank} cannot reach the coordination store at {self.host}:{self.port}: {e}")
            return
        seen = {r: (-1, time.monotonic()) for r in range(self.world) if r != self.rank}
        published = None
        while not self._halt.wait(self.beat_s):
            try:
                store.add(f"hb/{self.rank}", 1)
                err = first_error(store)
                if err is not None:
                    self._fail(err)
                    return
                status = self._status
                if status is not None and status[0] != published:
                    store.set(f"status/{self.rank}", status[0])
                    published = status[0]
                stalled = self._stalled(store, status)
                if stalled is not None:
                    report_error(store, stalled)
                    self._fail(stalled, grace_s=2.0)  # the main thread is stuck by definition: do not wait long
                    return
                now = time.monotonic()
                for r, (last, since) in list(seen.items()):
                    if store.check([f"done/{r}"]):
                        del seen[r]
                        continue
                    beat = store.add(f"hb/{r}", 0)
                    if beat != last:
                        seen[r] = (beat, now)
                    elif now - since > self.dead_after_s:
                        msg = (
                            f"stage {r} stopped responding (no heartbeat for {self.dead_after_s:.0f} s: killed or hung)"
                        )
                        report_error(store, msg)
                        self._fail(msg)
                        return
            except Exception as e:  # noqa: BLE001
                if self._halt.is_set():
                    return
                self._fail(f"lost the coordination store ({e}): the launcher or the stage hosting it died")
                return

    def _stalled(self, store: dist.Store, status: tuple[str, bool, float] | None) -> str | None:
        """The error message if this stage has stalled, else None."""
        if status is None:
            return None
        what, waiting, since = status
        idle, limit = time.monotonic() - since, self.stall_limit_s()
        if not waiting and idle > limit:
            msg = (
                f"stage {self.rank} stalled: no progress for over {limit:.0f} s while {what} "
                f"(its process is alive and it was not waiting for any message)"
            )
        elif waiting and idle > 2 * limit:
            msg = f"stage {self.rank} stalled: {what} for over {2 * limit:.0f} s"
        else:
            return None
        others = []
        for r in range(self.world):
            if r != self.rank and store.check([f"status/{r}"]):
                others.append(f"stage {r} was {store.get(f'status/{r}').decode(errors='replace')}")
        return "; ".join([msg, *others])

    def _fail(self, message: str, grace_s: float | None = None) -> None:
        self.failure = message
        if self._halt.wait(self.grace_s if grace_s is None else grace_s):
            return
        print(f"[stage {self.rank}] stopping: {message} (forced exit)", file=sys.stderr, flush=True)
        os._exit(1)


class _Job:
    __slots__ = ("work", "done", "error")

    def __init__(self, work):
        self.work, self.done, self.error = work, threading.Event(), None


class _Waiter(threading.Thread):
    """Calls `Work.wait()` for the main thread, one job at a time, in submission order."""

    def __init__(self, rank: int):
        super().__init__(name=f"stage{rank}-waiter", daemon=True)
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self.start()

    def submit(self, job: _Job) -> None:
        self._jobs.put(job)

    def run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job.work.wait()
            except Exception as e:  # noqa: BLE001 - handed to the main thread
                job.error = e
            job.done.set()


class Link:
    """This stage's sends and receives, with a bounded number of messages in flight and polled, timed waits."""

    def __init__(
        self,
        rank: int,
        watchdog: Watchdog | None,
        device: torch.device,
        timeout_s: float,
        max_in_flight=2,
        comm_device: torch.device | None = None,
    ):
        self.rank = rank
        self.watchdog = watchdog
        self.device = device  # where the stage computes; received tensors land here
        # where tensors travel: the compute device under NCCL, the CPU under gloo (stages sharing one GPU)
        self.comm_device = comm_device or device
        self.timeout_s = timeout_s
        self.max_in_flight = max(1, int(max_in_flight))
        self.stats = LinkStats()
        self._waiter = _Waiter(rank)
        self._in_flight: deque[tuple[int, list, list[torch.Tensor]]] = deque()

    # -- waiting --------------------------------------------------------------------------------------------------
    def _wait(self, work, peer: int, what: str) -> None:
        # gloo's p2p Work only completes inside wait(): a helper thread blocks there while this thread keeps
        # watching the clock, the watchdog and signals.
        job = _Job(work)
        self._waiter.submit(job)
        t0 = time.monotonic()
        wd = self.watchdog
        before = wd.status if wd is not None else None
        if before is not None:
            doing = f"stage {peer} to receive a message" if what == "send completion" else f"{what} from stage {peer}"
            wd.mark(f"waiting for {doing}", waiting=True)
        while not job.done.wait(0.05):
            wd = self.watchdog
            if wd is not None and wd.failure is not None:
                raise PeerFailure(wd.failure)
            if time.monotonic() - t0 > self.timeout_s:
                raise TimeoutError(f"stage {self.rank}: no {what} from/to stage {peer} within {self.timeout_s:.0f} s")
        if before is not None:
            wd.mark(before)  # back to what the stage was doing: the message moved, which is progress
        if job.error is not None:
            e = job.error
            detail = str(e).split(". This is typically")[0]
            raise PeerLost(f"stage {peer} died or closed its connection (seen by stage {self.rank}: {detail})") from e

    # -- sending --------------------------------------------------------------------------------------------------
    def send(self, dst: int, kind: int, step: int, tensors: list[torch.Tensor]) -> None:
        t0 = time.perf_counter()
        while len(self._in_flight) >= self.max_in_flight:
            self._drain_one()
        t1 = time.perf_counter()
        self.stats.blocked_s += t1 - t0
        if len(tensors) > MAX_TENSORS:
            raise ValueError(f"a message carries at most {MAX_TENSORS} tensors, got {len(tensors)}")
        header = torch.zeros(HEADER_LEN, dtype=torch.int64)
        header[0], header[1], header[2] = kind, step, len(tensors)
        payload = []
        for i, t in enumerate(tensors):
            if t.dim() > _SLOT - 2:
                raise ValueError(f"tensors of at most {_SLOT - 2} dims can be sent, got shape {tuple(t.shape)}")
            base = 3 + i * _SLOT
            header[base], header[base + 1] = _CODE[t.dtype], t.dim()
            header[base + 2 : base + 2 + t.dim()] = torch.tensor(t.shape, dtype=torch.int64)
            payload.append(t.detach().to(self.comm_device).contiguous())
        header = header.to(self.comm_device)
        works = [dist.isend(header, dst)] + [dist.isend(t, dst) for t in payload]
        self._in_flight.append((dst, works, [header, *payload]))
        self.stats.bytes_sent += sum(t.numel() * t.element_size() for t in payload) + header.numel() * 8
        self.stats.transfer_s += time.perf_counter() - t1

    def _drain_one(self) -> None:
        dst, works, _ = self._in_flight.popleft()
        for w in works:
            self._wait(w, dst, "send completion")

    def flush(self) -> None:
        t0 = time.perf_counter()
        while self._in_flight:
            self._drain_one()
        self.stats.blocked_s += time.perf_counter() - t0

    # -- receiving ------------------------------------------------------------------------------------------------
    def recv(self, src: int, what: str = "message") -> Message:
        t0 = time.perf_counter()
        header = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.comm_device)
        self._wait(dist.irecv(header, src), src, what)
        t1 = time.perf_counter()
        h = header.tolist()
        kind, step, n = h[0], h[1], h[2]
        tensors = []
        for i in range(n):
            base = 3 + i * _SLOT
            dtype, ndim = _DTYPES[h[base]], h[base + 1]
            tensors.append(torch.empty(h[base + 2 : base + 2 + ndim], dtype=dtype, device=self.comm_device))
        works = [dist.irecv(t, src) for t in tensors]
        for w in works:
            self._wait(w, src, what)
        if self.comm_device != self.device:
            tensors = [t.to(self.device, non_blocking=True) for t in tensors]
        t2 = time.perf_counter()
        self.stats.bytes_received += sum(t.numel() * t.element_size() for t in tensors) + HEADER_LEN * 8
        self.stats.idle_s += t1 - t0
        self.stats.transfer_s += t2 - t1
        self.stats.log.append((t1 - t0, t2 - t1))
        return Message(kind, step, tensors)

    # -- blobs (state dicts and statistics at the end of a run) ---------------------------------------------------
    def send_blob(self, dst: int, data: bytes) -> None:
        self.send(dst, BLOB, 0, [torch.frombuffer(bytearray(data), dtype=torch.uint8)])
        self.flush()

    def recv_blob(self, src: int) -> bytes:
        msg = self.recv(src, "final state")
        if msg.kind != BLOB:
            raise RuntimeError(f"stage {self.rank}: expected the final state from stage {src}, got kind {msg.kind}")
        return msg.tensors[0].cpu().numpy().tobytes()
