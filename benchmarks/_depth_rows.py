"""Depth bench rows (issue 25): the leaderboard's columns and the rows made from `train_run` results.

`rows_from_results` → one row per (depth, norm, init, method) over seeds, columns `COLUMNS`; `run_rows` → one row
per run (`RUN_COLUMNS`: per-seed loss curve and gradient norms, what the leaderboard renderer plots).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from zoo.runtime import ENV_COLUMNS

from ._depth_core import METHODS, DepthRecipe

__all__ = ["COLUMNS", "RUN_COLUMNS", "grad_ratio", "rows_from_results", "run_rows"]

# what names one grid setting and method, the first columns of both boards
_SETTING_COLUMNS = (
    "bench",
    "task",
    "dataset",
    "model",
    "depth",
    "width",
    "norm",
    "init",
    "layers_per_block",
    "num_blocks",
    "method",
)
COLUMNS = (
    *_SETTING_COLUMNS,
    "img_size",
    "train_size",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "grad_clip",
    "bn_recalib",
    "selection",
    "budget",
    "config_hash",
    "seeds",
    "metric",
    "metric_mean",
    "metric_std",
    "metric_per_seed",
    "selected_epoch",
    "selected_exit",
    "exit_test_per_seed",
    "deepest_exit_mean",
    "final_mean",
    "final_std",
    "final_per_seed",
    "train_loss_final_mean",
    "train_loss_final_std",
    "grad_first_over_last",
    "params",
    "step_ms",
    "wall_s",
    "peak_mem_mb",
    "mem_kind",
    *ENV_COLUMNS,
    "run_id",
)


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _fmt(v: Any, spec: str = "{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def grad_ratio(result: dict[str, Any], step: int = 0) -> float:
    """First layer's weight-gradient norm over the last layer's at `step` (0: the initial weights)."""
    norms = _norms_at(result, step)
    if norms is None:
        return float("nan")
    return norms[0] / norms[-1] if norms[-1] else float("nan")


def _deepest(record: dict[str, Any]) -> float:
    """One epoch record's training loss of the deepest head (BP: its one loss)."""
    return record["train_loss"][-1]


def _norms_at(result: dict[str, Any], step: int) -> list[float] | None:
    """Every layer's weight-gradient norm recorded at `step` (None: not recorded)."""
    for r in result["grad_norms"]["records"]:
        if r["step"] == step:
            return r["grad_norms"]
    return None


