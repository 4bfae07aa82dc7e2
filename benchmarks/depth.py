"""Depth bench core (issue 25): does decoupling rescue deep plain networks?

The DeInfoReg paper's first claim is that cutting one long gradient path into short ones mitigates vanishing
gradients, so deep networks train more stably. Here the same plain CNN (`zoo.models.plain`, no residuals) is trained
at growing depth, with and without BatchNorm, with PyTorch's default and with He initialisation, end to end (`bp`)
and block by block (`deinforeg`, `greedy`), on the embedded digits set.

Protocol (the fair-comparison rule of issue 20): every run keeps the (epoch, exit) pair with the best validation
accuracy (BP has one exit: early stopping); the test split is read only at that point, and once more at the last
epoch (`final_*`, exit chosen on that epoch's validation) for the record. Every exit's test accuracy is kept per seed,
so a decoupled model whose first block learns while its deep blocks starve shows as such. Each run also records the
weight-gradient norm of every layer (`zoo.diagnostics.GradNorms`) at initialisation, after a few steps and at the
start of every epoch, and the forward signal's scale per layer at initialisation.

Interface: `DepthRecipe` (the shared settings) and `DepthRun` (one grid point) → `train_run` → result dict (also
`result.json` in the run folder); `run_grid` trains many, resumably; `rows_from_results` → one row per (depth, norm,
init, method) over seeds, columns `COLUMNS`; `run_rows` → one row per run (`RUN_COLUMNS`: per-seed loss curve and
gradient norms, what the leaderboard renderer plots); `render` writes the table and the plots from results.

Harness (`python -m benchmarks.run --bench depth`, options `DepthOptions` in benchmarks/options.py): `prepare` fixes
the model (`plain_cnn`) and fills the budget (`BUDGETS`: 48 epochs converged), `runs` lists every (depth, norm,
init, seed, method) and rejects a depth the family cannot build before anything runs, `run` trains them (a finished
run's `result.json` is reused on `--resume`) and appends to `depth_<task>_<dataset>.csv` and its `_runs.csv`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import datasets
import zoo
from zoo.diagnostics import GradNorms, activation_scales, draw_grad_norms
from zoo.errors import UserError
from zoo.runtime import ENV_COLUMNS, PeakMemory, resolve_device, sync
from zoo.train import Callback, TrainConfig, Trainer, TrainingStopped, seed_everything

from ._wandb import start_run
from .build import EpochBatches, eval_loader, user_errors

__all__ = [
    "BUDGETS",
    "COLUMNS",
    "DEPTHS",
    "RUN_COLUMNS",
    "DepthRecipe",
    "DepthRun",
    "format_table",
    "grid",
    "plot_accuracy_vs_depth",
    "plot_grad_norms_per_depth",
    "plot_loss_curves",
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

DEPTHS = (8, 16, 32, 48)
NORMS = ("none", "bn")
INITS = ("default", "kaiming")
METHODS = ("bp", "deinforeg", "greedy")


@dataclass
class DepthRecipe:
    """The settings every run of a depth grid shares (a row records them)."""

    dataset: str = "digits"  # an embedded classification set; digits: 1,078 / 360 / 359 images
    width: int = 16  # channels of every conv layer
    layers_per_block: int = 4  # layers per decoupled block: K = depth / layers_per_block
    img_size: int = 16  # input resolution (a multiple of 8: three 2×2 pools)
    epochs: int = 12  # training epochs (the selection then picks the best epoch on validation)
    batch_size: int = 64
    optimizer: str = "adamw"  # sgd | adamw | lars (zoo.train), one optimizer per block for decoupled methods
    lr: float = 2e-3  # peak learning rate of the cosine schedule
    weight_decay: float = 5e-4
    train_size: int | None = None  # None: every training image
    eval_size: int | None = None  # None: every validation and test image
    bn_recalib: bool = True  # recompute BatchNorm statistics on the train images before each evaluation
    grad_steps: tuple[int, ...] = (0, 1, 2, 4, 8)  # steps whose gradient norms are kept (and each epoch's first)
    device: str = "cpu"  # cpu | cuda | auto
    threads: int | None = 1  # torch intra-op threads (None: torch's default)
    wandb: str = "disabled"  # offline | online | disabled (benchmarks/_wandb.py)
    wandb_project: str = "deinforeg-zoo"
    wandb_group: str = "depth"  # the harness groups a grid's W&B runs by its run id
    data_root: str | None = None  # root of real datasets (None: the embedded ones need none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DepthRun:
    """One point of the grid."""

    depth: int
    norm: str
    init: str
    method: str
    seed: int

    @property
    def key(self) -> str:
        return f"plain{self.depth}-{self.norm}-{self.init}-{self.method}-seed{self.seed}"


def grid(
    depths: Iterable[int] = DEPTHS,
    norms: Iterable[str] = NORMS,
    inits: Iterable[str] = INITS,
    methods: Iterable[str] = METHODS,
    seeds: Iterable[int] = (0, 1, 2),
) -> list[DepthRun]:
    """Every combination, methods innermost (the methods of one setting and seed train side by side)."""
    combos = itertools.product(depths, norms, inits, seeds, methods)
    return [DepthRun(int(d), n, i, m, int(s)) for d, n, i, s, m in combos]


def select_point(val_per_epoch: Sequence[Sequence[float | None]]) -> tuple[int, int]:
    """`(epoch, exit)`, both 0-based, of the best validation accuracy over every epoch and exit (None: no head);
    ties go to the earlier epoch, then the earlier exit. Only validation figures come in."""
    best: tuple[float, int, int] | None = None
    for e, per_exit in enumerate(val_per_epoch):
        for k, v in enumerate(per_exit):
            if v is not None and not math.isnan(v) and (best is None or v > best[0]):
                best = (v, e, k)
    if best is None:
        raise ValueError("no validation figure to select on")
    return best[1], best[2]


def _build_data(recipe: DepthRecipe) -> tuple[Any, Any, Any]:
    common = dict(root=recipe.data_root, image_size=recipe.img_size, seed=0)
    with user_errors():
        if datasets.get_dataset_info(recipe.dataset).task != "cls":
            raise zoo.UserError(f"the depth bench classifies: {recipe.dataset!r} is not a classification set")
        train = datasets.create_dataset(recipe.dataset, "train", limit=recipe.train_size, **common)
        val = datasets.create_dataset(recipe.dataset, "val", limit=recipe.eval_size, **common)
        test = datasets.create_dataset(recipe.dataset, "test", limit=recipe.eval_size, **common)
    return train, val, test


def build_model(run: DepthRun, recipe: DepthRecipe, num_classes: int) -> zoo.DecoupledModel:
    return zoo.create_model(
        "plain_cnn",
        method=run.method,
        num_classes=num_classes,
        depth=run.depth,
        width=recipe.width,
        norm=run.norm,
        init=run.init,
        layers_per_block=recipe.layers_per_block,
        img_size=recipe.img_size,
    )


class _KeepSelected(Callback):
    """After every epoch's validation: if this epoch now holds the selected (epoch, exit), keep a copy of the
    weights (with the BatchNorm statistics that validation used); `select_point` is the one rule."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None
        self.point: tuple[int, int] | None = None

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        point = select_point([r["val_per_block"] for r in trainer.history])
        if point[0] == len(trainer.history) - 1:
            self.state = copy.deepcopy(trainer.model.state_dict())
            self.point = point


