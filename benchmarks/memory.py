"""Memory bench core: the training peak of each method and K against BP, and the largest batch under a memory cap.

Decoupled training's single-device payoff: trained block by block (`TrainConfig.backward="blockwise"`), a model keeps
only one block's graph alive at a time, so its peak falls with K while BP's keeps the whole network's. InfoPro
(Wang et al., ICLR 2021) reports 0.62x BP's GPU memory at K = 2 and 0.37x at K = 4 (ResNet-110 on CIFAR-10), with
memory-balanced cuts; `balance="memory"` here chooses cuts the same way (zoo.pipeline.partition).

`--bench memory` (`runs`, `run`): BP, then each local method of `--methods` at each K of `--block-counts`, cut by
`--balance`, one real batch of `--batch-size` from the dataset; with `--memory-cap-mb`, also the largest batch that
fits the cap for BP and each local method at each K → `leaderboards/memory_<task>_<dataset>.csv`. A segmentation model
at K is the SMP adapter's own grouping (`num_blocks=K`: equal groups of its units, the cut the segmentation sweep
trains; K = 2 is InfoPro's), so its rows sit beside that sweep's mIoU; `--balance` applies to classifiers only.

Each figure is `zoo.memory.measure_train_step`: tensors counted (CPU: the profiler's allocator events; CUDA:
`max_memory_allocated`), split into parameters, gradients, optimizer state and activations, after one warm-up step
so the optimizer state exists. Counting tensors rather than the process makes the figure independent of the load on
the machine. Plain functions: `measure` (one method, one K, one batch), `largest_batch` (doubling, then bisection,
under a cap), `against_bp` (ratios) and `COLUMNS` for the rows a harness appends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from zoo.decoupled import DecoupledModel
from zoo.errors import UserError
from zoo.memory import measure_train_step
from zoo.pipeline.partition import check_balance, choose_blocks
from zoo.train import TrainConfig, Trainer

from .results import ENV_COLUMNS, SETUP_COLUMNS, append_rows, record_rows, setup_columns
from .settings import RunConfig

__all__ = [
    "COLUMNS",
    "Builder",
    "against_bp",
    "choose_units",
    "largest_batch",
    "measure",
    "prepare",
    "run",
    "runs",
    "state_floor_mb",
]

# what a memory row holds besides the setup and the environment
COLUMNS = (
    *SETUP_COLUMNS,
    "batch_size",
    "balance",
    "backward",
    "units_per_block",
    "peak_mb",
    "parameters_mb",
    "gradients_mb",
    "optimizer_mb",
    "activations_mb",
    "ratio_vs_bp",
    "memory_cap_mb",
    "largest_batch",
    "mem_kind",
    *ENV_COLUMNS,
    "run_id",
)

# `build(method, **kw)` → a fresh model; kw is `num_blocks=K`, or `cut="block"` with `block_units` for chosen cuts
Builder = Callable[..., DecoupledModel]
Batch = tuple[torch.Tensor, torch.Tensor]


def choose_units(
    build: Builder, batch: Batch, method: str, num_blocks: int, balance: str, train: TrainConfig | None = None
) -> list[int]:
    """Units (e.g. residual blocks, `cut="block"`) per block of the `num_blocks` cuts that balance time or memory."""
    fine = build(method, cut="block")
    cuts, _ = choose_blocks(fine, *batch, num_blocks, train, repeats=1, balance=check_balance(balance))
    return cuts.units_per_block


def _model(build: Builder, method: str, num_blocks: int | None, units: Sequence[int] | None) -> DecoupledModel:
    if method == "bp":
        return build(method)  # one loss, one backward: where the blocks are cut changes nothing
    if units is not None:
        return build(method, cut="block", block_units=list(units))
    return build(method) if num_blocks is None else build(method, num_blocks=num_blocks)


def measure(
    build: Builder,
    batch: Batch,
    method: str,
    num_blocks: int | None = None,
    balance: str | None = "memory",
    backward: str = "blockwise",
    train: TrainConfig | None = None,
    units: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Training peak of `method` with `num_blocks` blocks on `batch`, as a row's bench columns.

    `balance` ("time" or "memory") cuts the units of `build(method, cut="block")` into `num_blocks` balanced blocks
    (`choose_units`; `units` gives them directly); None keeps the builder's own cut (`build(method,
    num_blocks=num_blocks)`, e.g. natural stages or an SMP model's). BP is built once, uncut."""
    train = train or TrainConfig()
    if method != "bp" and units is None and balance is not None and num_blocks is not None:
        units = choose_units(build, batch, method, num_blocks, balance, train)
    model = _model(build, method, num_blocks, units)
    trainer = Trainer(model, replace(train, backward=backward), total_steps=10, device=device)
    mem = measure_train_step(trainer, *batch)
    bp = method == "bp"
    return {
        "method": method,
        "num_blocks": model.num_blocks,
        "batch_size": int(batch[0].shape[0]),
        "balance": "" if bp or units is None else (balance or ""),
        "backward": "" if bp else backward,
        "units_per_block": "" if bp or units is None else "+".join(map(str, units)),
        "peak_mb": mem.peak_mb,
        "parameters_mb": mem.parameters_mb,
        "gradients_mb": mem.gradients_mb,
        "optimizer_mb": mem.optimizer_mb,
        "activations_mb": mem.activations_mb,
        "mem_kind": mem.source,
    }


