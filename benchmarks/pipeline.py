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
import math
import statistics
from collections.abc import Callable, Sequence
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
    check_micro_batches,
    choose_blocks,
    launch,
    local_devices,
    run_single,
    shares_gpu,
)
from zoo.runtime import resolve_device
from zoo.train import TrainConfig

from ._scaling import gpipe_bound, plot_scaling, scaling_model
from .build import batch_pool, model_builder
from .config import ENGINE_ORDER, RunConfig
from .results import append_rows, record_rows

__all__ = ["COLUMNS", "POOL_BATCHES", "run", "scaling_model", "gpipe_bound"]

DECOUPLED = ("deinforeg-single", "deinforeg-pipe")  # run once per local method
ZERO_BUBBLE = ("zb-interleaved", "zbv", "dualpipev")  # skipped, with the reason, where they cannot run
PIPELINING = ("gpipe", "1f1b", *ZERO_BUBBLE)  # BP over torch.distributed.pipelining; the best is the baseline
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
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


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
        raise RuntimeError(f"{method}-single failed: {value}")
    return {"stages": [value], "partition": None, "predicted_s": None, "profile": None}


def _gist(e: BaseException) -> str:
    """One line saying why a pipeline could not run: the failing stage's exception, without the launcher's wrapping
    and the exit summary."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = text.removeprefix("pipeline failed: ")
    return text.split(" (stage 0 ")[0] if " (stage 0 " in text else text


def _split(batches: Batches, m: int) -> list:
    """The same samples in batches `m` times smaller (BP at the micro-batch size)."""
    return [pair for x, y in batches for pair in zip(x.chunk(m), y.chunk(m), strict=True)]


def _run_engine(engine: str, method: str, pc: PipelineConfig, builder: Builder, batches: Batches) -> dict[str, Any]:
    if engine in ("bp-single", "deinforeg-single"):
        return _run_single(pc, builder, batches, method)
    if engine == "bp-single-mb":
        return _run_single(pc, builder, _split(batches, pc.micro_batches), "bp")
    pipe = "deinforeg" if engine == "deinforeg-pipe" else engine
    if pipe != "deinforeg":
        pc = replace(pc, replicas=1)  # torch.distributed.pipelining runs one process per stage
    res = launch(replace(pc, engine=pipe, method=method if pipe == "deinforeg" else pc.method), builder, batches)
    return {"stages": res.stages, "partition": res.partition, "predicted_s": res.predicted_s, "profile": res.profile}


# -- reporting ----------------------------------------------------------------------------------------------------
def _fmt(values: Sequence[float], spec: str) -> str:
    return "/".join(format(v, spec) for v in values)


def _median(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [statistics.median(r["stages"][k][key] for r in runs) for k in range(len(runs[0]["stages"]))]


def _summaries(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for label, runs in results.items():
        # every stage's own steady-state rate; the pipeline delivers the slowest (queued sends can flatter one stage)
        sps = statistics.median(min(st["samples_per_s"] for st in r["stages"]) for r in runs)
        out[label] = {
            "samples_per_s": sps,
            "busy": _median(runs, "busy"),
            "peak_mem_mb": _median(runs, "peak_mem_mb"),
            "compute_s": _median(runs, "compute_s_per_step"),
            "comm_s": _median(runs, "comm_s_per_step"),
            "bytes": _median(runs, "bytes_sent_per_step"),
            "bytes_recv": _median(runs, "bytes_received_per_step"),
            "recv_s": _median(runs, "recv_transfer_s_per_step"),
            "blocked_s": _median(runs, "blocked_s_per_step"),
            "partition": runs[0]["partition"],
            "predicted_s": runs[0]["predicted_s"],
            "profile": runs[0]["profile"],
            "engine": runs[0]["engine"],
            "method": runs[0]["method"],
            "m": runs[0]["m"],
        }
    return out


# -- the bench ----------------------------------------------------------------------------------------------------
def _label(engine: str, method: str, m: int | None) -> str:
    if m is not None:
        return f"{engine} M={m}"
    return f"{engine} ({method})" if engine in DECOUPLED and method != "deinforeg" else engine


def _pipeline_config(cfg: RunConfig) -> PipelineConfig:
    device = resolve_device(cfg.device)
    local = [m for m in cfg.methods if m in LOCAL_METHODS]
    return PipelineConfig(
        method=local[0] if local else "deinforeg",  # also what profiles the partition
        stages=cfg.stages,
        partition=list(cfg.partition) if cfg.partition else None,
        steps=cfg.steps,
        warmup_steps=cfg.warmup,
        micro_batches=cfg.micro_batches[0],
        seed=cfg.seeds[0],
        train=TrainConfig(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay),
        device=device.type,
        threads=cfg.threads or 1,  # one CPU stage process on `threads` cores stands for one device
        pin_cpu=cfg.pin_cpu,
        replicas=cfg.replicas,
        replica_loss=cfg.replica_loss,
        oversubscribe=cfg.oversubscribe,
    )


def _plan(cfg: RunConfig) -> list[tuple[str, str, str, int | None]]:
    """(label, engine, method, micro-batches) in measuring order; the first pipeline decides the partition."""
    local = [m for m in cfg.methods if m in LOCAL_METHODS]
    engines = [e for e in ENGINE_ORDER if e in cfg.engines]
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
            for m in sorted(set(cfg.micro_batches)) if e in MICRO_ENGINES else [None]:
                plan.append((_label(e, method, m), e, method, m))
    return plan


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Measure every engine (the decoupled ones for each local method) for every model; append rows; print the
    table, where the speedup goes and the scaling model; record the rows in the run folder and W&B."""
    plan = _plan(cfg)  # user errors before anything runs
    if shares_gpu(_pipeline_config(cfg), cfg.stages):
        n = torch.cuda.device_count()
        log(f"gpipe / 1f1b left out: torch.distributed.pipelining needs one GPU per stage (NCCL), and {cfg.stages} "
            f"stages share {n} GPU(s) here; the decoupled stages talk gloo through the CPU")  # fmt: skip
        plan = [p for p in plan if p[1] not in PIPELINING and p[1] != "bp-single-mb"]
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
        for m in cfg.micro_batches:
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
    if pc.replicas > 1:
        n, _ = local_devices(pc)
        note += f"; deinforeg-pipe runs {s} stages × {pc.replicas} replicas ({pc.replica_loss} loss)"
        if s * pc.replicas > n:
            note += f", {s * pc.replicas} processes on {n} device(s): oversubscribed, a correctness run, not a speed"
    if cuts is not None:
        note += f"; blocks of {'+'.join(map(str, cuts.units_per_block))} residual-block units chosen by choose_cuts"
    note += f"; optimizer {pc.train.optimizer} lr {pc.train.lr:g}"
    seeds = f" (seed {pc.seed} only)" if len(cfg.seeds) > 1 else ""
    log(
        f"pipeline bench {run_id}: {model} {cfg.task} on {cfg.dataset} {img}px, batch {b}, {s} stages, {pc.steps} "
        f"steps ({pc.warmup_steps} warm-up){seeds}, methods {', '.join(sorted({m for _, _, m, _ in plan} - {'bp'}))}"
        f", micro-batches {'/'.join(map(str, sorted(set(cfg.micro_batches))))} (gpipe/1f1b; the best is the baseline)"
    )
    log(note)
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _, _ in plan}
    skipped: dict[str, str] = {}
    for rep in range(cfg.repeats):
        for label, engine, method, m in plan:
            if label in skipped:
                continue
            try:
                out = _run_engine(engine, method, replace(pc, micro_batches=m) if m else pc, builder, batches)
            except (UserError, PipelineError) as e:
                if engine not in ZERO_BUBBLE:
                    raise
                skipped[label] = _gist(e)
                results.pop(label)
                log(f"  [{rep + 1}/{cfg.repeats}] {label}: not run here: {skipped[label]}")
                continue
            if cuts is not None and engine == "deinforeg-pipe":
                out["predicted_s"] = cuts.predicted_s  # the cut chooser's prediction (the launcher got a partition)
            if out["partition"] is not None and pc.partition is None:
                pc = replace(pc, partition=out["partition"])  # every later engine runs on the same stages
            results[label].append(out | {"engine": engine, "method": method, "m": m})
            log(f"  [{rep + 1}/{cfg.repeats}] {label}: {out['stages'][-1]['samples_per_s']:.1f} samples/s")
    summ = _summaries(results)
    rows = _report(cfg, pc, summ, note, run_id, env, model, b, img, log)
    for label, why in skipped.items():
        log(f"{label}: not run ({why})")
    path = Path(cfg.leaderboard_dir) / f"throughput_pipeline_{cfg.task}_{cfg.dataset}.csv"
    append_rows(path, rows, COLUMNS)
    log(f"rows → {path}")
    _explain(cfg, pc, summ, model, b, img, log)
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
                                   repeats=pc.profile_repeats)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    body = _fmt([(p.seconds - p.head_seconds) * 1e3 for p in prof], ".1f")
    heads = _fmt([p.head_seconds * 1e3 for p in prof], ".1f")
    log(
        f"cut=block: {len(prof)} units profiled (body {body} ms, local head {heads} ms); choose_cuts: blocks of "
        f"{'+'.join(map(str, cuts.units_per_block))} units, one per stage, predicted "
        f"{_fmt([t * 1e3 for t in cuts.predicted_s], '.1f')} ms/stage"
    )
    builder = functools.partial(builder, block_units=list(cuts.units_per_block))
    return builder, replace(pc, partition=[1] * int(pc.stages)), cuts


