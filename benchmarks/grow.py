"""Grow bench: a grown model against the same model trained with all its blocks from the start, same seeds and data.

Two modes (benchmarks/_growth.py has the schedule and the `--add-blocks` syntax):
- progressive (`--grow-at E1,...`, optional `--freeze-overtaken`): variant `progressive` adds blocks at those
  epochs, variant `all_at_once` trains every block from epoch 0, for the same `--epochs`;
- extension (`--init-from CKPT --add-blocks SPEC`): variant `extended` trains only the new blocks on top of the
  frozen parent, variant `scratch` trains the whole grown architecture from scratch for the same epochs.

Build (model × method × seed × variant) → run (`_runner.train_one`) → rows (one per variant, mean ± std over seeds,
via `accuracy.rows_from_results`) → `leaderboards/grow_<task>_<dataset>.csv`. Cost columns: block-steps (a step
of k trained blocks counts k), the summed time of the training steps, and both as a ratio to the baseline variant.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._runner import RunSpec, train_one
from .accuracy import _join, _mean_std, leaderboard_path, rows_from_results
from .config import RunConfig
from .results import ENV_COLUMNS, append_rows

__all__ = ["COLUMNS", "VARIANTS", "run", "rows"]

VARIANTS = {"progressive": ("progressive", "all_at_once"), "extension": ("extended", "scratch")}
COLUMNS = (
    "bench",
    "task",
    "model",
    "model_kwargs",
    "img_size",
    "method",
    "dataset",
    "train_size",
    "epochs",
    "batch_size",
    "mode",
    "variant",
    "grow_at",
    "freeze_overtaken",
    "init_from",
    "init_sha256",
    "add_blocks",
    "num_blocks",
    "trained_blocks",
    "seeds",
    "metric",
    "metric_mean",
    "metric_std",
    "metric_per_seed",
    "best_block",
    "per_block_mean",
    "per_block_std",
    "adaptive_mean",
    "block_steps",
    "block_steps_ratio",
    "train_s",
    "train_s_ratio",
    "wall_s",
    "params",
    "trained_params",
    *ENV_COLUMNS,
    "run_id",
)


def _mode(cfg: RunConfig) -> str:
    return "extension" if cfg.init_from else "progressive"


def rows(cfg: RunConfig, results: list[dict[str, Any]], env: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    """One row per (model, method, variant); ratios against the baseline variant of the same model and method."""
    mode = _mode(cfg)
    out = []
    for variant in VARIANTS[mode]:
        rs = [r for r in results if r["variant"] == variant]
        for base in rows_from_results(cfg, rs, env, run_id, "grow"):
            mine = sorted((r for r in rs if (r["model"], r["method"]) == (base["model"], base["method"])),
                          key=lambda r: r["seed"])  # fmt: skip
            nb = len(mine[0]["per_block"])
            std = [_mean_std([r["per_block"][k] for r in mine])[1] if mine[0]["per_block"][k] is not None else None
                   for k in range(nb)]  # fmt: skip
            grown = mine[0]
            base.update(
                mode=mode,
                variant=variant,
                grow_at=_join(cfg.grow_at or []),
                freeze_overtaken=cfg.freeze_overtaken if mode == "progressive" else "",
                init_from=cfg.init_from or "",
                init_sha256=(grown.get("grown_from") or {}).get("weights_sha256", "")[:16],
                add_blocks=_join(cfg.add_blocks or []),
                trained_blocks=_join(grown["trained_blocks"]),
                per_block_std=_join(std),
                block_steps=statistics.fmean(r["block_steps"] for r in mine),
                train_s=statistics.fmean(r["train_s"] for r in mine),
                wall_s=statistics.fmean(r["wall_s"] for r in mine),
                trained_params=grown["trained_params"],
            )
            out.append(base)
    for r in out:  # the baseline is the second variant of the mode
        ref = next(b for b in out if (b["model"], b["method"], b["variant"]) == (r["model"], r["method"],
                   VARIANTS[mode][1]))  # fmt: skip
        r["block_steps_ratio"] = r["block_steps"] / ref["block_steps"] if ref["block_steps"] else float("nan")
        r["train_s_ratio"] = r["train_s"] / ref["train_s"] if ref["train_s"] else float("nan")
    return [{c: r.get(c) for c in COLUMNS} for r in out]


def _table(out: list[dict[str, Any]]) -> str:
    lines = [f"{'variant':<12} {'metric (mean±std)':<22} {'per block':<28} {'block-steps':>11} {'ratio':>6} "
             f"{'train s':>8} {'ratio':>6}"]  # fmt: skip
    for r in out:
        lines.append(
            f"{r['variant']:<12} {r['metric_mean']:6.2f} ± {r['metric_std']:<13.2f} "
            f"{r['per_block_mean'].replace(';', ' '):<28} {r['block_steps']:>11.0f} {r['block_steps_ratio']:>6.2f} "
            f"{r['train_s']:>8.1f} {r['train_s_ratio']:>6.2f}"
        )
    return "\n".join(lines)


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Train both variants per model, method and seed; append the rows to the grow leaderboard; print the table."""
    specs = [RunSpec(m, meth, s, 0.0, variant) for m in cfg.model for meth in cfg.methods for s in cfg.seeds
             for variant in VARIANTS[_mode(cfg)]]  # fmt: skip
    results = []
    for i, spec in enumerate(specs):
        position = f"[{i + 1}/{len(specs)}] "
        res = train_one(cfg, spec, run_dir / "runs" / spec.key, group=run_id, log=log, position=position)
        log(f"{position}{spec.key}: test {res['metric_name']} {res['metric']:.2f} (block {res['best_block']} on val)"
            f" | per block {_join(res['per_block'], '{:.1f}').replace(';', ' ')} | {res['block_steps']} block-steps"
            f" | {res['train_s']:.1f} s of steps")  # fmt: skip
        results.append(res)
    out = rows(cfg, results, env, run_id)
    path = leaderboard_path(cfg, "grow")
    append_rows(path, out, COLUMNS)
    (run_dir / "rows.json").write_text(json.dumps(out, indent=1, default=float))
    log(f"\ngrow bench ({_mode(cfg)}), {cfg.task} on {cfg.dataset} ({len(cfg.seeds)} seed(s)); rows appended to {path}")
    log(_table(out))
    return out
