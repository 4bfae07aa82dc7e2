"""What one stage process runs: the decoupled schedule, or BP over `torch.distributed.pipelining` for comparison.

Decoupled schedule (DeInfoReg, greedy, SCPL): stage k receives micro-batch t (activation, labels, and the skip
features a later segmentation decoder reads) from stage k-1, runs its blocks, computes each block's local loss,
steps its own optimizers and sends the detached output on. No gradient crosses a stage, so stage k works on t while
stage k+1 works on t-1; a bounded number of sends in flight bounds memory. Every process builds the whole model from
the same seed and keeps its own blocks, so with the same data the result equals single-process training.

BP baselines (zoo.pipeline._bp): the same blocks without local heads (`method="bp"`) on the same partition, driven
by the schedules of `torch.distributed.pipelining` a user would otherwise pick (GPipe, 1F1B, the zero-bubble ones).
"""

from __future__ import annotations

import io
import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..decoupled import DecoupledModel, Features, forward_block
from ..heads import LOCAL_METHODS
from ..memory import StepMemory
from ..train import NonFiniteLossError, TrainConfig, Trainer, build_optimizers, seed_everything, update
from ._comm import DATA, Link, Watchdog
from ._replica import average_buffers, average_grads, gather_losses, sync_bn
from .partition import stage_slices

__all__ = [
    "ENGINES",
    "Batches",
    "Builder",
    "PipelineConfig",
    "Replicas",
    "batch_size_of",
    "build",
    "pin_cpu",
    "run_single",
    "stage_decoupled",
    "synthetic_batches",
]

# deinforeg: the decoupled schedule; the others BP over torch.distributed.pipelining (zoo.pipeline._bp)
ENGINES = ("deinforeg", "gpipe", "1f1b", "zb-interleaved", "zbv", "dualpipev")
# builder(method=...) -> a fresh DecoupledModel; picklable (a module-level function or functools.partial of one), as
# every stage process builds its own copy, e.g. functools.partial(zoo.create_model, "resnet18", num_classes=10)
Builder = Callable[..., DecoupledModel]
# (x, y) training batches, all of one batch size, cycled for `steps` steps
Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class PipelineConfig:
    """How to run one pipelined (or single-process reference) training run; the model and data are given apart."""

    engine: str = "deinforeg"  # deinforeg (decoupled, any local method) | BP: gpipe 1f1b zb-interleaved zbv dualpipev
    method: str = "deinforeg"  # local method of the decoupled engine (deinforeg | greedy | scpl)
    stages: int | None = 2  # None: the launcher's world size (divided by `replicas`)
    replicas: int = 1  # processes per stage, each on a 1/replicas shard of every batch (gradients all-reduced)
    replica_loss: str = "global"  # global: loss and BatchNorm over the stage's whole batch | shard: per replica
    oversubscribe: bool = False  # allow more local processes than devices (GPUs, or cores / threads on CPU)
    partition: list[int] | None = None  # blocks per stage; None: profile and balance
    balance: str = "time"  # what a profiled partition balances: time | memory (parameters + saved activations)
    steps: int = 20  # optimizer steps per stage (one per batch)
    warmup_steps: int = 3  # steps left out of the throughput window
    micro_batches: int = 4  # BP engines: micro-batches per batch
    max_in_flight: int = 2  # decoupled engine: sends not yet completed before a stage waits
    seed: int = 0  # seeded before every builder call, so every process builds the same initial weights
    train: TrainConfig = field(default_factory=TrainConfig)
    device: str = "cpu"  # cpu | cuda (stage r uses cuda:LOCAL_RANK)
    threads: int = 1  # torch threads per stage process (one CPU stage process stands for one device)
    pin_cpu: bool = True  # CPU: give each local stage process its own cores (`threads` of them) when there are enough
    timeout_s: float = 120.0  # longest wait for any single message
    dead_after_s: float = 10.0  # a stage silent this long is declared dead
    stall_after_s: float = 15.0  # a live stage making no training progress this long (or 10× its slowest step)
    host: str = "127.0.0.1"
    port: int | None = None  # spawn mode: rendezvous port (None: a free one)
    checkpoint: str | None = None  # write the trained model here (zoo.checkpoints format)
    fault: str | None = None  # testing: "STAGE:STEP:raise|kill|hang" injects a failure
    verbose: bool = True
    profile_repeats: int = 3  # timed repeats per block when profiling the partition


