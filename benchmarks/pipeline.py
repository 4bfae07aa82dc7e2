"""Multi-device pipeline throughput: the DeInfoReg pipeline against single-device BP and BP over GPipe / 1F1B.

    python -m benchmarks.pipeline --model resnet18 --task cls --stages 2          # or through the harness:
    python -m benchmarks.run --bench throughput --model resnet18 --task cls --stages 2

Engines, all on the same model, data, batch and partition, measured one after another in one run:
  bp-single         single-process BP (one device's worth of compute: one thread on CPU, one GPU on GPU)
  deinforeg-single  DeInfoReg in one process, blocks one after another (isolates the pipeline's own gain)
  deinforeg-pipe    the DeInfoReg pipeline, one process per stage (zoo.pipeline)
  gpipe, 1f1b       BP over the same stages with torch.distributed.pipelining, `--micro-batches` per batch
  bp-single-mb      single-process BP at the micro-batch size (what micro-batching alone costs GPipe / 1F1B)
On CPU every stage process is pinned to one thread (torch.set_num_threads(1), OMP_NUM_THREADS=1) and stands for one
device; the single-process baselines run on one thread too. Reported ratios come from one run (never across runs).

A scaling model predicts the speedup for more stages and other links from the measured per-block compute and link
times; it is printed beside the measured points and plotted to `leaderboards/`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import statistics
import sys
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from zoo.pipeline import PipelineConfig, launch, run_single
from zoo.pipeline.launch import check_micro_batches
from zoo.pipeline.partition import balanced_split, stage_slices
from zoo.train import TrainConfig

from .config import ConfigError, micro_batch_counts, parse_kwargs
from .results import append_rows, environment

__all__ = ["COLUMNS", "CPU_NOTE", "run", "main", "scaling_model", "build_parser"]

ENGINE_ORDER = ("bp-single", "deinforeg-single", "deinforeg-pipe", "gpipe", "1f1b", "bp-single-mb")
MICRO_ENGINES = ("gpipe", "1f1b", "bp-single-mb")  # run once per micro-batch count
PIPELINING = ("gpipe", "1f1b")
# GPipe / 1F1B are measured at every count and the best is the baseline: fewer micro-batches mean a larger bubble
# (M / (M+S-1)) but larger, more efficient micro-batches; which wins depends on the machine
DEFAULT_MICRO_BATCHES = (2, 4)
CPU_NOTE = "cpu: each stage process pinned to 1 thread = 1 device; single-process baselines on 1 thread"
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
def _single_child(cfg: PipelineConfig, method: str, queue) -> None:
    import os

    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    try:
        queue.put(("ok", run_single(cfg, method)["stats"]))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put(("error", f"{type(e).__name__}: {e}"))


def _run_single(cfg: PipelineConfig, method: str) -> dict[str, Any]:
    """A single-process baseline in a fresh process (its own thread setting, nothing shared with the launcher)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_single_child, args=(cfg, method, q))
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


