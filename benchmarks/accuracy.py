"""Accuracy bench: train each method on the same backbone, data and budget; compare on the test split.

Build (one run per model × method × seed × noise rate) → run (`_runner.train_one`) → rows (mean ± std over seeds,
one row per model × method × noise rate) → `leaderboards/accuracy_<task>_<dataset>.csv`. The reported metric
(`metric_*`) is the test metric at the (epoch, exit) each run selected on validation (BP: early stopping; see
`_runner`); `final_*` is the last epoch's, its exit chosen on validation. Per seed, a row keeps the selected epoch and
exit, and every exit's test metric at both points, so any exit can be paired against BP. The adaptive exit's metric
and mean depth, median step time, samples/s, peak memory and the threads each run used come with it. `val_protocol`
says whether validation labels were clean or noisy like the training labels (`--val-noise`). Beside the leaderboard
(`sidecars`): every run's learning curve (`curves_<task>_<dataset>.csv`) and, for noisy runs, the noise audit of the
training (and noisy validation) labels (`<leaderboard>_audit.csv`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ._runner import RunSpec, train_one
from .results import ENV_COLUMNS, SETUP_COLUMNS, append_rows, format_value, read_rows, setup_columns
from .settings import RunConfig

__all__ = ["COLUMNS", "run", "runs", "train_grid", "rows_from_results", "leaderboard_path", "format_table"]

COLUMNS = (
    *SETUP_COLUMNS,
    "train_size",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "eval_size",
    "bn_recalib",
    "train_aug",
    "projector",
    "budget",
    "config_hash",
    "noise_kind",
    "noise_rate",
    "val_protocol",
    "seeds",
    "metric",
    "metric_mean",
    "metric_std",
    "metric_per_seed",
    "last_mean",
    "best_block",
    "selected_epoch",
    "per_block_mean",
    "per_block_per_seed",
    "final_mean",
    "final_std",
    "final_per_seed",
    "final_block",
    "final_per_block_per_seed",
    "adaptive_mean",
    "adaptive_depth",
    "params",
    "step_ms",
    "samples_per_s",
    "peak_mem_mb",
    "mem_kind",
    "threads",
    *ENV_COLUMNS,
    "run_id",
)


def recipe_columns(cfg: RunConfig) -> dict[str, Any]:
    """The settings a row records besides model, data and budget, so it traces to its recipe."""
    from zoo.train import TrainConfig

    t = TrainConfig()
    warmup = f"{cfg.warmup_epochs:g} epochs" if cfg.warmup_epochs else t.warmup_steps  # "warmup 0": every older row
    clip = f", grad norm clipped at {cfg.grad_clip:g}" if cfg.grad_clip else ""
    return {
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "schedule": f"cosine to {t.min_lr_ratio:g}x, warmup {warmup}, per-block optimizers{clip}",
        "eval_size": cfg.eval_size or "all",
        "bn_recalib": cfg.bn_recalib,
        "train_aug": cfg.train_aug,
        "projector": cfg.model_kwargs.get("projector", "pool") if cfg.task == "cls" else "dense",
        "budget": cfg.budget,  # the name of what filled the unset values (recorded, not hashed)
        "config_hash": cfg.config_hash(),
    }


def leaderboard_path(cfg: RunConfig, bench: str | None = None) -> Path:
    return Path(cfg.leaderboard_dir) / f"{bench or cfg.bench}_{cfg.task}_{cfg.dataset}.csv"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _join(values: Sequence[Any], fmt: str = "{:.2f}", sep: str = ";") -> str:
    return sep.join("-" if v is None else (fmt.format(v) if isinstance(v, float) else str(v)) for v in values)


def _blocks_per_seed(per_seed: Sequence[Sequence[float | None]]) -> str:
    """Every exit's metric per seed: seeds separated by `;` (in the order of `seeds`), exits by `/`."""
    return ";".join(_join(blocks, "{:.4f}", "/") for blocks in per_seed)


