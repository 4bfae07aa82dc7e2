"""Multi-device pipeline throughput: decoupled pipelines (DeInfoReg, greedy, SCPL) against single-device BP and
BP over torch.distributed.pipelining (GPipe, 1F1B and the zero-bubble schedules). The `pipeline` bench of the harness:

    python -m benchmarks.run --bench pipeline --model resnet18 --task cls --stages 2 --methods deinforeg,scpl

Engines, all on the same model, data, batch and partition, measured one after another in one run:
  bp-single         single-process BP (one device's worth of compute: `threads` threads on CPU, one GPU on GPU)
  deinforeg-single  the local method in one process, blocks one after another (isolates the pipeline's own gain)
  deinforeg-pipe    the decoupled pipeline, one process per stage (zoo.pipeline)
  gpipe, 1f1b       BP over the same stages with torch.distributed.pipelining, `--micro-batches` per batch
  zb-interleaved    BP, zero-bubble schedules (ScheduleInterleavedZeroBubble, ScheduleZBVZeroBubble,
  zbv, dualpipev    ScheduleDualPipeV): each rank's blocks halved into 2 pipeline stages, placed looped or V;
                    one that cannot run here (too few blocks per stage, too few micro-batches, a torch error) is
                    skipped with one line saying why, and the others run on
  bp-single-mb      single-process BP at the micro-batch size (what micro-batching alone costs GPipe / 1F1B)
  bp-contended      S independent single-device BP processes at once, each on its own core(s) (CPU): what S
                    devices that slow each other (shared caches, memory bandwidth) deliver together. Its × BP is
                    the machine's contended limit (`contended_limit`, the same on every row of the run); every
                    pipeline row gives its × BP as a fraction of it (`fraction_of_limit`, per repeat, then the
                    median), a figure that means the same on a quiet machine and a busy one
The two decoupled engines run once for each local method of `--methods` (the rows' `method` column); the BP engines
are the reference. On CPU every stage process is pinned to `--threads` threads (default 1) and stands for one device;
the single-process baselines run on as many. Reported ratios come from one run (never across runs).

With `--model-kwargs cut=block` (timm CNNs: every residual block a unit) and neither --num-blocks nor --partition,
the units are profiled first and `zoo.pipeline.partition.choose_cuts` picks where to cut them into one decoupled
block per stage (a cut may fall inside a stage); every engine then trains that model, one block per stage.

A scaling model predicts the speedup for more stages and other links from the measured per-block compute and link
times; it is printed beside the measured points and plotted to the leaderboard folder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from zoo import LOCAL_METHODS, UserError
from zoo.pipeline import (
    Batches,
    Builder,
    PipelineConfig,
    PipelineError,
    build,
    check_config,
    check_micro_batches,
    choose_blocks,
    launch,
    local_devices,
    run_single,
    shares_gpu,
)
from zoo.pipeline.engine import pin_cpu
from zoo.pipeline.flags import PIPELINE_FLAGS
from zoo.runtime import resolve_device

from ._pipeline_report import DECOUPLED, PIPELINING, ZERO_BUBBLE, engine_label, explain, fmt, report, summaries
from ._runner import train_config
from ._scaling import gpipe_bound, scaling_model
from .build import batch_pool, model_builder
from .options import ENGINE_ORDER
from .results import append_rows, record_rows
from .settings import RunConfig

__all__ = ["COLUMNS", "POOL_BATCHES", "run", "runs", "scaling_model", "gpipe_bound"]

MICRO_ENGINES = (*PIPELINING, "bp-single-mb")  # run once per micro-batch count
POOL_BATCHES = 8  # real training batches held in memory and cycled (data loading is not what we measure)
COLUMNS = [
    "model",
    "task",
    "dataset",
    "engine",
    "method",
    "stages",
    "micro_batches",
    "batch_size",
    "img_size",
    "partition",
    "samples_per_s",
    "speedup_vs_bp",
    "speedup_vs_pipelining_bp",
    "contended_limit",
    "fraction_of_limit",
    "busy_per_stage",
    "peak_mem_mb_per_stage",
    "comm_mb_per_step",
    "comm_ms_per_step",
    "predicted_ms_per_stage",
    "measured_ms_per_stage",
    "steps",
    "repeats",
    "note",
    "device",
    "torch",
    "commit",
    "date",
    "run_id",
]


# -- engines ------------------------------------------------------------------------------------------------------
def _single_child(cfg: PipelineConfig, builder: Builder, batches: Batches, method: str, queue) -> None:
    import os

    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    try:
        queue.put(("ok", run_single(cfg, builder, batches, method)["stats"]))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, typed
        queue.put(("error", {"type": type(e).__name__, "user_error": isinstance(e, UserError), "message": str(e)}))


def _run_single(cfg: PipelineConfig, builder: Builder, batches: Batches, method: str) -> dict[str, Any]:
    """A single-process baseline in a fresh process (its own thread setting, nothing shared with the launcher)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_single_child, args=(cfg, builder, batches, method, q))
    p.start()
    try:
        status, value = q.get(timeout=max(600.0, cfg.timeout_s * 5))
    finally:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if status != "ok":
        what = f"{method}-single failed: {value['type']}: {value['message']}"
        raise UserError(what) if value["user_error"] else RuntimeError(what)
    return {"stages": [value], "partition": None, "predicted_s": None, "profile": None}


