"""Depth bench (issue 25): does decoupling rescue deep plain networks? The harness's hooks.

`python -m benchmarks.run --bench depth` (options `DepthOptions` in benchmarks/options.py): `prepare` fixes the model
(`plain_cnn`) and fills the budget (`BUDGETS`: 72 epochs converged), `runs` lists every (depth, norm, init, seed,
method) and rejects a depth the family cannot build before anything runs, `run` trains them (a finished run's
`result.json` is reused on `--resume`) and appends to `depth_<task>_<dataset>.csv` and its `_runs.csv`.

The training core (`DepthRecipe`, `DepthRun`, `train_run`, `run_grid`, `select_point`, the protocol) is
benchmarks/_depth_core.py, the rows (`COLUMNS`, `RUN_COLUMNS`, `rows_from_results`, `run_rows`)
benchmarks/_depth_rows.py; both are re-exported here. The table and the plots are drawn once, by the leaderboard
renderer (leaderboards/_depth.py): `format_table` and `render` hand it this bench's rows as the CSV would hold them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zoo.errors import UserError

from ._depth_core import (
    DEPTHS,
    INITS,
    METHODS,
    NORMS,
    DepthRecipe,
    DepthRun,
    build_model,
    grid,
    run_grid,
    select_point,
    train_run,
)
from ._depth_rows import COLUMNS, RUN_COLUMNS, grad_ratio, rows_from_results, run_rows
from .results import format_value

__all__ = [
    "BUDGETS",
    "COLUMNS",
    "DEPTHS",
    "INITS",
    "METHODS",
    "NORMS",
    "RUN_COLUMNS",
    "DepthRecipe",
    "DepthRun",
    "build_model",
    "format_table",
    "grad_ratio",
    "grid",
    "prepare",
    "recipe_of",
    "render",
    "rows_from_results",
    "run",
    "run_grid",
    "run_rows",
    "runs",
    "select_point",
    "train_run",
]

MODEL = "plain_cnn"
# what the depth bench fills when the user leaves it unset, by dataset and budget (the shape of DATASET_BUDGETS in
# benchmarks/plan.py, and it overrides that table's values for this bench). converged: the pilot
# (leaderboards/explore/depth/README.md) saw BP at depth 48 with BN still rising at epoch 24, the decoupled methods flat
# by epoch 12; the 3-seed grid at 48 epochs failed issue 20's rule for BP with BN at depth 48 (72 epochs moved its
# selected validation accuracy +4.35 and +11.85 points, allowed 2.67 and 8.75): 72 epochs for every method, checked
# against 108 (leaderboards/explore/depth/README.md, "Budget"). quick: minutes per depth.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {"quick": {"epochs": 4, "img_size": 16}, "converged": {"epochs": 72, "img_size": 16}},
}
_ANY_DATASET = {"img_size": 16}  # a multiple of 8 (three pools) where a dataset has no depth budget


def prepare(cfg: Any, given: set[str], note: Callable[[str, Any, str], None]) -> None:
    """Fix the model, default the methods to bp, deinforeg and greedy, fill the depth budget; reject the settings
    this bench does not take (benchmarks.plan calls this before the runs are listed)."""
    if cfg.task != "cls":
        raise UserError(f"--bench depth classifies: --task {cfg.task} is not possible (use --task cls)")
    if "model" in given and cfg.model != [MODEL]:
        raise UserError(f"--bench depth trains {MODEL} (shaped by --depths, --width, --layers-per-block); leave "
                        f"--model {','.join(cfg.model)} out")  # fmt: skip
    for key, why in (("model_kwargs", "--depths, --norms, --inits, --width and --layers-per-block shape the model"),
                     ("num_blocks", "--layers-per-block sets the blocks (K = depth / layers per block)"),
                     ("train_aug", "the depth bench trains without augmentation")):  # fmt: skip
        if key in given:
            raise UserError(f"--{key.replace('_', '-')} is not for --bench depth: {why}")
    if cfg.model != [MODEL]:
        cfg.model = [MODEL]
        note("model", MODEL, "--bench depth")
    if "methods" not in given:
        cfg.methods = list(METHODS)
        note("methods", cfg.methods, "--bench depth's default")
    for m in cfg.methods:
        if m not in METHODS:
            raise UserError(f"--methods {m}: the depth bench compares {', '.join(METHODS)}")
    source = f"the depth bench's budget {cfg.budget} of {cfg.dataset} (benchmarks/depth.py BUDGETS)"
    for key, value in {**_ANY_DATASET, **BUDGETS.get(cfg.dataset, {}).get(cfg.budget, {})}.items():
        if key in given:
            continue
        cfg.derived[:] = [d for d in cfg.derived if d["setting"] != key]  # the dataset's budget: superseded
        setattr(cfg, key, value)
        note(key, value, source)


def runs(cfg: Any) -> list[DepthRun]:
    """Every (depth, norm, init, seed, method), methods innermost; a depth the family cannot build or a block size
    that does not divide a depth is a UserError here, before anything runs."""
    from zoo.models.plain import plain_layout

    o = cfg.options
    for d in dict.fromkeys(o.depths):
        try:
            plain_layout(d)
        except UserError as e:
            raise UserError(f"--depths {d}: {e}") from None
        try:
            plain_layout(d, o.layers_per_block)
        except UserError as e:
            raise UserError(f"--layers-per-block {o.layers_per_block}: {e}") from None
    uniq = [list(dict.fromkeys(v)) for v in (o.depths, o.norms, o.inits, cfg.methods, cfg.seeds)]
    return grid(*uniq)


def recipe_of(cfg: Any, group: str = "depth") -> DepthRecipe:
    """The core's recipe from the harness's resolved settings (W&B runs grouped by `group`, the run id)."""
    o = cfg.options
    return DepthRecipe(
        dataset=cfg.dataset, width=o.width, layers_per_block=o.layers_per_block, img_size=cfg.img_size,
        epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs, grad_clip=cfg.grad_clip,
        train_size=cfg.train_size, eval_size=cfg.eval_size, bn_recalib=cfg.bn_recalib,
        grad_steps=tuple(o.grad_steps), device=cfg.device, threads=cfg.threads, wandb=cfg.wandb,
        wandb_project=cfg.wandb_project, wandb_group=group, data_root=cfg.data_root,
    )  # fmt: skip


def run(
    cfg: Any, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Train the grid (finished runs reused), append one row per setting and method to `depth_<task>_<dataset>.csv`
    and one per run to its `_runs.csv`; print the table."""
    from .results import append_rows, record_rows

    recipe = recipe_of(cfg, run_id)
    t0 = time.perf_counter()
    results = run_grid(runs(cfg), recipe, run_dir, log)
    wall = time.perf_counter() - t0
    extra = {"budget": cfg.budget, "config_hash": cfg.config_hash()}
    rows = rows_from_results(results, recipe, env, run_id, extra)
    path = Path(cfg.leaderboard_dir) / f"depth_{cfg.task}_{cfg.dataset}.csv"
    append_rows(path, rows, COLUMNS)
    append_rows(path.with_name(f"{path.stem}_runs.csv"), run_rows(results, recipe, env, run_id, extra), RUN_COLUMNS)
    record_rows(cfg, run_dir, run_id, rows, log)
    log(f"\ndepth bench, {cfg.task} on {cfg.dataset} ({len(cfg.seeds)} seed(s), {len(results)} runs, wall time "
        f"{wall:.0f} s, finished runs reused on --resume count ~0 s); rows appended to {path}")  # fmt: skip
    log(format_table(rows))
    return rows


# -- the table and plots: drawn by the leaderboard renderer ----------------------------------------------------
def _as_text(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """Rows as a board's CSV holds them (benchmarks.results.format_value), what leaderboards/_depth.py reads."""
    return [{k: format_value(v) for k, v in r.items()} for r in rows]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per (norm, init, depth, method), with the paired Δ against BP of the same setting."""
    from leaderboards._depth import depth_table

    return depth_table(_as_text(rows))


def render(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """`table.md`, `accuracy_vs_depth.png`, `loss_curves.png` and one `grad_norms_depth<D>.png` per depth, from
    one recipe's rows (`rows_from_results`) and the results they were made from."""
    from leaderboards._depth import render_depth

    r0 = rows[0]
    recipe = DepthRecipe(dataset=r0["dataset"], width=r0["width"], layers_per_block=r0["layers_per_block"],
                         epochs=r0["epochs"])  # fmt: skip
    return render_depth(_as_text(rows), _as_text(run_rows(results, recipe, {}, r0["run_id"])), out_dir)
