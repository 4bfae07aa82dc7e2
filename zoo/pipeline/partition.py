"""Profile each block's training step and split the blocks into stages that minimise the slowest stage.

A unit is one block of a DecoupledModel (body + local head): its cost is forward + local loss + backward +
optimizer step at the run's batch size, its memory the parameters, optimizer state and the activations autograd
saves, its link cost the bytes it hands to the next block. Stages are contiguous runs of units; the split minimises
the slowest stage's time (compute + sending its output over the link), not the number of layers per stage.

`balance="memory"` balances memory instead (InfoPro's memory-balanced variant, Wang et al., ICLR 2021): each unit's
activation memory (what its forward keeps alive for the backward, counted by `zoo.memory`'s tracker) decides the
cuts, so that the largest block, which sets the training peak under block-by-block backward, is as small as it
can be.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn

from ..decoupled import DecoupledModel, Features
from ..errors import UserError
from ..memory import MemoryTracker
from ..train import TrainConfig, build_optimizers

__all__ = [
    "BALANCES",
    "BlockCuts",
    "UnitMemory",
    "block_peak",
    "UnitProfile",
    "Partition",
    "balanced_split",
    "check_balance",
    "choose_blocks",
    "choose_cuts",
    "partition_units",
    "profile_units",
    "stage_slices",
    "unit_memory",
]

BALANCES = ("time", "memory")


def check_balance(balance: str) -> str:
    if balance not in BALANCES:
        raise UserError(f"unknown balance {balance!r}; valid choices: {', '.join(BALANCES)}")
    return balance


@dataclass
class UnitProfile:
    """Measured cost of one block at one batch size."""

    seconds: float  # forward + loss + backward + optimizer step (median)
    param_bytes: int
    activation_bytes: int  # saved for backward during one step
    out_bytes: int  # what the next block receives (activation, plus skip features when a later block reads them)
    head_seconds: float = 0.0  # the local head's share of `seconds` (forward + loss + backward)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class UnitMemory:
    """What one block's training step holds, in bytes (zoo.memory's tensor count), measured on its own: what its
    forward keeps for the backward, and how far its backward climbs over that."""

    body_bytes: int  # the body's saved tensors and its output
    head_bytes: int  # the local head's saved tensors and loss
    in_bytes: int = 0  # its input (the previous block's output, or the batch), alive while it trains
    out_bytes: int = 0  # its output (the next block's input)
    backward_bytes: int = 0  # the backward's peak over the saved tensors (gradients of activations and weights)
    grad_bytes: int = 0  # the body's weight gradients, alive once its backward ran
    head_grad_bytes: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def block_peak(mems: Sequence[UnitMemory], start: int, stop: int) -> int:
    """Predicted peak growth of training units start..stop-1 as one block (block-by-block backward) over the model's
    state: while unit i's backward runs, its input, the saved tensors of units up to i (the head's too for the last
    unit), its backward's climb and the weight gradients of the units after it; the weight gradients of the blocks
    before it are alive throughout."""
    units = mems[start:stop]
    base, last = units[0].in_bytes + sum(m.grad_bytes for m in mems[:start]), units[-1]
    saved = list(itertools.accumulate(m.body_bytes for m in units))
    later = list(itertools.accumulate((m.grad_bytes for m in reversed(units)), initial=0))[::-1]  # units after i
    head = last.head_bytes
    return max(
        base + saved[i] + m.backward_bytes + (head if i == len(units) - 1 else later[i + 1] + last.head_grad_bytes)
        for i, m in enumerate(units)
    )


@dataclass
class Partition:
    """Blocks per stage, and the predicted time of each stage's step."""

    sizes: list[int]
    predicted_s: list[float]
    memory_bytes: list[int]

    @property
    def bottleneck_s(self) -> float:
        return max(self.predicted_s)

    def describe(self) -> str:
        parts, start = [], 0
        for k, (n, t, m) in enumerate(zip(self.sizes, self.predicted_s, self.memory_bytes, strict=True)):
            blocks = f"block {start + 1}" if n == 1 else f"blocks {start + 1}-{start + n}"
            parts.append(f"stage {k}: {blocks}, predicted {t * 1e3:.1f} ms/step, ~{m / 2**20:.0f} MiB")
            start += n
        return "\n".join(parts)