def _contended_child(cfg: PipelineConfig, builder: Builder, batches: Batches, rank: int, world: int, start, queue):
    import os

    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    try:
        pin_cpu(cfg, rank, world)  # its own cores, as stage `rank` of `world` would have; run_single keeps them
        start.wait(timeout=cfg.timeout_s)  # every process starts its steps at once
        queue.put((rank, "ok", run_single(cfg, builder, batches, "bp")["stats"]))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, typed
        queue.put((rank, "error", {"type": type(e).__name__, "message": str(e)}))


def _run_contended(cfg: PipelineConfig, builder: Builder, batches: Batches) -> dict[str, Any]:
    """`stages` independent single-device BP processes at once, process r on stage r's cores: each one's
    statistics, as a pipeline's stages are reported (the row's rate is their sum, see `summaries`)."""
    import multiprocessing as mp

    world = int(cfg.stages)
    ctx = mp.get_context("spawn")
    q, start = ctx.Queue(), ctx.Barrier(world)
    procs = [
        ctx.Process(target=_contended_child, args=(cfg, builder, batches, r, world, start, q)) for r in range(world)
    ]
    for p in procs:
        p.start()
    got: dict[int, dict[str, Any]] = {}
    try:
        for _ in range(world):
            rank, status, value = q.get(timeout=max(600.0, cfg.timeout_s * 5))
            if status != "ok":
                raise RuntimeError(f"bp-contended process {rank} failed: {value['type']}: {value['message']}")
            got[rank] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return {"stages": [got[r] for r in range(world)], "partition": None, "predicted_s": None, "profile": None}


def _not_runnable(e: BaseException) -> str | None:
    """Why a zero-bubble schedule cannot run here, or None when `e` is a bug that must surface: a user error (too
    few blocks per stage or micro-batches, found before launch or by a stage), or an exception raised inside
    torch.distributed.pipelining itself (its schedules refusing this setup). The failing stage's record
    (`StageFailure`) says which; no message is parsed."""
    if isinstance(e, UserError):
        return str(e)
    f = e.failure if isinstance(e, PipelineError) else None
    if f is not None and (f.user_error or f.origin.startswith("torch.distributed.pipelining")):
        return f"stage {f.stage}: {f.error_type}: {f.message}"
    return None


def _split(batches: Batches, m: int) -> list:
    """The same samples in batches `m` times smaller (BP at the micro-batch size)."""
    return [pair for x, y in batches for pair in zip(x.chunk(m), y.chunk(m), strict=True)]


def _run_engine(engine: str, method: str, pc: PipelineConfig, builder: Builder, batches: Batches) -> dict[str, Any]:
    if engine in ("bp-single", "deinforeg-single"):
        return _run_single(pc, builder, batches, method)
    if engine == "bp-contended":
        return _run_contended(pc, builder, batches)
    if engine == "bp-single-mb":
        return _run_single(pc, builder, _split(batches, pc.micro_batches), "bp")
    pipe = "deinforeg" if engine == "deinforeg-pipe" else engine
    if pipe != "deinforeg":
        pc = replace(pc, replicas=1)  # torch.distributed.pipelining runs one process per stage
    res = launch(replace(pc, engine=pipe, method=method if pipe == "deinforeg" else pc.method), builder, batches)
    return {"stages": res.stages, "partition": res.partition, "predicted_s": res.predicted_s, "profile": res.profile}


# -- the bench ----------------------------------------------------------------------------------------------------
def _pipeline_config(cfg: RunConfig) -> PipelineConfig:
    device = resolve_device(cfg.device)
    local = [m for m in cfg.methods if m in LOCAL_METHODS]
    shared = {fl.target: getattr(cfg.options, fl.name) for fl in PIPELINE_FLAGS}  # python -m zoo.pipeline's flags
    return PipelineConfig(
        **shared,
        method=local[0] if local else "deinforeg",  # also what profiles the partition
        micro_batches=cfg.options.micro_batches[0],
        seed=cfg.seeds[0],
        train=train_config(cfg),
        device=device.type,
        threads=cfg.threads or 1,  # one CPU stage process on `threads` cores stands for one device
    )