def against_bp(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with `ratio_vs_bp`: each peak over BP's of the same model (when rows name one) at the same batch size
    (empty where no BP row has them)."""
    key = lambda r: (r.get("model"), r["batch_size"])  # noqa: E731
    bp = {key(r): r["peak_mb"] for r in rows if r["method"] == "bp"}
    return [{**r, "ratio_vs_bp": r["peak_mb"] / bp[key(r)] if key(r) in bp else None} for r in rows]


def largest_batch(
    build: Builder,
    make_batch: Callable[[int], Batch],
    method: str,
    cap_mb: float,
    num_blocks: int | None = None,
    balance: str | None = "memory",
    train: TrainConfig | None = None,
    max_batch: int = 4096,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] = lambda s: None,
    cut_batch: int | None = None,
) -> dict[str, Any]:
    """The largest batch whose training peak fits `cap_mb`: doubling from the smallest batch the zoo trains on (2:
    a local loss needs batch statistics, and the task head checks labels the same way), then bisection. Returns
    `measure`'s row for it, with `memory_cap_mb` and `largest_batch`. A probe that the line through the last two
    measured peaks puts beyond 1.25x the cap is not run (it is taken as not fitting), so the bench never allocates far
    past the cap. UserError when even that first batch exceeds the cap. The cuts are chosen once, at `cut_batch` (the
    bench passes its `--batch-size`; default: the first batch): near a cap the activations outweigh the weights and
    optimizer state, as they do at a working batch and not at batch 2, where the balance lands elsewhere (on CUDA,
    resnet50 at 224 px: 6+10 at batch 2 against 3+13 at batch 64)."""
    if not cap_mb > 0:
        raise UserError(f"--memory-cap-mb must be positive, got {cap_mb}")
    start = 2
    units = None
    if method != "bp" and balance is not None and num_blocks is not None:
        units = choose_units(build, make_batch(cut_batch or start), method, num_blocks, balance, train)
    seen: dict[int, dict[str, Any]] = {}

    def fits(b: int) -> bool:
        if len(seen) >= 2:
            (b1, r1), (b2, r2) = sorted(seen.items())[-2:]
            slope = (r2["peak_mb"] - r1["peak_mb"]) / (b2 - b1)
            if r2["peak_mb"] + slope * (b - b2) > 1.25 * cap_mb:
                log(f"{method}: batch {b} predicted over 1.25x the cap, not run")
                return False
        seen[b] = measure(build, make_batch(b), method, num_blocks, balance, train=train, units=units, device=device)
        log(f"{method}: batch {b}: peak {seen[b]['peak_mb']:.1f} MB (cap {cap_mb:g})")
        return seen[b]["peak_mb"] <= cap_mb

    if not fits(start):
        raise UserError(
            f"--memory-cap-mb {cap_mb:g} is below what {method} needs at its smallest batch ({start}): "
            f"{seen[start]['peak_mb']:.1f} MB"
        )
    lo, hi = start, None
    while hi is None and lo < max_batch:
        b = min(2 * lo, max_batch)
        if fits(b):
            lo = b
        else:
            hi = b
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {**seen[lo], "memory_cap_mb": float(cap_mb), "largest_batch": lo}


class MemoryRun(NamedTuple):
    """One row of `--bench memory`: `num_blocks` None for BP (uncut), else K."""

    model: str
    method: str
    num_blocks: int | None
    largest: bool  # the largest batch under --memory-cap-mb, not the peak at --batch-size


def state_floor_mb(model: torch.nn.Module) -> float:
    """MB that any training step of `model` holds whatever its batch: its parameters and buffers and one gradient per
    parameter (the optimizer's state comes on top). A memory cap below it fits no batch."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return (2 * params + buffers) / 2**20


def prepare(cfg: RunConfig, given: set[str], note: Callable[[str, Any, str], None]) -> None:
    """`--balance` chooses the cuts of classifiers; a segmentation model at K is its adapter's grouping."""
    if cfg.task == "seg" and "balance" in given:
        raise UserError("--balance is for classifiers: a segmentation model at K is the SMP adapter's num_blocks=K "
                        "grouping (the cut the segmentation sweep trains)")  # fmt: skip


def runs(cfg: RunConfig) -> list[MemoryRun]:
    """BP, then each local method at each K (seg: the adapter's `num_blocks=K` grouping), then the same under the
    cap. A K the model cannot be cut into, or a cap below what the smallest of these models holds at any batch
    (`state_floor_mb`), is a UserError here, before anything runs; a cap between that and the smallest batch's peak
    is found when measured (also a UserError)."""
    from .build import build_model, model_builder

    opts = cfg.options
    methods = list(dict.fromkeys(["bp", *cfg.methods]))
    ks: list[int] = list(dict.fromkeys(opts.block_counts))
    if any(k < 2 for k in ks):
        raise UserError(f"--block-counts: a decoupled model needs at least 2 blocks, got {opts.block_counts}")
    if "num_blocks" in cfg.model_kwargs or "block_units" in cfg.model_kwargs:
        raise UserError("--bench memory cuts each model at every K of --block-counts: give K there, not as "
                        "num_blocks / block_units in --model-kwargs")  # fmt: skip
    if cfg.task == "seg":  # the adapter's own check: K from 2 to its stages + 1
        for name in cfg.model:
            for k in ks:
                model_builder(cfg, name)(method=cfg.methods[0], num_blocks=k)
    peaks = [MemoryRun(n, m, None if m == "bp" else k, False) for n in cfg.model for m in methods
             for k in ([None] if m == "bp" else ks)]  # fmt: skip
    if opts.memory_cap_mb is None:
        return peaks
    if not opts.memory_cap_mb > 0:
        raise UserError(f"--memory-cap-mb must be positive, got {opts.memory_cap_mb:g}")
    for name in cfg.model:
        floor = min(state_floor_mb(build_model(cfg, name, m)) for m in methods)
        if opts.memory_cap_mb < floor:
            raise UserError(
                f"--memory-cap-mb {opts.memory_cap_mb:g} is below what {name} holds at any batch "
                f"(its parameters and gradients: {floor:.1f} MB)"
            )
    return peaks + [r._replace(largest=True) for r in peaks]


def _builder(cfg: RunConfig, name: str) -> Builder:
    from .build import model_builder

    make = model_builder(cfg, name)
    seed = cfg.seeds[0]

    def build(method: str, **kw: Any) -> DecoupledModel:
        from zoo.train import seed_everything

        seed_everything(seed)  # every method starts from the same weights
        return make(method=method, **kw)

    return build


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Measure every run of `runs(cfg)`; append rows; print the table."""
    from zoo.runtime import resolve_device

    from ._runner import train_config
    from .build import batch_pool

    device = resolve_device(cfg.device)
    opts = cfg.options
    train = train_config(cfg)
    balance = None if cfg.task == "seg" else opts.balance
    ((x, y),) = batch_pool(cfg, 1, cfg.seeds[0])
    pool: dict[int, Batch] = {}

    def make_batch(n: int) -> Batch:
        """n images of the dataset, the fixed batch repeated when n is larger (memory depends on shapes only)."""
        if n not in pool:
            reps = -(-n // x.shape[0])
            pool[n] = (x.repeat(reps, *[1] * (x.dim() - 1))[:n], y.repeat(reps, *[1] * (y.dim() - 1))[:n])
        return pool[n]

    rows: list[dict[str, Any]] = []
    builders = {name: _builder(cfg, name) for name in cfg.model}
    for r in runs(cfg):
        build = builders[r.model]
        if r.largest:
            row = largest_batch(build, make_batch, r.method, opts.memory_cap_mb, r.num_blocks, balance, train,
                                device=device, log=log, cut_batch=int(x.shape[0]))  # fmt: skip
        else:
            row = measure(build, (x, y), r.method, r.num_blocks, balance, train=train, device=device)
        rows.append({**setup_columns(cfg, "memory", r.model, r.method, row["num_blocks"]), **row, **env,
                     "run_id": run_id})  # fmt: skip
        what = f"largest batch {row['largest_batch']} under {opts.memory_cap_mb:g} MB" if r.largest else "peak"
        k = "-" if r.method == "bp" else row["num_blocks"]
        log(f"{r.model} {r.method} K={k} {row['units_per_block']}: {what} {row['peak_mb']:.1f} MB")
    rows = against_bp([r for r in rows if "largest_batch" not in r]) + [r for r in rows if "largest_batch" in r]
    path = Path(cfg.leaderboard_dir) / f"memory_{cfg.task}_{cfg.dataset}.csv"
    append_rows(path, rows, COLUMNS)
    record_rows(cfg, run_dir, run_id, rows, log)
    log(f"\nmemory, {cfg.task} on {cfg.dataset}, batch {x.shape[0]}, {rows[0]['mem_kind']}; rows appended to {path}")
    for r in rows:
        ratio = "" if r.get("ratio_vs_bp") is None else f"  ({r['ratio_vs_bp']:.3f}× bp)"
        cap = f"  largest batch {r['largest_batch']} ≤ {r['memory_cap_mb']:g} MB" if "largest_batch" in r else ""
        k = "-" if r["method"] == "bp" else r["num_blocks"]
        log(f"  {r['model']:<12} {r['method']:<10} K={k:<2} {r['units_per_block'] or '-':<9} "
            f"peak {r['peak_mb']:8.1f} MB at batch {r['batch_size']}{ratio}{cap}")  # fmt: skip
    return rows