def rows_from_results(
    results: Sequence[dict[str, Any]],
    recipe: DepthRecipe,
    env: dict[str, str],
    run_id: str,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per (depth, norm, init, method): mean ± std over seeds, per-seed values kept for paired tests;
    `exit_test_per_seed` holds every exit's test accuracy at the selected epoch (exits `:`, seeds `;`). `extra`:
    more columns for every row (the harness's budget and config_hash)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["depth"], r["norm"], r["init"], r["method"]), []).append(r)
    rows = []
    for (depth, norm, init, method), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        mean, std = _mean_std([r["metric"] for r in rs])
        fmean, fstd = _mean_std([r["final_metric"] for r in rs])
        lmean, lstd = _mean_std([_deepest(r["history"][-1]) for r in rs])
        ratios = [grad_ratio(r) for r in rs]
        ratios = [x for x in ratios if x > 0 and math.isfinite(x)]
        rows.append(
            {
                "bench": "depth",
                "task": "cls",
                "dataset": recipe.dataset,
                "model": "plain_cnn",
                "depth": depth,
                "width": recipe.width,
                "norm": norm,
                "init": init,
                "layers_per_block": recipe.layers_per_block,
                "num_blocks": rs[0]["num_blocks"],
                "method": method,
                "img_size": recipe.img_size,
                "train_size": rs[0]["train_size"],
                "epochs": recipe.epochs,
                "batch_size": recipe.batch_size,
                "optimizer": recipe.optimizer,
                "lr": recipe.lr,
                "weight_decay": recipe.weight_decay,
                "warmup_epochs": recipe.warmup_epochs,
                "grad_clip": recipe.grad_clip or "",
                "bn_recalib": recipe.bn_recalib,
                "selection": "best (epoch, exit) on val",
                "seeds": ";".join(str(r["seed"]) for r in rs),
                "metric": "accuracy",
                "metric_mean": mean,
                "metric_std": std,
                "metric_per_seed": ";".join(_fmt(r["metric"], "{:.4f}") for r in rs),
                "selected_epoch": ";".join(str(r["selected_epoch"]) for r in rs),
                "selected_exit": ";".join(str(r["selected_exit"]) for r in rs),
                "exit_test_per_seed": ";".join(":".join(_fmt(v) for v in r["test_per_exit"]) for r in rs),
                "deepest_exit_mean": _mean_std([r["test_per_exit"][-1] for r in rs])[0],
                "final_mean": fmean,
                "final_std": fstd,
                "final_per_seed": ";".join(_fmt(r["final_metric"], "{:.4f}") for r in rs),
                "train_loss_final_mean": lmean,
                "train_loss_final_std": lstd,
                # geometric mean over seeds: the ratio spans orders of magnitude
                "grad_first_over_last": math.exp(statistics.fmean(map(math.log, ratios))) if ratios else None,
                "params": rs[0]["params"],
                "step_ms": statistics.fmean(r["step_ms"] for r in rs),
                "wall_s": statistics.fmean(r["wall_s"] for r in rs),
                "peak_mem_mb": max(r["peak_mem_mb"] for r in rs),
                "mem_kind": rs[0]["mem_kind"],
                **{k: env.get(k, "") for k in ENV_COLUMNS},
                "run_id": run_id,
                "budget": "",  # the harness names them (`extra`); a bare core run has no budget or settings hash
                "config_hash": "",
                **(extra or {}),
            }
        )
    return rows


RUN_COLUMNS = (
    *_SETTING_COLUMNS,
    "epochs",
    "budget",
    "config_hash",
    "seed",
    "metric",
    "selected_epoch",
    "selected_exit",
    "test_per_exit",
    "steps_per_epoch",
    "train_loss_per_epoch",
    "val_best_per_epoch",
    "grad_init",
    "grad_epoch2",
    *ENV_COLUMNS,
    "run_id",
)


def _joined(values: Iterable[float | None], spec: str) -> str:
    return ";".join(_fmt(v, spec) for v in values)


def run_rows(
    results: Sequence[dict[str, Any]],
    recipe: DepthRecipe,
    env: dict[str, str],
    run_id: str,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per run (seed): the deepest head's training loss and the best exit's validation accuracy per epoch,
    every layer's weight-gradient norm at initialisation and at the start of epoch 2 (`;`-separated, forward order;
    block k holds layers k·layers_per_block ...), so the renderer can draw the curves without the run folders."""
    out = []
    for r in sorted(results, key=lambda r: (r["depth"], r["norm"], r["init"], METHODS.index(r["method"]), r["seed"])):
        spe = r["steps"] // max(1, r["epochs"])
        later = _norms_at(r, spe) if r["epochs"] > 1 else None
        vals = [max((v for v in h["val_per_block"] if v is not None), default=None) for h in r["history"]]
        out.append(
            {
                "bench": "depth",
                "task": "cls",
                "dataset": recipe.dataset,
                "model": "plain_cnn",
                **{
                    k: r[k]
                    for k in (
                        "depth",
                        "norm",
                        "init",
                        "method",
                        "seed",
                        "num_blocks",
                        "selected_epoch",
                        "selected_exit",
                        "metric",
                    )
                },  # fmt: skip
                "width": recipe.width,
                "layers_per_block": recipe.layers_per_block,
                "epochs": recipe.epochs,
                "test_per_exit": ":".join(_fmt(v) for v in r["test_per_exit"]),
                "steps_per_epoch": spe,
                "train_loss_per_epoch": _joined((_deepest(h) for h in r["history"]), "{:.4f}"),
                "val_best_per_epoch": _joined(vals, "{:.2f}"),
                "grad_init": _joined(_norms_at(r, 0) or [], "{:.3e}"),
                "grad_epoch2": _joined(later or [], "{:.3e}"),
                **{k: env.get(k, "") for k in ENV_COLUMNS},
                "run_id": run_id,
                "budget": "",  # the harness names them (`extra`); a bare core run has no budget or settings hash
                "config_hash": "",
                **(extra or {}),
            }
        )
    return out