def _report(cfg, pc, summ, note, run_id, env, model, b, img, log) -> list[dict[str, Any]]:
    s = int(pc.stages)
    bp = summ.get("bp-single", {}).get("samples_per_s")
    pipe_bp = {k: v["samples_per_s"] for k, v in summ.items() if v["engine"] in PIPELINING}
    best = max(pipe_bp, key=pipe_bp.get) if pipe_bp else None
    best_pipe_bp = pipe_bp[best] if best else None
    rows = []
    log(
        f"\n{'engine':26s} {'samples/s':>10s} {'×BP':>6s} {'×best pp BP':>11s}  busy/stage   peak MiB/stage  "
        f"comm MB/step  comm ms/step  compute ms/stage"
    )
    for label, v in summ.items():
        engine, m = v["engine"], v["m"]
        sps = v["samples_per_s"]
        vs_bp = sps / bp if bp else float("nan")
        vs_pp = sps / best_pipe_bp if best_pipe_bp else float("nan")
        comm_ms = [c * 1e3 for c in v["comm_s"]]
        mb = sum(v["bytes"]) / 2**20
        pred = v["predicted_s"] if engine == "deinforeg-pipe" else None
        log(
            f"{label:26s} {sps:10.1f} {vs_bp:6.2f} {vs_pp:11.2f}  {_fmt(v['busy'], '.2f'):11s}  "
            f"{_fmt(v['peak_mem_mb'], '.0f'):14s}  {mb:12.2f}  {_fmt(comm_ms, '.1f'):12s}  "
            f"{_fmt([c * 1e3 for c in v['compute_s']], '.1f')}"
        )
        is_pipe = engine in ("deinforeg-pipe", *PIPELINING)
        rows.append(
            {
                "model": model,
                "task": cfg.task,
                "dataset": cfg.dataset,
                "engine": engine,
                "method": v["method"],
                "stages": s if is_pipe else 1,
                "micro_batches": m if engine in PIPELINING else 1,
                "batch_size": b // m if engine == "bp-single-mb" else b,
                "img_size": img,
                "partition": "+".join(map(str, v["partition"] or pc.partition or [])) if is_pipe else "",
                "samples_per_s": sps,
                "speedup_vs_bp": vs_bp,
                "speedup_vs_pipelining_bp": vs_pp,
                "busy_per_stage": _fmt(v["busy"], ".3f"),
                "peak_mem_mb_per_stage": _fmt(v["peak_mem_mb"], ".0f"),
                "comm_mb_per_step": mb,
                "comm_ms_per_step": _fmt(comm_ms, ".2f") if not any(math.isnan(c) for c in comm_ms) else "",
                "predicted_ms_per_stage": _fmt([p * 1e3 for p in pred], ".1f") if pred else "",
                "measured_ms_per_stage": _fmt([c * 1e3 for c in v["compute_s"]], ".1f"),
                "steps": pc.steps - pc.warmup_steps,
                "repeats": cfg.repeats,
                "note": note,
                **{k: env[k] for k in ("device", "torch", "commit", "date") if k in env},
                "run_id": run_id,
            }
        )
    log(
        f"({note}; busy = compute time / wall time per stage, for gpipe/1f1b process CPU time / wall; "
        f"peak = zoo.runtime.PeakMemory over the training steps; "
        f"comm = payload transfer + waiting for sends, idle waiting excluded)"
    )
    if best:
        log(
            f"best BP over torch.distributed.pipelining: {best} (×best pp BP is relative to it; of the schedules "
            f"that ran: {', '.join(pipe_bp)})"
        )
    return rows