def _run_engine(engine: str, cfg: PipelineConfig) -> dict[str, Any]:
    if engine == "bp-single":
        return _run_single(cfg, "bp")
    if engine == "deinforeg-single":
        return _run_single(cfg, cfg.method)
    if engine == "bp-single-mb":  # BP at the micro-batch size: what micro-batching alone costs
        return _run_single(replace(cfg, batch_size=cfg.batch_size // cfg.micro_batches), "bp")
    res = launch(replace(cfg, engine="deinforeg" if engine == "deinforeg-pipe" else engine))
    return {"stages": res.stages, "partition": res.partition, "predicted_s": res.predicted_s, "profile": res.profile}


# -- scaling model ------------------------------------------------------------------------------------------------
def _expand(costs: list[float], heads: list[float], out_bytes: list[float], stages: int):
    """Cut the costliest unit in two until there are `stages` units; each new cut adds one local head's cost."""
    units = [[c, h, b] for c, h, b in zip(costs, heads, out_bytes, strict=True)]
    while len(units) < stages:
        i = max(range(len(units)), key=lambda k: units[k][0])
        c, h, b = units[i]
        body = max(c - h, 0.0) / 2
        units[i : i + 1] = [[body + h, h, b], [body + h, h, b]]
    return [u[0] for u in units], [u[2] for u in units]


def scaling_model(
    profile: Sequence[dict[str, Any]],
    bp_step_s: float,
    stages: int,
    bandwidth_bytes_s: float | None,
    latency_s: float = 0.0,
    head_s: Sequence[float] | None = None,
) -> dict[str, float]:
    """Predicted DeInfoReg-pipeline speedup over single-device BP for `stages` stages.

    Stages run concurrently and sends overlap compute (a bounded queue of isends), so a step takes the slowest of
    the stages' compute and the links' transfer (latency + bytes / bandwidth). With fewer blocks than stages the
    costliest block is assumed cut in two, paying one more local head each time (`head_s`, default 0).
    """
    costs = [float(p["seconds"]) for p in profile]
    out_b = [float(p["out_bytes"]) for p in profile]
    heads = list(head_s) if head_s is not None else [0.0] * len(costs)
    costs, out_b = _expand(costs, heads, out_b, stages)
    link = [(latency_s + b / bandwidth_bytes_s) if bandwidth_bytes_s else 0.0 for b in out_b]
    sizes = balanced_split(costs, stages, link)
    stage_s = [sum(costs[i] for i in r) for r in stage_slices(sizes)]
    link_s = [link[r[-1]] for r in stage_slices(sizes)[:-1]]
    cycle = max(stage_s + link_s)
    return {"stages": stages, "cycle_s": cycle, "speedup": bp_step_s / cycle, "max_stage_s": max(stage_s)}


def gpipe_bound(balance: float, stages: int, micro_batches: int) -> float:
    """Upper bound of GPipe/1F1B speedup over single-device BP: the bubble (M / (M+S-1)) times the balance."""
    return balance * micro_batches / (micro_batches + stages - 1)


# -- reporting ----------------------------------------------------------------------------------------------------
def _fmt(values: Sequence[float], spec: str) -> str:
    return "/".join(format(v, spec) for v in values)


def _median(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [statistics.median(r["stages"][k][key] for r in runs) for k in range(len(runs[0]["stages"]))]


def _summaries(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for engine, runs in results.items():
        # every stage's own steady-state rate; the pipeline delivers the slowest (queued sends can flatter one stage)
        sps = statistics.median(min(st["samples_per_s"] for st in r["stages"]) for r in runs)
        out[engine] = {
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
            "m": runs[0]["m"],
        }
    return out


def _plot(path: Path, title: str, model_lines: dict[str, list[tuple[int, float]]], measured: dict[str, float], s: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    xs = sorted({x for line in model_lines.values() for x, _ in line})
    ax.plot(xs, xs, ":", color="#999999", label="ideal (S×)")
    styles = iter(["-o", "-s", "-^", "-v", "-D", "-P"])
    for name, line in model_lines.items():
        style = next(styles, "-o") if "DeInfoReg" in name else "--"
        ax.plot([x for x, _ in line], [y for _, y in line], style, label=name, ms=4, alpha=0.8, mfc="none")
    markers = {"deinforeg-pipe": ("*", "#d62728"), "gpipe": ("s", "#444444"), "1f1b": ("^", "#1f77b4")}
    for i, (label, v) in enumerate(measured.items()):
        m, c = markers.get(label.split(" ")[0], ("x", "k"))
        x = s * (1 + 0.04 * (i - (len(measured) - 1) / 2))  # side by side, not on top of each other
        face = "none" if "M=" in label else c
        ax.plot([x], [v], m, color=c, ms=9, label=f"measured {label}", linestyle="none", mfc=face)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("stages (devices)")
    ax.set_ylabel("speedup over single-device BP (samples/s)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the bench ----------------------------------------------------------------------------------------------------
def _config_from(cfg: Any, model: str) -> tuple[PipelineConfig, dict[str, Any]]:
    """A PipelineConfig from the harness's RunConfig or this module's argparse Namespace (getattr defaults)."""
    g = lambda k, d=None: getattr(cfg, k, d) if getattr(cfg, k, None) is not None else d  # noqa: E731
    task = g("task", "cls")
    device = g("device", "cpu")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    seeds = g("seeds", [0])
    seed = seeds[0] if isinstance(seeds, list | tuple) else int(seeds)
    train = TrainConfig(optimizer=g("optimizer", "adamw"), lr=g("lr", 2e-3), weight_decay=g("weight_decay", 5e-4))
    micro = sorted(set(micro_batch_counts(g("micro_batches", DEFAULT_MICRO_BATCHES))))
    pc = PipelineConfig(
        model=model,
        task=task,
        arch=g("arch"),
        method=g("method", "deinforeg"),
        num_blocks=g("num_blocks"),
        img_size=g("img_size"),
        model_kwargs=dict(g("model_kwargs", {}) or {}),
        data=g("dataset", "auto"),
        batch_size=g("batch_size", 64 if task == "cls" else 16),
        steps=g("steps", 20),
        warmup_steps=g("warmup", 3),
        micro_batches=micro[0],
        stages=g("stages", 2),
        seed=seed,
        train=train,
        device=device,
        threads=1 if device == "cpu" else g("threads", 1),
        pin_cpu=g("pin_cpu", True),
        verbose=g("verbose", True),
    ).resolved()
    engines = [e.strip() for e in str(g("engines", ",".join(ENGINE_ORDER))).split(",") if e.strip()]
    if any(e in MICRO_ENGINES for e in engines):
        for m in micro:
            check_micro_batches(pc.batch_size, m)  # before anything runs
    extra = {
        "micro_batches": micro,
        "engines": engines,
        "repeats": int(g("repeats", 1)),
        "bandwidths_gbps": [float(v) for v in str(g("bandwidth_gbps", "0.1,1,10")).split(",") if v.strip()],
        "leaderboard_dir": g("leaderboard_dir", "leaderboards"),
        "write": bool(g("write", True)),
        "plot": bool(g("plot", True)),
    }
    return pc, extra


def run(cfg: Any) -> list[dict[str, Any]]:
    """Run the pipeline bench for every model in `cfg.model`; append rows; print the table and the scaling model."""
    models = cfg.model if isinstance(getattr(cfg, "model", None), list | tuple) else [getattr(cfg, "model", None)]
    rows: list[dict[str, Any]] = []
    for name in models:
        rows += _run_model(cfg, name or "resnet18")
    return rows


def _run_model(cfg: Any, model: str) -> list[dict[str, Any]]:
    pc, extra = _config_from(cfg, model)
    run_id = f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-pipeline-{uuid.uuid4().hex[:6]}"
    s = int(pc.stages)
    note = CPU_NOTE if pc.device == "cpu" else "gpu: one GPU per stage"
    if pc.device == "cpu":
        note += ", each process on its own core" if pc.pin_cpu else ", processes not pinned to cores"
    note += f"; optimizer {pc.train.optimizer} lr {pc.train.lr:g}"
    print(
        f"pipeline bench {run_id}: {model} {pc.task} on {pc.data} {pc.img_size}px, batch {pc.batch_size}, {s} "
        f"stages, {pc.steps} steps ({pc.warmup_steps} warm-up), micro-batches "
        f"{'/'.join(map(str, extra['micro_batches']))} (gpipe/1f1b; the best is the baseline)"
    )
    print(note, flush=True)
    engines = [e for e in ENGINE_ORDER if e in extra["engines"]]
    if "gpipe" in engines or "1f1b" in engines or "deinforeg-pipe" in engines:
        engines = ["deinforeg-pipe"] + [e for e in engines if e != "deinforeg-pipe"]  # it decides the partition
    plan = [
        (f"{e} M={m}" if e in MICRO_ENGINES else e, e, m if e in MICRO_ENGINES else None)
        for e in engines
        for m in (extra["micro_batches"] if e in MICRO_ENGINES else [None])
    ]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in plan}
    for rep in range(extra["repeats"]):
        for label, engine, m in plan:
            out = _run_engine(engine, replace(pc, micro_batches=m) if m else pc)
            if engine == "deinforeg-pipe" and pc.partition is None:
                pc = replace(pc, partition=out["partition"])
            results[label].append(out | {"engine": engine, "m": m})
            print(
                f"  [{rep + 1}/{extra['repeats']}] {label}: {out['stages'][-1]['samples_per_s']:.1f} samples/s",
                flush=True,
            )
    summ = _summaries(results)
    rows = _report(pc, summ, extra, note, run_id, model)
    if extra["write"] and rows:
        path = Path(extra["leaderboard_dir"]) / f"throughput_pipeline_{pc.task}_{pc.data}.csv"
        append_rows(path, rows, COLUMNS)
        print(f"rows → {path}")
    return rows


def _report(pc, summ, extra, note, run_id, model) -> list[dict[str, Any]]:
    s = int(pc.stages)
    bp = summ.get("bp-single", {}).get("samples_per_s")
    pipe_bp = {k: v["samples_per_s"] for k, v in summ.items() if v["engine"] in PIPELINING}
    best = max(pipe_bp, key=pipe_bp.get) if pipe_bp else None
    best_pipe_bp = pipe_bp[best] if best else None
    env = environment(pc.device)
    rows = []
    print(
        f"\n{'engine':18s} {'samples/s':>10s} {'×BP':>6s} {'×GPipe/1F1B':>11s}  busy/stage   peak MiB/stage  "
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
        print(
            f"{label:18s} {sps:10.1f} {vs_bp:6.2f} {vs_pp:11.2f}  {_fmt(v['busy'], '.2f'):11s}  "
            f"{_fmt(v['peak_mem_mb'], '.0f'):14s}  {mb:12.2f}  {_fmt(comm_ms, '.1f'):12s}  "
            f"{_fmt([c * 1e3 for c in v['compute_s']], '.1f')}"
        )
        is_pipe = engine not in ("bp-single", "deinforeg-single", "bp-single-mb")
        rows.append(
            {
                "model": model,
                "task": pc.task,
                "dataset": pc.data,
                "engine": engine,
                "method": "bp" if engine in ("bp-single", "gpipe", "1f1b", "bp-single-mb") else pc.method,
                "stages": s if is_pipe else 1,
                "micro_batches": m if engine in PIPELINING else 1,
                "batch_size": pc.batch_size // m if engine == "bp-single-mb" else pc.batch_size,
                "img_size": pc.img_size,
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
                "repeats": extra["repeats"],
                "note": note,
                **env,
                "run_id": run_id,
            }
        )
    print(
        f"({note}; busy = compute time / wall time per stage, for gpipe/1f1b process CPU time / wall; "
        f"comm = payload transfer + waiting for sends, idle waiting excluded)"
    )
    if best:
        print(f"best BP over torch.distributed.pipelining: {best} (×GPipe/1F1B is relative to it)")
    if "deinforeg-pipe" in summ:
        _explain(pc, summ, extra, model)
    return rows


def _explain(pc, summ, extra, model) -> None:
    """Where the speedup goes, the partitioner's prediction against the measurement, and the scaling model."""
    s = int(pc.stages)
    pipe = summ["deinforeg-pipe"]
    if pipe["predicted_s"]:
        pred, meas = (
            _fmt([p * 1e3 for p in pipe["predicted_s"]], ".1f"),
            _fmt([c * 1e3 for c in pipe["compute_s"]], ".1f"),
        )
        print(f"\nper-stage step time, predicted by the partitioner vs measured in the pipeline (ms): {pred} vs {meas}")
    bp, seq = summ.get("bp-single"), summ.get("deinforeg-single")
    if bp is None or seq is None:
        return
    t_bp, t_seq = pc.batch_size / bp["samples_per_s"], pc.batch_size / seq["samples_per_s"]
    t_cycle = pc.batch_size / pipe["samples_per_s"]
    comp = pipe["compute_s"]
    heads = t_bp / t_seq
    balance = sum(comp) / max(comp)
    overlap = max(comp) / t_cycle
    print(
        f"\nwhere the speedup goes ({s} stages, ideal {s}.00×): measured {t_bp / t_cycle:.2f}× over BP = "
        f"heads/local losses {heads:.2f} (BP step {t_bp * 1e3:.0f} ms vs DeInfoReg sequential {t_seq * 1e3:.0f} ms)"
        f" × balance {balance:.2f} (stage compute {_fmt([c * 1e3 for c in comp], '.0f')} ms)"
        f" × overlap {overlap:.2f} (step {t_cycle * 1e3:.0f} ms vs slowest stage {max(comp) * 1e3:.0f} ms: "
        f"communication {_fmt([c * 1e3 for c in pipe['comm_s']], '.1f')} ms/step, waits, contention)"
    )
    for m in extra["micro_batches"]:
        alone = summ.get(f"bp-single-mb M={m}")
        mb_eff = alone["samples_per_s"] / bp["samples_per_s"] if alone else 1.0
        if alone:
            print(
                f"micro-batching alone (M={m}): one device trains {pc.batch_size // m}-sample batches at "
                f"{mb_eff:.2f}× the samples/s of {pc.batch_size}-sample batches"
            )
        for e in PIPELINING:
            v = summ.get(f"{e} M={m}")
            if v is None:
                continue
            t_e = pc.batch_size / v["samples_per_s"]
            expect = gpipe_bound(balance, s, m) * mb_eff
            print(
                f"{e} M={m}: {t_bp / t_e:.2f}× BP (step {t_e * 1e3:.0f} ms); bubble M/(M+S-1) = {m}/{m + s - 1} × "
                f"stage balance × micro-batch efficiency predict ~{expect:.2f}×; busy {_fmt(v['busy'], '.2f')} "
                f"(the stages also send activations forward and gradients back)"
            )
    profile = pipe["profile"]
    if not profile:
        return
    # a link's time: the receiver moving the payload once its header arrived (localhost gloo here)
    link_s = [t for t in pipe["recv_s"][1:] if t > 0]
    link_b = [b for b, t in zip(pipe["bytes_recv"][1:], pipe["recv_s"][1:], strict=True) if t > 0]
    measured_bw = max(b / t for b, t in zip(link_b, link_s, strict=True)) if link_s else None
    links = {"measured link" + (f" ({measured_bw * 8 / 1e9:.1f} Gbit/s)" if measured_bw else ""): measured_bw}
    for g in extra["bandwidths_gbps"]:
        links[f"{g:g} Gbit/s"] = g * 1e9 / 8
    counts = sorted({1, 2, 4, 8, s})
    lines: dict[str, list[tuple[int, float]]] = {}
    print(
        f"\nscaling model (DeInfoReg pipeline speedup over single-device BP, from per-block compute "
        f"{_fmt([p['seconds'] * 1e3 for p in profile], '.0f')} ms and link times; a block cut in two when S > "
        f"{len(profile)}, each half paying a full local head; 50 µs latency per message):"
    )
    print(f"{'link':28s} " + " ".join(f"S={n:<5d}" for n in counts))
    for name, bw in links.items():
        heads = [p.get("head_seconds", 0.0) for p in profile]
        preds = [scaling_model(profile, t_bp, n, bw, 50e-6 if bw else 0.0, heads)["speedup"] for n in counts]
        lines[f"DeInfoReg model, {name}"] = list(zip(counts, preds, strict=True))
        print(f"{name:28s} " + " ".join(f"{p:<7.2f}" for p in preds))
    for m in extra["micro_batches"]:
        lines[f"GPipe bubble bound (M={m})"] = [(n, gpipe_bound(n, n, m)) for n in counts]
    measured = {
        k: v["samples_per_s"] / bp["samples_per_s"]
        for k, v in summ.items()
        if v["engine"] in ("deinforeg-pipe", *PIPELINING)
    }
    print("measured at S=" + str(s) + ": " + ", ".join(f"{e} {v:.2f}×" for e, v in measured.items()))
    if extra["plot"]:
        path = Path(extra["leaderboard_dir"]) / f"throughput_pipeline_{pc.task}_{pc.data}_{model}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        title = (
            f"{model} {pc.task} {pc.img_size}px batch {pc.batch_size}: pipeline speedup over 1-device BP ({pc.device})"
        )
        _plot(path, title, lines, measured, s)
        print(f"plot → {path}")


# -- CLI ------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a(
        "--model",
        default="resnet18",
        help="zoo model name (timm classifier, paper model, or SMP encoder with --task seg)",
    )
    a("--task", default="cls", choices=("cls", "seg"))
    a("--arch", default=None, help="SMP architecture for --task seg (default unet)")
    a("--method", default="deinforeg", help="local method of the decoupled pipeline")
    a("--dataset", default="auto", help="digits | shapes | synthetic (auto: digits for cls, shapes for seg)")
    a("--img-size", type=int, default=None)
    a("--batch-size", type=int, default=None, help="default 64 for cls, 16 for seg")
    a("--num-blocks", type=int, default=None)
    a("--model-kwargs", default=None, help="extra create_model arguments, e.g. width=0.25")
    a("--stages", type=int, default=2)
    a(
        "--micro-batches",
        default=",".join(map(str, DEFAULT_MICRO_BATCHES)),
        help="micro-batches per batch for gpipe / 1f1b; a list measures each and compares with the best",
    )
    a("--steps", type=int, default=30)
    a("--warmup", type=int, default=5)
    a("--repeats", type=int, default=1, help="measure every engine this many times (interleaved); report medians")
    a("--engines", default=",".join(ENGINE_ORDER))
    a("--optimizer", default="adamw", choices=("sgd", "adamw", "lars"), help="optimizer of every engine")
    a("--lr", type=float, default=2e-3)
    a("--bandwidth-gbps", default="0.1,1,10", help="interconnects for the scaling model (Gbit/s)")
    a("--device", default="cpu")
    a("--no-pin", dest="pin_cpu", action="store_false", help="CPU: let the OS move stage processes between cores")
    a("--seeds", default="0")
    a("--leaderboard-dir", default="leaderboards")
    a("--no-write", dest="write", action="store_false", help="print only; append no rows")
    a("--no-plot", dest="plot", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        ns.model_kwargs = parse_kwargs(ns.model_kwargs)
        ns.micro_batches = micro_batch_counts(ns.micro_batches)
    except ConfigError as e:
        parser.error(str(e))
    try:
        ns.seeds = [int(v) for v in str(ns.seeds).split(",")]
    except ValueError:
        parser.error(f"--seeds must be integers, got {ns.seeds!r}")
    from zoo.pipeline import LaunchError, PipelineError

    try:
        run(ns)
    except LaunchError as e:
        print(f"python -m benchmarks.pipeline: error: {e}", file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"python -m benchmarks.pipeline: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no rows written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
