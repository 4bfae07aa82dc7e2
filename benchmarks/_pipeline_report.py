"""The pipeline bench's report: per-engine summaries, the table and rows, where the speedup goes, the scaling
model. Engine groups are defined here and shared with benchmarks/pipeline.py."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from leaderboards.sections import stage_balance

from ._scaling import gpipe_bound, plot_scaling, scaling_model

__all__ = [
    "DECOUPLED", "PIPELINING", "ZERO_BUBBLE", "contended_limits", "engine_label", "explain", "fmt",
    "fraction_of_limit", "report", "summaries",
]  # fmt: skip

DECOUPLED = ("deinforeg-single", "deinforeg-pipe")  # run once per local method
ZERO_BUBBLE = ("zb-interleaved", "zbv", "dualpipev")  # skipped, with the reason, where they cannot run
PIPELINING = ("gpipe", "1f1b", *ZERO_BUBBLE)  # BP over torch.distributed.pipelining; the best is the baseline


# -- summaries ----------------------------------------------------------------------------------------------------
def fmt(values: Sequence[float], spec: str) -> str:
    return "/".join(format(v, spec) for v in values)


def _median(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [statistics.median(r["stages"][k][key] for r in runs) for k in range(len(runs[0]["stages"]))]


def summaries(results: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for label, runs in results.items():
        # every stage's own steady-state rate; the pipeline delivers the slowest (queued sends can flatter one stage);
        # independent processes (bp-contended) deliver the sum of theirs
        rate = sum if runs[0]["engine"] == "bp-contended" else min
        per_run = [rate(st["samples_per_s"] for st in r["stages"]) for r in runs]
        out[label] = {
            "samples_per_s": statistics.median(per_run),
            "per_run": per_run,
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


def contended_limits(summ: dict[str, dict[str, Any]]) -> list[float]:
    """Per repeat: the × BP of `stages` independent single-device BP processes run at once (bp-contended over
    bp-single of the same repeat); empty when either was not measured."""
    bp, both = summ.get("bp-single"), summ.get("bp-contended")
    if bp is None or both is None:
        return []
    return [c / b for c, b in zip(both["per_run"], bp["per_run"]) if b > 0]


def fraction_of_limit(summ: dict[str, dict[str, Any]], label: str) -> float | None:
    """Median over repeats of (`label`'s × BP) / (the contended limit), each repeat against its own limit; None
    when `label`, bp-single or bp-contended was not measured, or `label` is not a multi-process pipeline."""
    v, bp, limits = summ.get(label), summ.get("bp-single"), contended_limits(summ)
    if v is None or not limits or v["engine"] not in ("deinforeg-pipe", *PIPELINING):
        return None
    return statistics.median(r / b / lim for r, b, lim in zip(v["per_run"], bp["per_run"], limits))


def engine_label(engine: str, method: str, m: int | None) -> str:
    if m is not None:
        return f"{engine} M={m}"
    return f"{engine} ({method})" if engine in DECOUPLED and method != "deinforeg" else engine


def report(cfg, pc, summ, note, run_id, env, model, b, img, log) -> list[dict[str, Any]]:
    s = int(pc.stages)
    bp = summ.get("bp-single", {}).get("samples_per_s")
    pipe_bp = {k: v["samples_per_s"] for k, v in summ.items() if v["engine"] in PIPELINING}
    best = max(pipe_bp, key=pipe_bp.get) if pipe_bp else None
    best_pipe_bp = pipe_bp[best] if best else None
    limits = contended_limits(summ)
    limit = statistics.median(limits) if limits else None
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
            f"{label:26s} {sps:10.1f} {vs_bp:6.2f} {vs_pp:11.2f}  {fmt(v['busy'], '.2f'):11s}  "
            f"{fmt(v['peak_mem_mb'], '.0f'):14s}  {mb:12.2f}  {fmt(comm_ms, '.1f'):12s}  "
            f"{fmt([c * 1e3 for c in v['compute_s']], '.1f')}"
        )
        is_pipe = engine in ("deinforeg-pipe", *PIPELINING)
        frac = fraction_of_limit(summ, label) if is_pipe else None
        rows.append(
            {
                "model": model,
                "task": cfg.task,
                "dataset": cfg.dataset,
                "engine": engine,
                "method": v["method"],
                "stages": s if is_pipe or engine == "bp-contended" else 1,
                "micro_batches": m if engine in PIPELINING else 1,
                "batch_size": b // m if engine == "bp-single-mb" else b,
                "img_size": img,
                "partition": "+".join(map(str, v["partition"] or pc.partition or [])) if is_pipe else "",
                "samples_per_s": sps,
                "speedup_vs_bp": vs_bp,
                "speedup_vs_pipelining_bp": vs_pp,
                "contended_limit": limit,
                "fraction_of_limit": frac,
                "busy_per_stage": fmt(v["busy"], ".3f"),
                "peak_mem_mb_per_stage": fmt(v["peak_mem_mb"], ".0f"),
                "comm_mb_per_step": mb,
                "comm_ms_per_step": fmt(comm_ms, ".2f") if not any(math.isnan(c) for c in comm_ms) else "",
                "predicted_ms_per_stage": fmt([p * 1e3 for p in pred], ".1f") if pred else "",
                "measured_ms_per_stage": fmt([c * 1e3 for c in v["compute_s"]], ".1f"),
                "steps": pc.steps - pc.warmup_steps,
                "repeats": cfg.options.repeats,
                "note": note,
                **{k: env[k] for k in ("device", "torch", "commit", "date") if k in env},
                "run_id": run_id,
            }
        )
    log(
        f"({note}; busy = compute time / wall time per stage, for gpipe/1f1b process CPU time / wall; "
        f"peak = tensors counted (zoo.memory) in the second (warm-up) step of each stage; "
        f"comm = payload transfer + waiting for sends, idle waiting excluded)"
    )
    if limit is not None:
        pipe = fraction_of_limit(summ, "deinforeg-pipe")
        log(
            f"contended limit: {s} independent BP processes at once reach {limit:.2f}× one (median of "
            f"{fmt(limits, '.2f')}); the pipeline's × BP is that fraction of it: "
            + ", ".join(f"{k} {f:.0%}" for k in summ if (f := fraction_of_limit(summ, k)) is not None)
            + ("" if pipe is not None else " (no deinforeg-pipe row)")
        )
        pipe_row = next((r for r in rows if r["engine"] == "deinforeg-pipe"), {})
        balance = stage_balance(pipe_row.get("measured_ms_per_stage"))
        if pipe is not None and balance is not None:
            log(
                f"stage balance (mean / max of the stages' compute): {balance:.2f}; with equal stages the same work "
                f"would reach {pipe / balance:.0%} of the limit (the rest is the pipeline's extra work: local heads, "
                f"communication)"
            )
    if best:
        log(
            f"best BP over torch.distributed.pipelining: {best} (×best pp BP is relative to it; of the schedules "
            f"that ran: {', '.join(pipe_bp)})"
        )
    return rows


def explain(cfg, pc, summ, model, b, img, log) -> None:
    """Where the speedup goes, the partitioner's prediction against the measurement, and the scaling model."""
    s = int(pc.stages)
    bp = summ.get("bp-single")
    t_bp = b / bp["samples_per_s"] if bp else None
    pipes = {v["method"]: v for v in summ.values() if v["engine"] == "deinforeg-pipe"}
    balance = None
    for method, pipe in pipes.items():
        if pipe["predicted_s"]:
            pred = fmt([p * 1e3 for p in pipe["predicted_s"]], ".1f")
            meas = fmt([c * 1e3 for c in pipe["compute_s"]], ".1f")
            log(f"\n{method}: per-stage step time, predicted by the partitioner vs measured in the pipeline (ms): "
                f"{pred} vs {meas}")  # fmt: skip
        seq = summ.get(engine_label("deinforeg-single", method, None))
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
            f"{t_seq * 1e3:.0f} ms) × balance {bal:.2f} (stage compute {fmt([c * 1e3 for c in comp], '.0f')} ms)"
            f" × overlap {overlap:.2f} (step {t_cycle * 1e3:.0f} ms vs slowest stage {max(comp) * 1e3:.0f} ms: "
            f"communication {fmt([c * 1e3 for c in pipe['comm_s']], '.1f')} ms/step, waits, contention)"
        )
    if bp is None:
        return
    for m in sorted(set(cfg.options.micro_batches)):
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
                    f"input and weight gradients); busy {fmt(v['busy'], '.2f')}")  # fmt: skip
                continue
            expect = gpipe_bound(balance, s, m) * mb_eff
            log(
                f"{e} M={m}: {t_bp / t_e:.2f}× BP (step {t_e * 1e3:.0f} ms); bubble M/(M+S-1) = {m}/{m + s - 1} × "
                f"stage balance × micro-batch efficiency predict ~{expect:.2f}×; busy {fmt(v['busy'], '.2f')} "
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
    for g in cfg.options.bandwidth_gbps:
        links[f"{g:g} Gbit/s"] = g * 1e9 / 8
    counts = sorted({1, 2, 4, 8, s})
    lines: dict[str, list[tuple[int, float]]] = {}
    log(
        f"\nscaling model ({method} pipeline speedup over single-device BP, from per-block compute "
        f"{fmt([p['seconds'] * 1e3 for p in profile], '.0f')} ms and link times; a block cut in two when S > "
        f"{len(profile)}, each half paying a full local head; 50 µs latency per message):"
    )
    log(f"{'link':28s} " + " ".join(f"S={n:<5d}" for n in counts))
    heads = [p.get("head_seconds", 0.0) for p in profile]
    for name, bw in links.items():
        preds = [scaling_model(profile, t_bp, n, bw, 50e-6 if bw else 0.0, heads)["speedup"] for n in counts]
        lines[f"{method} model, {name}"] = list(zip(counts, preds, strict=True))
        log(f"{name:28s} " + " ".join(f"{p:<7.2f}" for p in preds))
    for m in sorted(set(cfg.options.micro_batches)):
        lines[f"GPipe bubble bound (M={m})"] = [(n, gpipe_bound(n, n, m)) for n in counts]
    measured = {
        k: v["samples_per_s"] / bp["samples_per_s"]
        for k, v in summ.items()
        if v["engine"] in ("deinforeg-pipe", *PIPELINING)
    }
    log(f"measured at S={s}: " + ", ".join(f"{e} {v:.2f}×" for e, v in measured.items()))
    if cfg.options.plot:
        path = Path(cfg.leaderboard_dir) / f"throughput_pipeline_{cfg.task}_{cfg.dataset}_{model}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        title = f"{model} {cfg.task} {img}px batch {b}: pipeline speedup over 1-device BP ({pc.device})"
        plot_scaling(path, title, lines, measured, s)
        log(f"plot → {path}")