def stage_slices(sizes: Sequence[int]) -> list[range]:
    """Block indices of each stage."""
    out, start = [], 0
    for n in sizes:
        out.append(range(start, start + n))
        start += n
    return out


def _bytes(tensors) -> int:
    """Bytes of `tensors`; a member that is a `Features` (a seg block holding several stages) counts each feature."""
    return sum(_bytes(t) if isinstance(t, Features) else t.numel() * t.element_size() for t in tensors)


@torch.no_grad()
def _zero(params: list[nn.Parameter]) -> None:
    for p in params:
        p.grad = None


def profile_units(
    model: DecoupledModel,
    x: torch.Tensor,
    y: torch.Tensor,
    train_cfg: TrainConfig | None = None,
    repeats: int = 3,
    warmup: int = 1,
) -> list[UnitProfile]:
    """Time every block's training step (with `train_cfg`'s optimizer, if given) on batch (x, y).

    Runs on a deep copy, so the caller's weights and optimizer state are untouched.
    """
    if model.method == "bp":
        raise ValueError("profile_units needs a model with a head per block (a decoupled method), not 'bp'")
    model = copy.deepcopy(model).train()
    optimizers = build_optimizers(model, replace(train_cfg, per_block=True), 1000)[0] if train_cfg else None
    feats = [x]
    later_skips = [any(b.takes_skips for b in model.blocks[k + 1 :]) for k in range(model.num_blocks)]
    out: list[UnitProfile] = []
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for k, block in enumerate(model.blocks):
        params = [p for p in block.parameters() if p.requires_grad]
        inputs = [f.detach() for f in feats]
        saved = [0]

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved[0] += t.numel() * t.element_size()
            return t

        times = []
        for r in range(warmup + repeats):
            saved[0] = 0
            sync()
            t0 = time.perf_counter()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                h = block(inputs)
                loss = block.head.loss(h, y)[0]
            loss.backward()
            if optimizers is not None:
                optimizers[k].step()
            _zero(params)
            sync()
            if r >= warmup:
                times.append(time.perf_counter() - t0)
        feats.append(h.detach())
        hd = h.detach()  # the head's input as a leaf, every member of a `Features` (a block of several seg stages)
        hd = Features(t.requires_grad_() for t in hd) if isinstance(hd, Features) else hd.requires_grad_()
        head_times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            block.head.loss(hd, y)[0].backward()
            sync()
            head_times.append(time.perf_counter() - t0)
        _zero(params)
        state = 0
        if optimizers is not None:
            state = sum(_bytes(v for v in st.values() if torch.is_tensor(v)) for st in optimizers[k].state.values())
        sent = [x, *feats[1:]] if later_skips[k] else [h]
        out.append(
            UnitProfile(
                seconds=statistics.median(times),
                param_bytes=2 * _bytes(params) + state,  # weights + gradients + optimizer state
                activation_bytes=saved[0],
                out_bytes=_bytes(sent),
                head_seconds=statistics.median(head_times),
            )
        )
    return out