# -- model and data ---------------------------------------------------------------------------------------------
def build(cfg: PipelineConfig, builder: Builder, method: str | None = None) -> DecoupledModel:
    """A fresh model from `builder`, seeded with `cfg.seed` so every process gets the same initial weights."""
    seed_everything(cfg.seed)
    return builder(method=method or cfg.method)


def batch_size_of(batches: Batches) -> int:
    return int(batches[0][0].shape[0])


def synthetic_batches(
    batch_size: int, num_batches: int = 8, img_size: int = 32, num_classes: int = 10, task: str = "cls", seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images and labels (per pixel for seg), the same in every process for the same seed."""
    g = torch.Generator().manual_seed(seed + 1)
    xs = [torch.randn(batch_size, 3, img_size, img_size, generator=g) for _ in range(num_batches)]
    shape = (batch_size,) if task == "cls" else (batch_size, img_size, img_size)
    return [(x, torch.randint(0, num_classes, shape, generator=g)) for x in xs]


def _flatten(feats: Sequence[torch.Tensor | Features]) -> list[torch.Tensor]:
    """Block outputs as the flat tensor list a message carries (a `Features` gives each member)."""
    return [t for f in feats for t in (f if isinstance(f, Features) else (f,))]


def _unflatten(tensors: Sequence[torch.Tensor], arity: Sequence[int]) -> list[torch.Tensor | Features]:
    """Inverse of `_flatten`, given how many tensors each output holds (1: a plain tensor)."""
    if sum(arity) != len(tensors):
        raise RuntimeError(f"expected {sum(arity)} feature tensors ({list(arity)}), got {len(tensors)}")
    out, i = [], 0
    for n in arity:
        out.append(tensors[i] if n == 1 else Features(tensors[i : i + n]))
        i += n
    return out


def _cycle(batches: Batches, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    return itertools.islice(itertools.cycle(batches), steps)


def pin_cpu(cfg: PipelineConfig, local_rank: int, local_world: int) -> list[int] | None:
    """Pin this thread (and the threads it starts later) to its own `cfg.threads` cores, so one CPU stage process
    really is one device: without it the scheduler moves the stages (and gloo's threads) between cores.
    Returns the cores, or None when pinning is off, not CPU, or there are fewer cores than stages need."""
    if not cfg.pin_cpu or cfg.device != "cpu" or not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if local_world * cfg.threads > len(cores):
        return None
    mine = cores[local_rank * cfg.threads : (local_rank + 1) * cfg.threads]
    os.sched_setaffinity(0, mine)
    return mine


def _fault(cfg: PipelineConfig, rank: int, step: int) -> None:
    if not cfg.fault:
        return
    stage, at, kind = cfg.fault.split(":")
    if int(stage) != rank or int(at) != step:
        return
    if kind == "kill":
        os.kill(os.getpid(), 9)
    if kind == "hang":
        time.sleep(3600)
    raise RuntimeError(f"injected fault at step {step}")


def _mark(wd: Watchdog | None, what: str | None, waiting: bool = False) -> None:
    if wd is not None:
        wd.mark(what, waiting)


def _window(ends: list[float], warmup: int) -> tuple[float, int]:
    """Seconds and steps of the steady-state window: from the end of step `warmup-1` to the end of the last."""
    w = min(max(warmup, 1), len(ends) - 1)
    return ends[-1] - ends[w - 1], len(ends) - w


# -- decoupled schedule ------------------------------------------------------------------------------------------
@dataclass
class Replicas:
    """This process's place among a stage's replicas: global rank = stage · count + index; `group` is the stage's
    data-parallel process group (None without replicas)."""

    index: int = 0
    count: int = 1
    group: Any = None
    loss: str = "global"

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.count == 1 else t.chunk(self.count)[self.index]


def _update(losses, opts, lrs, groups, grad_clip, rep: Replicas) -> None:
    """zoo.train.update, with the gradients averaged over the stage's replicas between backward and step."""
    average = None
    if rep.count > 1:
        average = lambda: average_grads([p for g in groups for p in g], rep.group, rep.count)  # noqa: E731
    update(losses, opts, lrs, groups, grad_clip, after_backward=average)


def stage_decoupled(
    cfg: PipelineConfig,
    builder: Builder,
    batches: Batches,
    rank: int,
    world: int,
    sizes: list[int],
    link: Link,
    rep: Replicas | None = None,
) -> dict[str, Any]:
    """Train stage `rank` of `world` stages with the decoupled schedule (as replica `rep.index` of its stage when
    stages are replicated); returns its statistics and final state. Frozen blocks (zoo.grow) run forward only."""
    if cfg.method not in LOCAL_METHODS:
        raise ValueError(f"the decoupled engine needs a local method ({', '.join(LOCAL_METHODS)}), got {cfg.method!r}")
    rep = rep or Replicas()
    device = link.device
    model = build(cfg, builder)
    optims, scheds = build_optimizers(model, replace(cfg.train, per_block=True), cfg.steps)
    mine = stage_slices(sizes)[rank]
    # optimizers and parameter groups exist for the trained blocks only (frozen ones have none)
    index = {k: i for i, k in enumerate(model.trained_blocks())}
    trained = [k for k in mine if k in index]
    blocks = [model.blocks[k].to(device).train() for k in mine]
    opts, lrs = [optims[index[k]] for k in trained], [scheds[index[k]] for k in trained]
    groups = [model.param_groups()[index[k]] for k in trained]
    if rep.count > 1 and rep.loss == "global":
        for b in blocks:
            sync_bn(b, rep.group)
            if b.head is not None and hasattr(b.head, "_combine"):
                gather_losses(b.head, rep.group)
    skips_out = any(b.takes_skips for b in model.blocks[mine.stop :])
    # how many tensors each received feature holds: x, then the outputs of the blocks before this stage (all of them
    # when this stage or a later one holds the decoder that reads skips, else the last)
    arity = [1] + [b.num_outputs for b in model.blocks[: mine.start]]
    if not any(b.takes_skips for b in model.blocks[mine.start :]):
        arity = arity[-1:]
    method = model.method
    rng_seed = torch.initial_seed()  # build() seeded cfg.seed: the same base as a single-process Trainer's
    del model, optims, scheds  # keep only this stage's blocks
    first, last = rank == 0, rank == world - 1
    prev, nxt = (rank - 1) * rep.count + rep.index, (rank + 1) * rep.count + rep.index  # global ranks
    source = _cycle(batches, cfg.steps) if first else None
    # tensors counted in one warm-up step (the second), as on one device (zoo.memory.measure_train_step)
    mem = StepMemory(device, torch.nn.ModuleList(blocks), opts, at=min(1, cfg.steps - 1))
    wd = link.watchdog
    compute, ends = [], []
    for t in range(cfg.steps):
        _mark(wd, f"computing step {t}")
        _fault(cfg, rank * rep.count + rep.index, t)
        if first:
            x, y = next(source)
            x, y = rep.shard(x), rep.shard(y)
            feats, y = [x.to(device, non_blocking=True)], y.to(device, non_blocking=True)
        else:
            msg = link.recv(prev, f"micro-batch {t}")
            if msg.kind != DATA or msg.step != t:
                raise RuntimeError(f"stage {rank}: expected micro-batch {t}, got kind {msg.kind} step {msg.step}")
            feats, y = _unflatten(msg.tensors[:-1], arity), msg.tensors[-1]
        t0 = time.perf_counter()
        with mem.step(t, [f for f in (*feats, y) if torch.is_tensor(f)]):
            losses = []
            for k, block in zip(mine, blocks):
                # the same forward, on the same RNG stream, as block k's in a single-process Trainer step
                res = forward_block(block, k, feats, y, (rng_seed, t))
                if res is None:  # frozen (forward only) or without a head
                    continue
                loss = res[0]
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(k, method, t, float(loss))
                losses.append(loss)
            if losses:
                _update(losses, opts, lrs, groups, cfg.train.grad_clip, rep)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        compute.append(time.perf_counter() - t0)
        if wd is not None:
            wd.step_done(compute[-1])
        if not last:
            out = feats if skips_out else feats[-1:]
            link.send(nxt, DATA, t, [f.detach() for f in _flatten(out)] + [y])
        ends.append(time.perf_counter())
    # The window ends when the last send is issued, as it starts: in steady state a stage is always up to
    # `max_in_flight` sends ahead of its successor, so timing the final flush would charge it that many extra steps.
    link.flush()
    _mark(wd, None)  # gathering the final state is not a training step
    if rep.count > 1 and rep.loss == "shard":
        for b in blocks:
            average_buffers(b, rep.group, rep.count)  # each replica's BatchNorm saw only its shard
    stats = _stage_stats(cfg, rank, "deinforeg", batch_size_of(batches), compute, ends, link, mem)
    stats.update(stage=rank, replica=rep.index)
    if rep.index > 0:  # every replica holds the same weights: replica 0 reports them
        return stats
    return stats | {
        "blocks": list(mine),
        "state": {k: b.state_dict() for k, b in zip(mine, blocks)},
        "optimizers": {k: o.state_dict() for k, o in zip(trained, opts)},
        "schedulers": {k: s.state_dict() for k, s in zip(trained, lrs)},
    }


def _stage_stats(cfg, rank, engine, batch_size, compute, ends, link, mem: StepMemory) -> dict[str, Any]:
    wall, n = _window(ends, cfg.warmup_steps)
    w = len(ends) - n
    busy = sum(compute[w:])
    log = link.stats.log[w:] if link is not None else []
    return {
        "rank": rank,
        "engine": engine,
        "window_s": wall,
        "window_steps": n,
        "samples_per_s": n * batch_size / wall if wall > 0 else float("nan"),
        "compute_s_per_step": busy / n,
        "busy": busy / wall if wall > 0 else float("nan"),
        "idle_s_per_step": sum(a for a, _ in log) / n if log else 0.0,
        "comm_s_per_step": (link.stats.transfer_s / len(ends)) if link is not None else float("nan"),
        "blocked_s_per_step": (link.stats.blocked_s / len(ends)) if link is not None else 0.0,
        "recv_transfer_s_per_step": sum(b for _, b in log) / n if log else 0.0,
        "bytes_received_per_step": (link.stats.bytes_received / len(ends)) if link is not None else 0,
        "bytes_sent": link.stats.bytes_sent if link is not None else 0,
        "bytes_sent_per_step": (link.stats.bytes_sent / len(ends)) if link is not None else 0,
        "peak_mem_mb": mem.peak_mb(),  # zoo.memory: tensors counted in one warm-up step, as in --bench memory
        "mem_kind": mem.kind,
        "steps": len(ends),
    }


# -- single-process references -----------------------------------------------------------------------------------
def run_single(cfg: PipelineConfig, builder: Builder, batches: Batches, method: str) -> dict[str, Any]:
    """Train in this process with zoo.train.Trainer (BP or sequential decoupled blocks) on the same model and
    batches as the pipeline; returns its statistics ("stats"), the trained "model" and the "trainer".

    Runs as one device (`cfg.threads` threads, pinned on CPU); the caller's thread count and cores are restored.
    """
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    threads = torch.get_num_threads()
    pin_cpu(cfg, 0, 1)
    torch.set_num_threads(cfg.threads)
    try:
        device = torch.device(cfg.device)
        model = build(cfg, builder, method)
        trainer = Trainer(model, cfg.train, cfg.steps, device)
        ends, compute = [], []
        mem = StepMemory(device, model, trainer.optimizers, at=min(1, cfg.steps - 1))
        for t, (x, y) in enumerate(_cycle(batches, cfg.steps)):
            t0 = time.perf_counter()
            with mem.step(t, (x, y)):
                trainer.train_step(x, y)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            compute.append(time.perf_counter() - t0)
            ends.append(time.perf_counter())
    finally:
        torch.set_num_threads(threads)
        if cores is not None:
            os.sched_setaffinity(0, cores)
    stats = _stage_stats(cfg, 0, f"{method}-single", batch_size_of(batches), compute, ends, None, mem)
    stats.update(comm_s_per_step=0.0)
    return {"stats": stats, "model": model, "trainer": trainer}


def pack(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
