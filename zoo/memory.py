"""Training peak memory that counts tensors, not the process, split into parameters, gradients, optimizer state and
activations.

Decoupled training's single-device payoff is memory: trained block by block (`TrainConfig.backward="blockwise"`),
only one block's graph is alive at a time. Measuring that needs the bytes of live tensors, not the resident set (which
also holds allocator caches, libraries and whatever earlier work left behind), so:

- On the CPU, the profiler's memory events (`profile_memory=True`): every allocation and free of torch's CPU
  allocator with its address and size, replayed in order. The peak is exact for the tensors torch allocates
  (kernel-internal scratch that bypasses the allocator, e.g. some oneDNN workspaces, is not seen).
- On CUDA, `torch.cuda.max_memory_allocated` over the work (reset at the start), with the same events for the split.

Both count from the tracked state live at the start (the model's parameters and buffers, its gradients, the
optimizers' state, the `inputs` given) plus the largest growth over it; tensors the caller holds besides (a dataset,
other models) are not this work's cost. The split is taken at the peak: an allocation live then is a gradient or
optimizer state if it is one when the work ends (or was one at the start), parameters are the weights and buffers,
and activations are everything else (the batch, what autograd saves, outputs and temporaries).

The CPU allocator reports a free only for memory it allocated while the profiler listened: state made outside any
tracked region (last step's gradients, say) and freed inside it would seem live to the end. `measure_train_step`
runs its warm-up step profiled for that reason; do the same when tracking state you built yourself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn as nn

__all__ = ["CATEGORIES", "MemoryBreakdown", "MemoryTracker", "StepMemory", "measure_memory", "state_bytes"]

CATEGORIES = ("parameters", "gradients", "optimizer", "activations")
MB = 2**20


class MemoryBreakdown(NamedTuple):
    """Peak memory of a piece of work in MB, and what was live at that moment."""

    peak_mb: float
    parameters_mb: float
    gradients_mb: float
    optimizer_mb: float
    activations_mb: float
    source: str  # "cpu_tensor_events" or "cuda_max_allocated"

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def _storages(tensors: Iterable[torch.Tensor | None], device: torch.device) -> dict[int, int]:
    """{storage address: bytes} of the tensors on `device`, each storage once (views share one)."""
    out: dict[int, int] = {}
    for t in tensors:
        if t is None or not torch.is_tensor(t) or t.device.type != device.type:
            continue
        s = t.untyped_storage()
        if s.nbytes():
            out[s.data_ptr()] = s.nbytes()
    return out


def _optimizer_tensors(optimizers: Sequence[torch.optim.Optimizer]) -> Iterator[torch.Tensor]:
    for o in optimizers:
        for st in o.state.values():
            yield from (v for v in st.values() if torch.is_tensor(v))


def state_bytes(
    model: nn.Module | None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    inputs: Sequence[torch.Tensor] = (),
    device: str | torch.device = "cpu",
) -> dict[int, tuple[int, str]]:
    """{storage address: (bytes, category)} of the state a step starts from (categories: `CATEGORIES`)."""
    device = torch.device(device)
    params = list(model.parameters()) if model is not None else []
    groups = [
        ("parameters", params + (list(model.buffers()) if model is not None else [])),
        ("gradients", [p.grad for p in params]),
        ("optimizer", list(_optimizer_tensors(optimizers))),
        ("activations", list(inputs)),
    ]
    out: dict[int, tuple[int, str]] = {}
    for cat, tensors in groups:
        for ptr, n in _storages(tensors, device).items():
            out.setdefault(ptr, (n, cat))
    return out


def _allocation_events(prof: torch.profiler.profile, device: torch.device) -> list[tuple[int, int, int]]:
    """(time, address, bytes; negative for a free) of every allocator event on `device`, in order."""
    events = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        f = e.extra_fields
        if type(f).__name__ == "_ExtraFields_Allocation" and f.device.type == device.type:
            events.append((e.start_time_ns, f.ptr, f.alloc_size))
    events.sort(key=lambda ev: ev[0])
    return events


class MemoryTracker:
    """Peak tensor memory of the work inside `with MemoryTracker(device, model, optimizers) as mem:`; afterwards
    `mem.result` is a MemoryBreakdown, `mem.peak_growth_bytes` the largest growth over the tracked state and
    `mem.end_growth_bytes` what the work left alive (e.g. the graph a forward keeps for its backward)."""

    def __init__(
        self,
        device: str | torch.device = "cpu",
        model: nn.Module | None = None,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        inputs: Sequence[torch.Tensor] = (),
    ):
        self.device = torch.device(device)
        self.model, self.optimizers, self.inputs = model, list(optimizers), list(inputs)
        self.result: MemoryBreakdown | None = None
        self.peak_growth_bytes = 0
        self.end_growth_bytes = 0

    def __enter__(self) -> MemoryTracker:
        self._start = state_bytes(self.model, self.optimizers, self.inputs, self.device)
        self.inputs = []  # holding them would keep the work from freeing them
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_base = torch.cuda.memory_allocated(self.device)
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # kineto's start/stop banners say nothing here
        self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._prof.__exit__(*exc)
        if exc[0] is not None:
            return
        cuda_growth = None
        if self.device.type == "cuda":
            cuda_growth = torch.cuda.max_memory_allocated(self.device) - self._cuda_base
        end = state_bytes(self.model, self.optimizers, (), self.device)
        self.result = self._replay(_allocation_events(self._prof, self.device), end, cuda_growth)

    def _replay(
        self, events: list[tuple[int, int, int]], end: dict[int, tuple[int, str]], cuda_growth: int | None
    ) -> MemoryBreakdown:
        base = sum(n for n, _ in self._start.values())

        def run(stop: int) -> tuple[dict[int, int], dict[int, tuple[int, str]], int, int, int]:
            """Replay the first `stop` events: what was live (new, from the start), growth, its max and where."""
            new: dict[int, int] = {}
            old = dict(self._start)
            growth = peak = 0
            at = -1
            for i, (_, ptr, size) in enumerate(events[:stop]):
                if size > 0:
                    new[ptr] = size
                    growth += size
                elif ptr in new:
                    growth -= new.pop(ptr)
                elif ptr in old:
                    growth -= old.pop(ptr)[0]
                # else: freed memory the tracker never counted (allocated before it began, not tracked state)
                if growth > peak:
                    peak, at = growth, i
            return new, old, growth, peak, at

        _, _, self.end_growth_bytes, self.peak_growth_bytes, at = run(len(events))
        new, old, _, _, _ = run(at + 1)
        freed_later = {ptr for _, ptr, size in events[at + 1 :] if size < 0}  # address reuse: a free then an alloc
        bytes_by = dict.fromkeys(CATEGORIES, 0)
        for n, cat in old.values():
            bytes_by[cat] += n
        for ptr, n in new.items():
            cat = end[ptr][1] if ptr in end and ptr not in freed_later else "activations"
            bytes_by[cat] += n
        peak = base + self.peak_growth_bytes
        source = "cpu_tensor_events"
        if cuda_growth is not None:
            peak, source = base + cuda_growth, "cuda_max_allocated"
        rest = peak - bytes_by["parameters"] - bytes_by["gradients"] - bytes_by["optimizer"]
        return MemoryBreakdown(
            peak_mb=peak / MB,
            parameters_mb=bytes_by["parameters"] / MB,
            gradients_mb=bytes_by["gradients"] / MB,
            optimizer_mb=bytes_by["optimizer"] / MB,
            activations_mb=max(rest, 0) / MB,
            source=source,
        )


def measure_memory(
    step: Any,
    device: str | torch.device = "cpu",
    model: nn.Module | None = None,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    inputs: Sequence[torch.Tensor] = (),
) -> MemoryBreakdown:
    """Peak tensor memory of calling `step()` once (see MemoryTracker)."""
    with MemoryTracker(device, model, optimizers, inputs) as mem:
        step()
    assert mem.result is not None
    return mem.result


def _profiled(fn: Any) -> None:
    """Run `fn` with the allocator reporting to the profiler: what it allocates stays known to the allocator, so its
    later frees show as events (a tensor allocated unprofiled is freed silently, and would seem live to the end)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True):
        fn()