def _explain(cfg, pc, summ, model, b, img, log) -> None:
    """Where the speedup goes, the partitioner's prediction against the measurement, and the scaling model."""
    s = int(pc.stages)
    bp = summ.get("bp-single")
    t_bp = b / bp["samples_per_s"] if bp else None
    pipes = {v["method"]: v for v in summ.values() if v["engine"] == "deinforeg-pipe"}
    balance = None
    for method, pipe in pipes.items():
        if pipe["predicted_s"]:
            pred = _fmt([p * 1e3 for p in pipe["predicted_s"]], ".1f")
            meas = _fmt([c * 1e3 for c in pipe["compute_s"]], ".1f")
            log(f"\n{method}: per-stage step time, predicted by the partitioner vs measured in the pipeline (ms): "
                f"{pred} vs {meas}")  # fmt: skip
        seq = summ.get(_label("deinforeg-single", method, None))
        if bp is None or seq is None:
            continue
        t_seq, t_cycle = b / seq["samples_per_s"], b / pipe["samples_per_s"]
        comp = pipe["compute_s"]
        heads = t_bp / t_seq
        bal = sum(comp) / max(comp)
        balance = balance or bal
        overlap = max(comp) / t_cycle
        log(
            f"\n{method}: where the speedup goes ({s} stages, ideal {s}.00×): measured {t_bp / t_cycle:.2f}× over BP"
            f" = heads/local losses {heads:.2f} (BP step {t_bp * 1e3:.0f} ms vs {method} sequential "
            f"{t_seq * 1e3:.0f} ms) × balance {bal:.2f} (stage compute {_fmt([c * 1e3 for c in comp], '.0f')} ms)"
            f" × overlap {overlap:.2f} (step {t_cycle * 1e3:.0f} ms vs slowest stage {max(comp) * 1e3:.0f} ms: "
            f"communication {_fmt([c * 1e3 for c in pipe['comm_s']], '.1f')} ms/step, waits, contention)"
        )
    if bp is None:
        return
    for m in sorted(set(cfg.micro_batches)):
        alone = summ.get(f"bp-single-mb M={m}")
        mb_eff = alone["samples_per_s"] / bp["samples_per_s"] if alone else 1.0
        if alone:
            log(
                f"micro-batching alone (M={m}): one device trains {b // m}-sample batches at "
                f"{mb_eff:.2f}× the samples/s of {b}-sample batches"
            )
        for e in PIPELINING:
            v = summ.get(f"{e} M={m}")
            if v is None or balance is None:
                continue
            t_e = b / v["samples_per_s"]
            if e in ZERO_BUBBLE:
                log(f"{e} M={m}: {t_bp / t_e:.2f}× BP (step {t_e * 1e3:.0f} ms; 2 stages per rank, backward split in "
                    f"input and weight gradients); busy {_fmt(v['busy'], '.2f')}")  # fmt: skip
                continue
            expect = gpipe_bound(balance, s, m) * mb_eff
            log(
                f"{e} M={m}: {t_bp / t_e:.2f}× BP (step {t_e * 1e3:.0f} ms); bubble M/(M+S-1) = {m}/{m + s - 1} × "
                f"stage balance × micro-batch efficiency predict ~{expect:.2f}×; busy {_fmt(v['busy'], '.2f')} "
                f"(the stages also send activations forward and gradients back)"
            )
    profiled = [(method, p) for method, p in pipes.items() if p["profile"]]
    if not profiled:
        return
    method, pipe = profiled[0]  # the pipeline that profiled the blocks (the others ran on its partition)
    profile = pipe["profile"]
    # a link's time: the receiver moving the payload once its header arrived (localhost gloo here)
    link_s = [t for t in pipe["recv_s"][1:] if t > 0]
    link_b = [b_ for b_, t in zip(pipe["bytes_recv"][1:], pipe["recv_s"][1:], strict=True) if t > 0]
    measured_bw = max(b_ / t for b_, t in zip(link_b, link_s, strict=True)) if link_s else None
    links = {"measured link" + (f" ({measured_bw * 8 / 1e9:.1f} Gbit/s)" if measured_bw else ""): measured_bw}
    for g in cfg.bandwidth_gbps:
        links[f"{g:g} Gbit/s"] = g * 1e9 / 8
    counts = sorted({1, 2, 4, 8, s})
    lines: dict[str, list[tuple[int, float]]] = {}
    log(
        f"\nscaling model ({method} pipeline speedup over single-device BP, from per-block compute "
        f"{_fmt([p['seconds'] * 1e3 for p in profile], '.0f')} ms and link times; a block cut in two when S > "
        f"{len(profile)}, each half paying a full local head; 50 µs latency per message):"
    )
    log(f"{'link':28s} " + " ".join(f"S={n:<5d}" for n in counts))
    heads = [p.get("head_seconds", 0.0) for p in profile]
    for name, bw in links.items():
        preds = [scaling_model(profile, t_bp, n, bw, 50e-6 if bw else 0.0, heads)["speedup"] for n in counts]
        lines[f"{method} model, {name}"] = list(zip(counts, preds, strict=True))
        log(f"{name:28s} " + " ".join(f"{p:<7.2f}" for p in preds))
    for m in sorted(set(cfg.micro_batches)):
        lines[f"GPipe bubble bound (M={m})"] = [(n, gpipe_bound(n, n, m)) for n in counts]
    measured = {
        k: v["samples_per_s"] / bp["samples_per_s"]
        for k, v in summ.items()
        if v["engine"] in ("deinforeg-pipe", *PIPELINING)
    }
    log(f"measured at S={s}: " + ", ".join(f"{e} {v:.2f}×" for e, v in measured.items()))
    if cfg.plot:
        path = Path(cfg.leaderboard_dir) / f"throughput_pipeline_{cfg.task}_{cfg.dataset}_{model}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"{model} {cfg.task} {img}px batch {b}: pipeline speedup over 1-device BP ({pc.device})"
        plot_scaling(path, title, lines, measured, s)
        log(f"plot → {path}")