def noise_rates(cfg: RunConfig) -> list[float]:
    """The training-label noise rates of the grid: the noise bench's sweep, or clean labels."""
    return list(getattr(cfg.options, "noise_rates", [0.0]))


def runs(cfg: RunConfig) -> list[RunSpec]:
    """Every (model, noise rate, seed, method) run, methods side by side, in the order they train."""
    val_noise = bool(cfg.opt("val_noise"))
    return [RunSpec(m, meth, s, r, val_noise=val_noise) for m in cfg.model for r in noise_rates(cfg)
            for s in cfg.seeds for meth in cfg.methods]  # fmt: skip


def train_grid(
    cfg: RunConfig,
    run_dir: Path,
    run_id: str,
    log: Callable[[str], None] = print,
    on_setting: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (model, noise rate, seed, method) run, methods side by side; results in grid order. `on_setting` gets
    the results of each (model, noise rate) as soon as its seeds × methods are done (rows append as a grid goes)."""
    specs = runs(cfg)
    per_setting = len(cfg.seeds) * len(cfg.methods)
    results = []
    for i, spec in enumerate(specs):
        position = f"[{i + 1}/{len(specs)}] "
        res = train_one(cfg, spec, run_dir / "runs" / spec.key, group=run_id, log=log, position=position)
        blocks = " ".join("-" if v is None else f"{v:.1f}" for v in res["per_block"])
        log(
            f"{position}{spec.key}: test {res['metric_name']} {res['metric']:.2f} (epoch {res['selected_epoch']}, "
            f"block {res['best_block']}, chosen on val; last epoch {res['final_metric']:.2f}) | per block {blocks} "
            f"| {res['step_ms']:.0f} ms/step | peak {res['peak_mem_mb']:.0f} MB"
        )
        results.append(res)
        if on_setting is not None and (i + 1) % per_setting == 0:
            on_setting(results[-per_setting:])
    return results


def rows_from_results(
    cfg: RunConfig, results: list[dict[str, Any]], env: dict[str, str], run_id: str, bench: str
) -> list[dict[str, Any]]:
    """One row per (model, method, noise rate): mean ± std over seeds, per-seed values kept for paired diffs; the
    `metric_*` columns at the selected (epoch, exit), `final_*` at the last epoch."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["model"], r["method"], r["noise_rate"]), []).append(r)
    rows = []
    for (model, method, rate), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        mean, std = _mean_std([r["metric"] for r in rs])
        final_mean, final_std = _mean_std([r["final_metric"] for r in rs])
        nb = len(rs[0]["per_block"])
        per_block = [_mean_std([r["per_block"][k] for r in rs])[0] if rs[0]["per_block"][k] is not None else None
                     for k in range(nb)]  # fmt: skip
        ada = [r["adaptive"] for r in rs if r["adaptive"] is not None]
        depth = [r["adaptive_depth"] for r in rs if r["adaptive_depth"] is not None]
        rows.append(
            {
                **setup_columns(cfg, bench, model, method, rs[0]["num_blocks"]),
                "train_size": rs[0]["train_size"],
                "epochs": cfg.epochs,
                "batch_size": cfg.batch_size,
                **recipe_columns(cfg),
                "noise_kind": cfg.opt("noise_kind"),
                "noise_rate": float(rate),
                "val_protocol": rs[0]["val_protocol"],
                "seeds": _join([r["seed"] for r in rs]),
                "metric": rs[0]["metric_name"],
                "metric_mean": mean,
                "metric_std": std,
                "metric_per_seed": _join([r["metric"] for r in rs], "{:.4f}"),
                "last_mean": _mean_std([r["last"] for r in rs])[0],
                "best_block": _join([r["best_block"] for r in rs]),
                "selected_epoch": _join([r["selected_epoch"] for r in rs]),
                "per_block_mean": _join(per_block),
                "per_block_per_seed": _blocks_per_seed([r["per_block"] for r in rs]),
                "final_mean": final_mean,
                "final_std": final_std,
                "final_per_seed": _join([r["final_metric"] for r in rs], "{:.4f}"),
                "final_block": _join([r["final_block"] for r in rs]),
                "final_per_block_per_seed": _blocks_per_seed([r["final_per_block"] for r in rs]),
                "adaptive_mean": statistics.fmean(ada) if ada else None,
                "adaptive_depth": statistics.fmean(depth) if depth else None,
                "params": rs[0]["params"],
                "step_ms": statistics.fmean(r["step_ms"] for r in rs),
                "samples_per_s": statistics.fmean(r["samples_per_s"] for r in rs),
                "peak_mem_mb": max(r["peak_mem_mb"] for r in rs),
                "mem_kind": rs[0]["mem_kind"],
                "threads": _join([r["threads"] for r in rs]),  # per seed: what each run trained with
                **env,
                "run_id": run_id,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The closing table: each method next to BP on the same model and noise rate."""
    head = ["model", "noise", "method", "metric (mean±std)", "Δ vs bp", "epoch", "per block", "last epoch",
            "adaptive (depth)", "ms/step", "samples/s", "peak MB"]  # fmt: skip
    lines = [head]
    bp = {(r["model"], r["noise_rate"]): r for r in rows if r["method"] == "bp"}
    for r in rows:
        base = bp.get((r["model"], r["noise_rate"]))
        delta = "" if base is None or r["method"] == "bp" else f"{r['metric_mean'] - base['metric_mean']:+.2f}"
        ada = "" if r["adaptive_mean"] is None else f"{r['adaptive_mean']:.2f} ({r['adaptive_depth']:.2f})"
        per_block = " ".join(v for v in r["per_block_mean"].split(";"))
        lines.append(
            [
                r["model"],
                f"{r['noise_rate']:g}",
                r["method"],
                f"{r['metric']} {r['metric_mean']:.2f} ± {r['metric_std']:.2f}",
                delta,
                r["selected_epoch"].replace(";", " "),
                per_block,
                f"{r['final_mean']:.2f} ± {r['final_std']:.2f}",
                ada,
                f"{r['step_ms']:.0f}",
                f"{r['samples_per_s']:.1f}",
                f"{r['peak_mem_mb']:.0f}",
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    protocol = rows[0]["val_protocol"] if rows else "clean"
    note = (f"metric: test at the (epoch, exit) selected on {protocol} validation labels (BP: early stopping); "
            "last epoch: the final weights, exit chosen on validation")  # fmt: skip
    return "\n".join([*out, note])


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Train the grid, append its rows to the leaderboard (and its learning curves and noise audit beside it, see
    `sidecars`), write rows.json in the run folder, print the table."""
    from . import sidecars

    path = leaderboard_path(cfg)
    beside: list[Path] = []

    def append(setting: list[dict[str, Any]]) -> None:  # one (model, noise rate): its rows, curves and audit
        rows = rows_from_results(cfg, setting, env, run_id, cfg.bench)
        done = {(r["run_id"], r["model"], r["noise_rate"]) for r in (read_rows(path) if path.exists() else [])}
        if (run_id, rows[0]["model"], format_value(rows[0]["noise_rate"])) in done:
            return  # appended before an interruption; --resume goes on from the next setting
        append_rows(path, rows, COLUMNS)
        beside[:] = sidecars.write(cfg, setting, run_dir, path, env, run_id)

    results = train_grid(cfg, run_dir, run_id, log, on_setting=append)
    rows = rows_from_results(cfg, results, env, run_id, cfg.bench)
    (run_dir / "rows.json").write_text(json.dumps(rows, indent=1, default=float))
    also = f" (and {', '.join(p.name for p in beside)})" if beside else ""
    log(f"\n{cfg.bench} bench, {cfg.task} on {cfg.dataset} ({len(cfg.seeds)} seed(s)); rows appended to {path}{also}\n")
    log(format_table(rows))
    return rows