def runs(cfg: RunConfig) -> list[tuple[str, str, str, int | None]]:
    """The engines to measure (`_plan`), checked before anything runs: the launch settings and every micro-batch
    count against the batch size."""
    plan = _plan(cfg)
    check_config(_pipeline_config(cfg), devices=False)
    if any(e in MICRO_ENGINES for _, e, _, _ in plan):
        for m in cfg.options.micro_batches:
            check_micro_batches(cfg.batch_size, m)
    return plan


def _plan(cfg: RunConfig) -> list[tuple[str, str, str, int | None]]:
    """(label, engine, method, micro-batches) in measuring order; the first pipeline decides the partition."""
    local = [m for m in cfg.methods if m in LOCAL_METHODS]
    engines = [e for e in ENGINE_ORDER if e in cfg.options.engines]
    if not local and any(e in DECOUPLED for e in engines):
        raise UserError(
            f"--bench pipeline trains the decoupled engines with a local method: give at least one of "
            f"{', '.join(LOCAL_METHODS)} in --methods (got {', '.join(cfg.methods)})"
        )
    if "deinforeg-pipe" in engines:
        engines = ["deinforeg-pipe"] + [e for e in engines if e != "deinforeg-pipe"]
    plan = []
    for e in engines:
        for method in local if e in DECOUPLED else ["bp"]:
            for m in sorted(set(cfg.options.micro_batches)) if e in MICRO_ENGINES else [None]:
                plan.append((engine_label(e, method, m), e, method, m))
    return plan


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Measure every engine (the decoupled ones for each local method) for every model; append rows; print the
    table, where the speedup goes and the scaling model; record the rows in the run folder and W&B."""
    plan = _plan(cfg)  # user errors before anything runs
    if shares_gpu(_pipeline_config(cfg), cfg.options.stages):
        n = torch.cuda.device_count()
        s = cfg.options.stages
        log(f"gpipe / 1f1b left out: torch.distributed.pipelining needs one GPU per stage (NCCL), and {s} "
            f"stages share {n} GPU(s) here; the decoupled stages talk gloo through the CPU")  # fmt: skip
        plan = [p for p in plan if p[1] not in PIPELINING and p[1] != "bp-single-mb"]
    if resolve_device(cfg.device).type != "cpu" and any(p[1] == "bp-contended" for p in plan):
        log("bp-contended left out: it measures CPU stage processes that share one machine's cores")
        plan = [p for p in plan if p[1] != "bp-contended"]
    rows: list[dict[str, Any]] = []
    for name in cfg.model:
        rows += _run_model(cfg, name, plan, run_id, env, log)
    record_rows(cfg, run_dir, run_id, rows, log)
    return rows


def _run_model(cfg: RunConfig, model: str, plan, run_id: str, env: dict[str, str], log) -> list[dict[str, Any]]:
    pc = _pipeline_config(cfg)
    builder = model_builder(cfg, model)
    batches = batch_pool(cfg, POOL_BATCHES, pc.seed)
    b, img = int(batches[0][0].shape[0]), int(batches[0][0].shape[-1])
    builder, pc, cuts = _fine_cuts(cfg, pc, builder, batches, log)
    if any(e in MICRO_ENGINES for _, e, _, _ in plan):
        for m in cfg.options.micro_batches:
            check_micro_batches(b, m)  # before anything runs
    s = int(pc.stages)
    if pc.device == "cpu":
        note = f"cpu: each stage process pinned to {pc.threads} thread(s) = 1 device; single-process baselines on "
        note += f"{pc.threads} thread(s)" + (
            ", each process on its own core" if pc.pin_cpu else ", processes not pinned to cores"
        )
    elif shares_gpu(pc, s):
        note = f"gpu: {s} stage processes share {torch.cuda.device_count()} GPU(s) ({torch.cuda.get_device_name()}), "
        note += "activations sent through the CPU (gloo); a stage's compute is slowed by the others on its GPU"
    else:
        note = f"gpu: one GPU per stage ({torch.cuda.get_device_name()})"
    n, _ = local_devices(pc)
    if pc.replicas > 1:
        note += f"; deinforeg-pipe runs {s} stages × {pc.replicas} replicas ({pc.replica_loss} loss)"
    if s * pc.replicas > n:  # any oversubscription (S > devices too), not only with replicas
        note += f"; {s * pc.replicas} processes on {n} device(s): oversubscribed, a correctness run, not a speed"
    if cuts is not None:
        note += f"; blocks of {'+'.join(map(str, cuts.units_per_block))} residual-block units chosen by choose_cuts"
    if pc.balance != "time" and (cuts is not None or pc.partition is None):  # a partition given balances nothing
        note += f"; cuts balance {pc.balance}"
    note += f"; optimizer {pc.train.optimizer} lr {pc.train.lr:g}"
    seeds = f" (seed {pc.seed} only)" if len(cfg.seeds) > 1 else ""
    micro = cfg.options.micro_batches
    log(
        f"pipeline bench {run_id}: {model} {cfg.task} on {cfg.dataset} {img}px, batch {b}, {s} stages, {pc.steps} "
        f"steps ({pc.warmup_steps} warm-up){seeds}, methods {', '.join(sorted({m for _, _, m, _ in plan} - {'bp'}))}"
        f", micro-batches {'/'.join(map(str, sorted(set(micro))))} (gpipe/1f1b; the best is the baseline)"
    )
    log(note)
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _, _ in plan}
    skipped: dict[str, str] = {}
    for rep in range(cfg.options.repeats):
        for label, engine, method, m in plan:
            if label in skipped:
                continue
            try:
                out = _run_engine(engine, method, replace(pc, micro_batches=m) if m else pc, builder, batches)
            except (UserError, PipelineError) as e:
                why = _not_runnable(e) if engine in ZERO_BUBBLE else None
                if why is None:
                    raise
                skipped[label] = why
                results.pop(label)
                log(f"  [{rep + 1}/{cfg.options.repeats}] {label}: not run here: {skipped[label]}")
                continue
            if cuts is not None and engine == "deinforeg-pipe":
                out["predicted_s"] = cuts.predicted_s  # the cut chooser's prediction (the launcher got a partition)
            if out["partition"] is not None and pc.partition is None:
                pc = replace(pc, partition=out["partition"])  # every later engine runs on the same stages
            results[label].append(out | {"engine": engine, "method": method, "m": m})
            rate = [st["samples_per_s"] for st in out["stages"]]
            rate = sum(rate) if engine == "bp-contended" else rate[-1]
            log(f"  [{rep + 1}/{cfg.options.repeats}] {label}: {rate:.1f} samples/s")
    summ = summaries(results)
    rows = report(cfg, pc, summ, note, run_id, env, model, b, img, log)
    for label, why in skipped.items():
        log(f"{label}: not run ({why})")
    path = Path(cfg.leaderboard_dir) / f"throughput_pipeline_{cfg.task}_{cfg.dataset}.csv"
    append_rows(path, rows, COLUMNS)
    log(f"rows → {path}")
    explain(cfg, pc, summ, model, b, img, log)
    return rows


def _fine_cuts(cfg: RunConfig, pc: PipelineConfig, builder: Builder, batches: Batches, log):
    """A model built with fine units (`cut=block`) and no block count or partition given: profile the units and let
    choose_cuts merge them into one block per stage. Returns the builder, config and cuts every engine then uses."""
    if pc.partition is not None or cfg.num_blocks is not None or cfg.model_kwargs.get("cut") != "block":
        return builder, pc, None
    model = build(pc, builder)
    if "block_units" in model.config:
        return builder, pc, None
    device = torch.device(pc.device)
    x, y = batches[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(pc.threads)  # as one stage process would (only the ratios between units matter)
    try:
        cuts, prof = choose_blocks(model.to(device), x.to(device), y.to(device), int(pc.stages), pc.train,
                                   repeats=pc.profile_repeats, balance=pc.balance)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    units = "+".join(map(str, cuts.units_per_block))
    if pc.balance == "memory":  # prof: zoo.pipeline.partition.UnitMemory, tensors counted per unit
        log(
            f"cut=block: {len(prof)} units measured (body {fmt([p.body_bytes / 2**20 for p in prof], '.1f')} MB); "
            f"memory-balanced cuts: blocks of {units} units, one per stage, predicted peak "
            f"{fmt([b / 2**20 for b in cuts.predicted_bytes], '.1f')} MB/stage"
        )
    else:
        body = fmt([(p.seconds - p.head_seconds) * 1e3 for p in prof], ".1f")
        heads = fmt([p.head_seconds * 1e3 for p in prof], ".1f")
        log(
            f"cut=block: {len(prof)} units profiled (body {body} ms, local head {heads} ms); choose_cuts: blocks of "
            f"{units} units, one per stage, predicted {fmt([t * 1e3 for t in cuts.predicted_s], '.1f')} ms/stage"
        )
    builder = functools.partial(builder, block_units=list(cuts.units_per_block))
    return builder, replace(pc, partition=[1] * int(pc.stages)), cuts
