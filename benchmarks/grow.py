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

from zoo.errors import UserError

from . import _growth
from ._runner import RunSpec, train_one
from .accuracy import _join, _mean_std, leaderboard_path, rows_from_results
from .results import ENV_COLUMNS, append_rows
from .settings import RunConfig

__all__ = ["COLUMNS", "VARIANTS", "prepare", "run", "rows", "runs"]

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
    return "extension" if cfg.options.init_from else "progressive"


def prepare(cfg: RunConfig, given: set[str], note: Callable[[str, Any, str], None]) -> None:
    """Check the schedule or the parent checkpoint; derive what `--init-from` fixes (model, methods, image size,
    model keywords) and, without `--methods`, the decoupled method (BP has no blocks to grow). A derived value the
    user also gave must agree with it."""
    o = cfg.options
    if not (o.grow_at or o.init_from or o.add_blocks):
        raise UserError("--bench grow needs --grow-at E1,E2,... (progressive) or --init-from with --add-blocks")
    if o.freeze_overtaken and not o.grow_at:
        raise UserError("--freeze-overtaken needs --grow-at (it freezes a block when the next one joins)")
    if bool(o.init_from) != bool(o.add_blocks):
        raise UserError("--init-from and --add-blocks go together: a checkpoint to extend and the blocks it gets")
    if o.grow_at and o.init_from:
        raise UserError("--grow-at and --init-from do not combine: grow progressively or extend a checkpoint")
    if "methods" not in given:
        cfg.methods = ["deinforeg"]
        note("methods", cfg.methods, "--bench grow without --methods (bp has no local heads to grow)")
    if o.grow_at:
        at = o.grow_at
        if any(b <= a for a, b in zip(at, at[1:])):
            raise UserError(f"--grow-at {','.join(map(str, at))}: epochs must be strictly increasing (no repeats)")
        if not 1 <= at[0] or at[-1] >= cfg.epochs:
            raise UserError(f"--grow-at {','.join(map(str, at))}: each epoch must lie in 1..{cfg.epochs - 1} "
                            f"(block 1 trains from epoch 0; --epochs is {cfg.epochs})")  # fmt: skip
        _growth.check_method(cfg.methods)
        return
    _growth.parse_block_specs(o.add_blocks)
    _, parent = _growth.parent_checkpoint(o.init_from)
    model = parent["model"]
    if parent.get("task", model.get("task")) != cfg.task:
        raise UserError(f"--init-from {o.init_from} is a {parent.get('task')} checkpoint; this run is --task "
                        f"{cfg.task}")  # fmt: skip
    from .build import dataset_info

    n = dataset_info(cfg.dataset).num_classes
    if int(parent.get("num_classes", model.get("num_classes"))) != n:
        raise UserError(f"--init-from {o.init_from} has {parent.get('num_classes')} classes; dataset "
                        f"{cfg.dataset} has {n}")  # fmt: skip
    _growth.check_method([model["method"]])
    fixed = {"model": [model["name"]], "methods": [model["method"]], "img_size": model.get("img_size"),
             "model_kwargs": {k: v for k, v in model.items() if k not in _PARENT_KEYS}}  # fmt: skip
    for key, want in fixed.items():
        if key in given and getattr(cfg, key) != want:
            raise UserError(f"--{key.replace('_', '-')} {getattr(cfg, key)} differs from what --init-from "
                            f"{o.init_from} fixes ({want}); leave it out")  # fmt: skip
        if getattr(cfg, key) != want:
            note(key, want, f"the parent checkpoint of --init-from {o.init_from}")
        setattr(cfg, key, want)


_PARENT_KEYS = ("name", "method", "task", "num_classes", "img_size", "num_blocks", "arch")


def runs(cfg: RunConfig) -> list[RunSpec]:
    """Both variants of the mode per model, method and seed; checks the schedule or extension fits each model."""
    _growth.preflight(cfg)
    return _specs(cfg)


def _specs(cfg: RunConfig) -> list[RunSpec]:
    return [RunSpec(m, meth, s, 0.0, variant) for m in cfg.model for meth in cfg.methods for s in cfg.seeds
            for variant in VARIANTS[_mode(cfg)]]  # fmt: skip


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
                grow_at=_join(cfg.options.grow_at or []),
                freeze_overtaken=cfg.options.freeze_overtaken if mode == "progressive" else "",
                init_from=cfg.options.init_from or "",
                init_sha256=(grown.get("grown_from") or {}).get("weights_sha256", "")[:16],
                add_blocks=_join(cfg.options.add_blocks or []),
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
    specs = _specs(cfg)
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