class _Stop(Callback):
    """Ctrl-C under the harness (its SIGINT handler sets the flag): stop after the current step."""

    def should_stop(self, trainer: Trainer) -> bool:
        from ._runner import _STOP

        return _STOP["requested"]


def _recalibrate(model: zoo.DecoupledModel, loader: Any, device: torch.device) -> None:
    from ._runner import recalibrate_bn  # the harness's one BatchNorm recalibration

    recalibrate_bn(model, loader, device)


def train_run(
    run: DepthRun,
    recipe: DepthRecipe,
    run_dir: str | Path | None = None,
    data: tuple[Any, Any, Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one grid point, select on validation, test; returns the result (and writes `run_dir/result.json`; a
    run folder that has one is reused as finished). `data` = (train, val, test) datasets, built when None."""
    done = Path(run_dir) / "result.json" if run_dir is not None else None
    if done is not None and done.exists():
        log(f"{run.key}: finished earlier, reusing {done}")
        return json.loads(done.read_text())
    device = resolve_device(recipe.device)
    train_ds, val_ds, test_ds = data if data is not None else _build_data(recipe)
    num_classes = datasets.get_dataset_info(recipe.dataset).num_classes
    seed_everything(run.seed)
    model = build_model(run, recipe, num_classes)
    source = EpochBatches(train_ds, recipe.batch_size, run.seed)
    total = len(source) * recipe.epochs
    cfg = TrainConfig(optimizer=recipe.optimizer, lr=recipe.lr, weight_decay=recipe.weight_decay)
    trainer = Trainer(model, cfg, total_steps=total, device=device)
    val_loader = eval_loader(val_ds, recipe.batch_size)
    bn_loader = eval_loader(train_ds, recipe.batch_size)
    probe = next(iter(val_loader))[0].to(device)  # the forward signal at initialisation, on validation images
    act = activation_scales(model, probe)

    wb_dir = Path(run_dir) if run_dir is not None else Path("runs") / "depth" / run.key
    wb = start_run(recipe.wandb, recipe.wandb_project, wb_dir, run.key, recipe.wandb_group,
                   {**recipe.to_dict(), **asdict(run)}, ["depth", "cls"], log)  # fmt: skip

    def evaluate(loader: Any) -> Any:
        if recipe.bn_recalib:
            _recalibrate(model, bn_loader, device)
        return trainer.evaluate(loader, adaptive=False)

    class _Log(Callback):
        def on_epoch_end(self, t: Trainer, record: dict[str, Any]) -> None:
            exits = " ".join("-" if v is None else f"{v:.1f}" for v in record["val_per_block"])
            log(f"{run.key} epoch {record['epoch']}: loss {sum(record['train_loss']):.4f} val per exit {exits}")
            data = {f"val/accuracy_exit{k + 1}": v for k, v in enumerate(record["val_per_block"]) if v is not None}
            data.update({f"train/loss_head{k + 1}": v for k, v in enumerate(record["train_loss"])})
            wb.log({"epoch": record["epoch"], **data}, step=record["step"])

    grads = GradNorms(steps=recipe.grad_steps, every=len(source), log=wb.log)
    keep = _KeepSelected()
    mem = PeakMemory(device).start()
    t0 = time.perf_counter()
    try:
        trainer.fit(source, recipe.epochs, val=lambda t: evaluate(val_loader), callbacks=[grads, keep, _Log(), _Stop()])
    except TrainingStopped:
        wb.finish(exit_code=130)
        from ._runner import Interrupted

        raise Interrupted(f"{run.key} stopped at step {trainer.step}; finished runs are kept, this one starts again "
                          "on --resume") from None  # fmt: skip
    sync(device)
    wall = time.perf_counter() - t0
    peak = mem.peak_mb()

    # the test split, read twice: at the final weights (exit chosen on the last epoch's validation) and at the
    # selected (epoch, exit); nothing after this point chooses anything
    test_loader = eval_loader(test_ds, recipe.batch_size)
    last_val = trainer.history[-1]["val_per_block"]
    final_exit = select_point([last_val])[1]
    final = trainer.evaluate(test_loader, adaptive=False).per_block  # BN statistics of the last validation
    assert keep.state is not None and keep.point is not None
    model.load_state_dict(keep.state)
    selected = trainer.evaluate(test_loader, adaptive=False).per_block
    epoch, exit_ = keep.point
    times = trainer.step_times[2:] or trainer.step_times
    result = {
        **asdict(run),
        "key": run.key,
        "num_blocks": model.num_blocks,
        "params": sum(p.numel() for p in model.parameters()),
        "metric_name": "accuracy",
        "selected_epoch": epoch + 1,
        "selected_exit": exit_ + 1,
        "val_selected": trainer.history[epoch]["val_per_block"][exit_],
        "metric": selected[exit_],
        "test_per_exit": selected,
        "final_exit": final_exit + 1,
        "final_metric": final[final_exit],
        "final_per_exit": final,
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "train_size": len(train_ds),
        "step_ms": 1000 * statistics.median(times) if times else float("nan"),
        "train_s": sum(trainer.step_times),
        "wall_s": wall,
        "peak_mem_mb": peak,
        "mem_kind": mem.kind,
        "history": [{k: r[k] for k in ("epoch", "step", "train_loss", "val_per_block")} for r in trainer.history],
        "grad_norms": grads.as_dict(),
        "act_init": [a._asdict() for a in act],
    }
    wb.summary({k: v for k, v in result.items() if isinstance(v, int | float | str)})
    wb.finish()
    if done is not None:
        done.parent.mkdir(parents=True, exist_ok=True)
        tmp = done.with_name("result.json.tmp")
        tmp.write_text(json.dumps(result, default=float))
        tmp.replace(done)
    return result


def run_grid(
    runs: Sequence[DepthRun], recipe: DepthRecipe, out_dir: str | Path, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Train every run (folders `out_dir/runs/<key>`; finished ones are reused), data built once."""
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    data = _build_data(recipe)
    results = []
    for i, run in enumerate(runs):
        res = train_run(run, recipe, Path(out_dir) / "runs" / run.key, data=data, log=lambda s: None)
        exits = " ".join("-" if v is None else f"{v:.1f}" for v in res["test_per_exit"])
        log(
            f"[{i + 1}/{len(runs)}] {run.key}: test {res['metric']:.2f} at epoch {res['selected_epoch']} exit "
            f"{res['selected_exit']} (val {res['val_selected']:.2f}) | every exit {exits} | final "
            f"{res['final_metric']:.2f} | {res['step_ms']:.0f} ms/step, {res['wall_s']:.0f} s"
        )
        results.append(res)
    return results


# -- rows --------------------------------------------------------------------------------------------------------
COLUMNS = (
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
    "img_size",
    "train_size",
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
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
    for r in result["grad_norms"]["records"]:
        if r["step"] == step:
            first, last = r["grad_norms"][0], r["grad_norms"][-1]
            return first / last if last else float("nan")
    return float("nan")


def _deepest_loss(result: dict[str, Any]) -> float:
    """The last epoch's training loss of the deepest head (BP: its one loss)."""
    return result["history"][-1]["train_loss"][-1]


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
        lmean, lstd = _mean_std([_deepest_loss(r) for r in rs])
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


def _deepest(record: dict[str, Any]) -> float:
    return record["train_loss"][-1]


# -- the harness: python -m benchmarks.run --bench depth -------------------------------------------------------
MODEL = "plain_cnn"
# what the depth bench fills when the user leaves it unset, by dataset and budget (the shape of DATASET_BUDGETS in
# benchmarks/plan.py, and it overrides that table's values for this bench). converged: the pilot
# (leaderboards/explore/depth/README.md) saw BP at depth 48 with BN still rising at epoch 24 and flat from about 40 of
# a 48-epoch schedule, the decoupled methods flat by epoch 12: 48 epochs for every method. quick: minutes per depth.
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "digits": {"quick": {"epochs": 4, "img_size": 16}, "converged": {"epochs": 48, "img_size": 16}},
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
        weight_decay=cfg.weight_decay, train_size=cfg.train_size, eval_size=cfg.eval_size, bn_recalib=cfg.bn_recalib,
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


# -- rendering ---------------------------------------------------------------------------------------------------
def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per (norm, init, depth, method), with Δ against BP of the same setting."""
    head = ["norm", "init", "depth", "K", "method", "test acc (selected)", "Δ vs bp", "exit per seed",
            "deepest exit", "final", "grad first/last @init", "ms/step"]  # fmt: skip
    bp = {(r["norm"], r["init"], r["depth"]): r for r in rows if r["method"] == "bp"}
    order = sorted(rows, key=lambda r: (r["norm"], r["init"], int(r["depth"]), METHODS.index(r["method"])))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in order:
        base = bp.get((r["norm"], r["init"], r["depth"]))
        delta = "" if base is None or r["method"] == "bp" else f"{r['metric_mean'] - base['metric_mean']:+.2f}"
        ratio = r["grad_first_over_last"]
        cells = [
            r["norm"], r["init"], str(r["depth"]), str(r["num_blocks"]) if r["method"] != "bp" else "1",
            r["method"], f"{r['metric_mean']:.2f} ± {r['metric_std']:.2f}", delta, str(r["selected_exit"]),
            _fmt(r["deepest_exit_mean"]), f"{r['final_mean']:.2f}", "-" if ratio is None else f"{ratio:.1e}",
            f"{r['step_ms']:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(rows_or_results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    seen = {(r["norm"], r["init"]) for r in rows_or_results}
    return [(n, i) for n in NORMS for i in INITS if (n, i) in seen]


def _grid(plt: Any, panels: Sequence[tuple[str, str]], size: tuple[float, float]) -> tuple[Any, Any]:
    """A 2×2 figure (rows: norm, columns: init) when all four panels are there, else one row; y axes shared."""
    rows = 2 if len(panels) == 4 else 1
    cols = len(panels) // rows
    return plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), sharey=True, squeeze=False)


def plot_accuracy_vs_depth(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Test accuracy (selected, mean ± std over seeds) against depth, one line per method, one panel per
    (norm, init); a decoupled method's deepest exit is drawn dashed beside it (which exit carries the result)."""
    plt = _pyplot()
    panels = _panels(rows)
    fig, axes = _grid(plt, panels, (4.4, 3.4))
    for ax, (norm, init) in zip(axes.flat, panels):
        for i, method in enumerate(METHODS):
            rs = sorted((r for r in rows if (r["norm"], r["init"], r["method"]) == (norm, init, method)),
                        key=lambda r: int(r["depth"]))  # fmt: skip
            if not rs:
                continue
            d = [int(r["depth"]) for r in rs]
            colour = f"C{i}"
            ax.errorbar(d, [r["metric_mean"] for r in rs], yerr=[r["metric_std"] for r in rs], marker="o",
                        capsize=3, color=colour, label=f"{method} (selected)")  # fmt: skip
            if method != "bp":
                ax.plot(d, [r["deepest_exit_mean"] for r in rs], linestyle="--", color=colour, alpha=0.7,
                        label=f"{method} deepest exit")  # fmt: skip
        ax.set_title(f"norm={norm}, init={init}", fontsize="medium")
        ax.set_xlabel("depth (conv layers)")
        ax.set_xticks(sorted({int(r["depth"]) for r in rows}))
        ax.axhline(10, color="grey", linestyle=":", linewidth=0.8)  # chance on 10 classes
        ax.grid(True, alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    axes.flat[0].legend(fontsize="x-small", loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _geo_mean(columns: Sequence[Sequence[float]]) -> list[float]:
    """Per layer, the geometric mean over seeds of positive finite norms (NaN when none)."""
    out = []
    for vals in zip(*columns):
        ok = [v for v in vals if v is not None and math.isfinite(v) and v > 0]
        out.append(math.exp(statistics.fmean(map(math.log, ok))) if ok else math.nan)
    return out


def _norms_at(result: dict[str, Any], step: int) -> list[float] | None:
    for r in result["grad_norms"]["records"]:
        if r["step"] == step:
            return r["grad_norms"]
    return None


def plot_grad_norms_per_depth(
    results: Sequence[dict[str, Any]], out_dir: str | Path, later_epoch: int = 2
) -> list[Path]:
    """One figure per depth (`grad_norms_depth<D>.png`), one panel per (norm, init): every layer's weight-gradient
    norm per method at initialisation (solid) and at the start of epoch `later_epoch` (dashed), geometric mean
    over seeds; dotted lines mark the decoupled blocks' boundaries."""
    plt = _pyplot()
    paths = []
    for depth in sorted({r["depth"] for r in results}):
        rs = [r for r in results if r["depth"] == depth]
        panels = _panels(rs)
        fig, axes = _grid(plt, panels, (5.0, 3.6))
        for ax, (norm, init) in zip(axes.flat, panels):
            curves: dict[str, list[float]] = {}
            styles: dict[str, dict[str, Any]] = {}
            ends: list[int] = []
            for i, method in enumerate(METHODS):
                mine = [r for r in rs if (r["norm"], r["init"], r["method"]) == (norm, init, method)]
                if not mine:
                    continue
                steps_per_epoch = mine[0]["steps"] // max(1, mine[0]["epochs"])
                for label, step, ls in (("init", 0, "-"), (f"epoch {later_epoch}", steps_per_epoch *
                                                             (later_epoch - 1), "--")):  # fmt: skip
                    norms = [n for n in (_norms_at(r, step) for r in mine) if n is not None]
                    if norms:
                        curves[f"{method} {label}"] = _geo_mean(norms)
                        styles[f"{method} {label}"] = {"color": f"C{i}", "linestyle": ls}
                if method != "bp" and not ends:
                    layers = mine[0]["grad_norms"]["layers"]
                    ends = [la["index"] + 1 for la, nxt in zip(layers, layers[1:]) if la["block"] != nxt["block"]]
            draw_grad_norms(ax, curves, f"depth {depth}: norm={norm}, init={init}", ends, styles=styles)
        fig.tight_layout()
        path = Path(out_dir) / f"grad_norms_depth{depth}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_loss_curves(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The deepest head's training loss per epoch (BP: its one loss), mean over seeds with a ±std band (the seed-to-
    seed spread, the paper's "convergence stability"); one row of panels per depth, one column per (norm, init)."""
    plt = _pyplot()
    depths = sorted({r["depth"] for r in results})
    panels = _panels(results)
    fig, axes = plt.subplots(len(depths), len(panels), figsize=(3.6 * len(panels), 2.6 * len(depths)),
                             sharex=True, squeeze=False)  # fmt: skip
    for row, d in zip(axes, depths):
        for ax, (norm, init) in zip(row, panels):
            for i, method in enumerate(METHODS):
                rs = [r for r in results if (r["depth"], r["norm"], r["init"], r["method"]) == (d, norm, init, method)]
                if not rs:
                    continue
                curves = [[h["train_loss"][-1] for h in r["history"]] for r in rs]
                n = min(map(len, curves))
                mean = [statistics.fmean(c[e] for c in curves) for e in range(n)]
                std = [statistics.stdev(c[e] for c in curves) if len(curves) > 1 else 0.0 for e in range(n)]
                xs = list(range(1, n + 1))
                ax.plot(xs, mean, color=f"C{i}", label=method)
                ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=f"C{i}", alpha=0.2)  # fmt: skip
            ax.set_title(f"depth {d}, {norm}, {init}", fontsize="small")
            ax.grid(True, alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel("deepest head's loss")
    axes[0][-1].legend(fontsize="x-small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render(rows: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """`table.md`, `accuracy_vs_depth.png`, `loss_curves.png` and one `grad_norms_depth<D>.png` per depth."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "table.md"
    table.write_text(format_table(rows) + "\n")
    return [table, plot_accuracy_vs_depth(rows, out / "accuracy_vs_depth.png"),
            plot_loss_curves(results, out / "loss_curves.png"), *plot_grad_norms_per_depth(results, out)]  # fmt: skip