def measure_train_step(trainer: Any, x: torch.Tensor, y: torch.Tensor, warmup: int = 1) -> MemoryBreakdown:
    """Peak tensor memory of one `trainer.train_step(x, y)` (a `zoo.train.Trainer`), the batch counted as an
    activation. `warmup` steps run first (profiled, see `_profiled`) so the optimizer state and last step's
    gradients exist as in every step but the first, and their frees during the measured step are seen."""
    x, y = x.to(trainer.device), y.to(trainer.device)
    for _ in range(warmup):
        _profiled(lambda: trainer.train_step(x, y))
    return measure_memory(lambda: trainer.train_step(x, y), trainer.device, trainer.model, trainer.optimizers, (x, y))


class StepMemory:
    """The training peak of a loop that is also timed (a pipeline stage, a timed single-device run): step `at`
    (default the second) is tracked like `measure_train_step`'s, the steps before it run with the allocator
    reporting (`_profiled`), the rest untouched. Put `at` inside the warm-up steps so the profiler's overhead stays
    out of the timing window. Used as `with mem.step(t, inputs): ...` around each step's compute; `peak_mb()` and
    `kind` give the peak and its source, `result` is the MemoryBreakdown (None until step `at` ran)."""

    def __init__(
        self,
        device: str | torch.device,
        model: nn.Module | None,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        at: int = 1,
    ):
        self.device, self.model, self.optimizers, self.at = torch.device(device), model, list(optimizers), at
        self.result: MemoryBreakdown | None = None
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_tensor_events"

    @contextlib.contextmanager
    def step(self, t: int, inputs: Sequence[torch.Tensor] = ()) -> Iterator[None]:
        if t > self.at:
            yield
            return
        if t < self.at:
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True):
                yield
            return
        with MemoryTracker(self.device, self.model, self.optimizers, inputs) as mem:
            yield
        self.result = mem.result

    def peak_mb(self) -> float:
        return self.result.peak_mb if self.result is not None else float("nan")
