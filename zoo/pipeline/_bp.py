"""The BP baselines: the same blocks without local heads (`method="bp"`), trained end to end over
`torch.distributed.pipelining` on the decoupled pipeline's partition.

One stage per rank: `ScheduleGPipe`, `Schedule1F1B`. Two virtual stages per rank, backward split into input and
weight gradients: `ScheduleInterleavedZeroBubble` (ZB1P, looped placement: rank r holds stages r and r+W) and
`ScheduleZBVZeroBubble`, `ScheduleDualPipeV` (V placement: rank r holds stages r and 2W-1-r), from Qi et al.,
"Zero Bubble Pipeline Parallelism" (arXiv 2401.10241) and DeepSeek-V3's DualPipe (arXiv 2412.19437). Their 2W
virtual stages halve each rank's blocks of the partition, in model order, so every rank computes about the blocks
it would under GPipe.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from ..decoupled import Features, deepest
from ..memory import StepMemory
from ..train import build_optimizers
from ._comm import Watchdog
from .engine import Batches, Builder, PipelineConfig, _cycle, _fault, _mark, _stage_stats, batch_size_of, build
from .partition import stage_slices

__all__ = ["MULTI_STAGE", "SINGLE_STAGE", "stage_bp", "virtual_stages"]

SINGLE_STAGE = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B"}
# engine -> (schedule class, placement of the 2W virtual stages: "loop" or "v")
MULTI_STAGE = {
    "zb-interleaved": ("ScheduleInterleavedZeroBubble", "loop"),
    "zbv": ("ScheduleZBVZeroBubble", "v"),
    "dualpipev": ("ScheduleDualPipeV", "v"),
}


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose gradient is made contiguous: pipelining allocates the upstream receive buffer with the
    gradient's strides, and gloo refuses non-contiguous buffers."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.contiguous()


class _BPStage(nn.Module):
    """Consecutive BP blocks; passes the skip features on as extra outputs when a later block reads them.

    Pipelining sends flat tensors only: a block output that is a `Features` (a seg block of several stages) travels
    as its members, and `in_layout` (tensors per incoming feature, x first) rebuilds it on the receiving stage.
    """

    def __init__(self, blocks: list[nn.Module], skips_out: bool, in_layout: list[int] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.skips_out = skips_out
        self.in_layout = list(in_layout or [1])

    def forward(self, *flat: torch.Tensor):
        flat = tuple(_ContiguousGrad.apply(f) if f.requires_grad else f for f in flat)
        feats: list[torch.Tensor | Features] = []
        for n in self.in_layout:
            feats.append(flat[0] if n == 1 else Features(flat[:n]))
            flat = flat[n:]
        for b in self.blocks:
            feats.append(b(feats))
        # gloo sends only contiguous tensors
        if self.skips_out:
            return tuple(t.contiguous() for f in feats for t in (f if isinstance(f, Features) else (f,)))
        return deepest(feats[-1]).contiguous()


def _in_layout(blocks: list[nn.Module], start: int) -> list[int]:
    """Tensors per feature a stage starting at block `start` receives: x and every earlier block's output when a
    block from `start` on reads skips (the previous stage sends them all), else the one tensor it reads."""
    if start == 0 or not any(b.takes_skips for b in blocks[start:]):
        return [1]
    return [1] + [b.num_outputs for b in blocks[:start]]


class _Params:
    """Duck-typed `param_groups()` holder so zoo.train.build_optimizers builds the stage's optimizer."""

    def __init__(self, params: list[nn.Parameter]):
        self._params = params

    def param_groups(self) -> list[list[nn.Parameter]]:
        return [self._params]


def virtual_stages(engine: str, sizes: list[int]) -> tuple[list[range], dict[int, list[int]]]:
    """The pipeline stages `engine` runs on partition `sizes` (blocks per rank): their block ranges in model
    order, and rank -> the stage indices it holds. One stage per rank for GPipe / 1F1B; for the zero-bubble
    schedules each rank's blocks are halved (the first half gets the odd block) into 2W stages, placed looped or V."""
    ranges = stage_slices(sizes)
    world = len(sizes)
    if engine not in MULTI_STAGE:
        return [range(s.start, s.stop) for s in ranges], {r: [r] for r in range(world)}
    if min(sizes) < 2:
        raise ValueError(
            f"{engine} runs 2 pipeline stages per rank, so every rank needs at least 2 blocks; partition {sizes} "
            f"gives a rank {min(sizes)} (build the model with more blocks, --num-blocks)"
        )
    chunks = []
    for s in ranges:
        mid = s.start + (len(s) + 1) // 2
        chunks += [range(s.start, mid), range(mid, s.stop)]
    n = 2 * world
    if MULTI_STAGE[engine][1] == "loop":
        place = {r: [r, r + world] for r in range(world)}
    else:
        place = {r: [r, n - 1 - r] for r in range(world)}
    return chunks, place