def _keep(saved: list[torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A pack hook that lists what autograd saves (and saves it as is)."""

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    return pack


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _tensors(h: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(h) if isinstance(h, (tuple, list)) else [h]


def unit_memory(model: DecoupledModel, x: torch.Tensor, y: torch.Tensor) -> list[UnitMemory]:
    """Memory of every block of `model` (a decoupled method) trained alone on batch (x, y), counted with zoo.memory's
    tracker: what its body's forward, then its head's, keep alive (saved tensors; the temporaries a forward frees
    again do not count), and how far its backward climbs over that (tracked from the tensors autograd saved, so
    their frees during the backward count). A block after the first computes the gradient of its input too, as
    inside a merged block (an upper bound for a block's first unit). Runs on a deep copy: the caller's weights and
    BatchNorm statistics are untouched."""
    if model.method == "bp":
        raise ValueError("unit_memory needs a model with a head per block (a decoupled method), not 'bp'")
    model = copy.deepcopy(model).train()
    feats, out = [x], []
    dev = x.device
    for k, block in enumerate(model.blocks):
        inputs = [f.detach() for f in feats]
        if k > 0 and torch.is_tensor(inputs[-1]) and inputs[-1].is_floating_point():
            inputs[-1].requires_grad_()
        saved: list[torch.Tensor] = []
        with torch.autograd.graph.saved_tensors_hooks(_keep(saved), _same):
            with MemoryTracker(dev) as body:
                h = block(inputs)
            with MemoryTracker(dev) as head:
                loss = block.head.loss(h, y)[0]
        with MemoryTracker(dev, inputs=saved) as back:
            saved.clear()  # the graph alone holds them now: their frees during the backward count
            loss.backward()
        out.append(
            UnitMemory(
                body.end_growth_bytes,
                head.end_growth_bytes,
                in_bytes=_bytes(inputs[-1:]) if torch.is_tensor(inputs[-1]) else 0,
                out_bytes=_bytes(_tensors(h)),
                backward_bytes=back.peak_growth_bytes,
                grad_bytes=_bytes(p for p in block.body.parameters() if p.requires_grad),
                head_grad_bytes=_bytes(p for p in block.head.parameters() if p.requires_grad),
            )
        )
        feats.append(h.detach())
        del h, loss  # frees this block's graph before the next one runs, as training does
        block.zero_grad(set_to_none=True)
    return out


def balanced_split(costs: Sequence[float], stages: int, link: Sequence[float] | None = None) -> list[int]:
    """Contiguous split of `costs` into `stages` groups minimising the largest group cost.

    `link[i]` is the time to hand unit i's output to the next stage, charged to a stage that ends at unit i.
    Dynamic programming over (units, stages); ties prefer the earlier cut.
    """
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} blocks into {stages} stages (each stage needs at least one block)")
    link = list(link) if link is not None else [0.0] * n
    # no link cost after the last unit
    return _min_max_split(costs, stages, [link[i] if i < n - 1 else 0.0 for i in range(n)])


def _min_max_split(costs: Sequence[float], stages: int, end: Sequence[float]) -> list[int]:
    """Sizes of the contiguous split of `costs` into `stages` groups minimising the largest group cost, a group
    that ends at unit j paying `end[j]` besides its units. Dynamic programming over (units, stages); ties prefer
    the earlier cut."""
    n = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for j in range(s, n + 1):
            for i in range(s - 1, j):
                v = max(best[s - 1][i], prefix[j] - prefix[i] + end[j - 1])
                if v < best[s][j] - 1e-12:
                    best[s][j], cut[s][j] = v, i
    sizes, j = [], n
    for s in range(stages, 0, -1):
        i = cut[s][j]
        sizes.append(j - i)
        j = i
    return sizes[::-1]


def _min_max_groups(n: int, groups: int, cost: Callable[[int, int], float]) -> list[int]:
    """Sizes of the contiguous split of n units into `groups` groups minimising the largest `cost(start, stop)`.
    Dynamic programming over (units, groups); ties prefer the earlier cut."""
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(groups + 1)]
    cut = [[0] * (n + 1) for _ in range(groups + 1)]
    best[0][0] = 0.0
    for s in range(1, groups + 1):
        for j in range(s, n + 1):
            for i in range(s - 1, j):
                v = max(best[s - 1][i], cost(i, j))
                if v < best[s][j] - 1e-12:
                    best[s][j], cut[s][j] = v, i
    sizes, j = [], n
    for s in range(groups, 0, -1):
        i = cut[s][j]
        sizes.append(j - i)
        j = i
    return sizes[::-1]


def partition_units(
    profiles: Sequence[UnitProfile], stages: int, bandwidth_bytes_s: float | None = None, balance: str = "time"
) -> Partition:
    """Split profiled units into `stages` stages; `bandwidth_bytes_s` charges each stage for sending its output.
    `balance="memory"` balances each stage's parameters, optimizer state and saved activations instead of time."""
    if check_balance(balance) == "memory":
        costs = [float(p.param_bytes + p.activation_bytes) for p in profiles]
        link = [0.0] * len(profiles)
    else:
        costs = [p.seconds for p in profiles]
        link = [p.out_bytes / bandwidth_bytes_s if bandwidth_bytes_s else 0.0 for p in profiles]
    sizes = balanced_split(costs, stages, link)
    pred, mem = [], []
    for k, r in enumerate(stage_slices(sizes)):
        t = sum(profiles[i].seconds for i in r) + (link[r[-1]] if k < stages - 1 else 0.0)
        pred.append(t)
        mem.append(sum(profiles[i].param_bytes + profiles[i].activation_bytes for i in r))
    return Partition(sizes, pred, mem)


@dataclass
class BlockCuts:
    """Where to cut a model's fine units (e.g. every residual block) into decoupled blocks, and their stages."""

    units_per_block: list[int]  # fine units merged into each block (one local head at the end of each)
    blocks_per_stage: list[int]
    predicted_s: list[float]  # per stage: its units' bodies + its blocks' heads + sending its output (NaN: unmeasured)
    predicted_bytes: list[int] = field(default_factory=list)  # per block: saved activations (balance="memory")

    @property
    def bottleneck_s(self) -> float:
        return max(self.predicted_s)


def choose_cuts(
    body_s: Sequence[float], head_s: Sequence[float], stages: int, link: Sequence[float] | None = None
) -> BlockCuts:
    """Choose how many decoupled blocks to cut `len(body_s)` fine units into, and where, minimising the slowest of
    `stages` stages. `body_s[i]` is unit i's training step without a head, `head_s[i]` the cost of a local head
    placed after unit i (paid only where a block ends), `link[i]` sending unit i's output to the next stage.

    A stage must end where a block ends, and every extra block inside a stage only adds a head, so the fastest
    choice has one block per stage, cut at whichever unit boundaries balance the stages best: the natural cut
    points when they are balanced, finer ones inside a costly natural stage when that pays for the extra head.
    (More blocks than stages buy more local supervision, not speed: give them with `create_model(num_blocks=...)`.)
    """
    n = len(body_s)
    if len(head_s) != n:
        raise ValueError(f"{n} unit costs but {len(head_s)} head costs")
    if not 1 <= stages <= n:
        raise ValueError(f"cannot cut {n} units into {stages} stages (each stage needs at least one unit)")
    link = list(link) if link is not None else [0.0] * n
    # a stage of units i..j-1 is one block: its bodies, one head at j-1, and its output's link (not the last stage)
    costs = [float(b) for b in body_s]
    ends = [float(h) + (link[i] if i < n - 1 else 0.0) for i, h in enumerate(head_s)]
    sizes = _min_max_split(costs, stages, ends)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    pred = [prefix[r[-1] + 1] - prefix[r[0]] + ends[r[-1]] for r in stage_slices(sizes)]
    return BlockCuts(sizes, [1] * stages, pred)


def choose_blocks(
    model: DecoupledModel,
    x: torch.Tensor,
    y: torch.Tensor,
    stages: int,
    train_cfg: TrainConfig | None = None,
    repeats: int = 3,
    bandwidth_bytes_s: float | None = None,
    balance: str = "time",
) -> tuple[BlockCuts, list[UnitProfile] | list[UnitMemory]]:
    """Profile every block of `model`, built with one block per fine unit (e.g. `create_model(..., cut="block")`:
    every residual block), and choose where to cut the units into one decoupled block per stage (`choose_cuts`).
    Rebuild the model with `block_units=cuts.units_per_block` and run it on `stages` stages of one block each.

    `balance="memory"` measures each unit's memory instead (`unit_memory`, no timing) and cuts so that the largest
    block's predicted training peak (`block_peak`: its input, its units' saved tensors, the one head at its end, and
    the climb of each backward) is smallest; the cuts then give `predicted_bytes` per block (peak growth over the
    model's state), and the second value is the list of UnitMemory."""
    if check_balance(balance) == "memory":
        mems = unit_memory(model, x, y)
        if not 1 <= stages <= len(mems):
            raise ValueError(f"cannot cut {len(mems)} units into {stages} blocks (each block needs at least one unit)")
        sizes = _min_max_groups(len(mems), stages, lambda a, b: block_peak(mems, a, b))
        nbytes = [block_peak(mems, r[0], r[-1] + 1) for r in stage_slices(sizes)]
        return BlockCuts(sizes, [1] * stages, [float("nan")] * stages, nbytes), mems
    profiles = profile_units(model, x, y, train_cfg, repeats=repeats)
    body = [max(p.seconds - p.head_seconds, 0.0) for p in profiles]
    link = [p.out_bytes / bandwidth_bytes_s if bandwidth_bytes_s else 0.0 for p in profiles]
    return choose_cuts(body, [p.head_seconds for p in profiles], stages, link), profiles