def stage_bp(
    cfg: PipelineConfig,
    builder: Builder,
    batches: Batches,
    rank: int,
    world: int,
    sizes: list[int],
    device: torch.device,
    watchdog: Watchdog | None = None,
) -> dict[str, Any]:
    """Train this rank's BP stages over the partition with `cfg.engine`'s schedule; returns the statistics and the
    trained blocks' weights (so the launcher's result model is the trained BP model)."""
    import torch.distributed.pipelining as pp

    model = build(cfg, builder, "bp")
    chunks, place = virtual_stages(cfg.engine, sizes)
    n = len(chunks)
    mine = place[rank]
    mods, stages, held = [], [], []
    for v in mine:
        skips_out = any(b.takes_skips for b in model.blocks[chunks[v].stop :])
        layout = _in_layout(list(model.blocks), chunks[v].start)
        mod = _BPStage([model.blocks[k] for k in chunks[v]], skips_out, layout).to(device).train()
        mods.append(mod)
        stages.append(pp.PipelineStage(mod, v, n, device))
        held += list(chunks[v])
    first, last = 0 in mine, n - 1 in mine
    head = model.blocks[-1].head.to(device) if last else None
    params = [p for m in mods for p in m.parameters() if p.requires_grad]  # the last block's task head included
    blocks = {k: model.blocks[k] for k in held}
    skips_in = any(b.takes_skips for b in model.blocks)
    del model
    (opt,), (lr,) = build_optimizers(_Params(params), replace(cfg.train, per_block=False), cfg.steps)
    sent = [0]
    owner = {v: r for r, vs in place.items() for v in vs}
    for v, mod in zip(mine, mods):
        if v != n - 1 and owner[v + 1] != rank:  # the V placement passes stage W-1's output on within the rank
            mod.register_forward_hook(lambda m, a, o: sent.__setitem__(0, sent[0] + _out_bytes(o)))

    def loss_fn(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return head.loss(h, y)[0]

    # every stage needs the loss_fn (only the last calls it): without one a schedule runs forward only
    if cfg.engine in SINGLE_STAGE:
        schedule = getattr(pp, SINGLE_STAGE[cfg.engine])(stages[0], n_microbatches=cfg.micro_batches, loss_fn=loss_fn)
    else:
        schedule = getattr(pp, MULTI_STAGE[cfg.engine][0])(stages, n_microbatches=cfg.micro_batches, loss_fn=loss_fn)
    compute, ends = [], []
    mem = StepMemory(device, torch.nn.ModuleList(list(blocks.values())), [opt], at=min(1, cfg.steps - 1))
    for t, (x, y) in enumerate(_cycle(batches, cfg.steps)):
        _mark(watchdog, f"starting step {t}")
        _fault(cfg, rank, t)
        # inside the schedule computing and waiting for neighbours look the same from here: counted as waiting
        _mark(watchdog, f"in step {t} of the {cfg.engine} schedule (torch.distributed.pipelining)", waiting=True)
        c0, w0 = time.process_time(), time.perf_counter()
        opt.zero_grad(set_to_none=True)
        sent[0] = 0
        if first and skips_in:
            x = x.requires_grad_(True)  # x travels on as a skip feature; pipelining sends gradients for every output
        args = (x.to(device),) if first else ()
        with mem.step(t, [*args, y]):
            if last:
                schedule.step(*args, target=y.to(device), losses=[])
            else:
                schedule.step(*args)
            opt.step()
            lr.step()
        # one thread per stage: process CPU time is the busy time (gloo's transport threads add a little)
        compute.append(time.process_time() - c0)
        ends.append(time.perf_counter())
        if watchdog is not None:
            watchdog.step_done(ends[-1] - w0)
    _mark(watchdog, None)
    stats = _stage_stats(cfg, rank, cfg.engine, batch_size_of(batches), compute, ends, None, mem)
    per_step = 2 * sent[0]  # activations forward, the same bytes of gradients back, over every micro-batch
    stats.update(bytes_sent=per_step * len(ends), bytes_sent_per_step=per_step, comm_s_per_step=float("nan"))
    return stats | {"blocks": sorted(held), "state": {k: b.state_dict() for k, b in blocks.items()}}


def _out_bytes(o) -> int:
    ts = o if isinstance(o, tuple) else (o,)
    return sum(t.numel() * t.element_size() for t in ts)
