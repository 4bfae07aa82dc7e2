"""Depth bench training core (issue 25): does decoupling rescue deep plain networks?

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
`result.json` in the run folder); `run_grid` trains many, resumably. The rows made from results live in
benchmarks/_depth_rows.py, the harness hooks in benchmarks/depth.py, the table and plots in leaderboards/_depth.py.
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
from zoo.diagnostics import GradNorms, activation_scales
from zoo.runtime import resolve_device, sync
from zoo.train import Callback, Trainer, TrainingStopped, seed_everything

from ._peak import training_peak
from ._wandb import start_run
from .build import EpochBatches, eval_loader, user_errors

__all__ = ["DEPTHS", "INITS", "METHODS", "NORMS", "DepthRecipe", "DepthRun", "build_model", "grid", "run_grid",
           "select_point", "train_run"]  # fmt: skip

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
    warmup_epochs: float = 0.0  # linear warm-up over the first epochs, then the cosine
    grad_clip: float | None = None  # clip each block's gradient norm (BP: the whole model's); None: no clipping
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
    from ._runner import train_config  # the harness's one recipe → TrainConfig (warm-up epochs → steps)

    trainer = Trainer(model, train_config(recipe, len(source)), total_steps=total, device=device)
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
    mem = training_peak(trainer, source)  # tensors counted in one extra step on a copy (benchmarks/_peak.py)
    peak = mem.peak_mb

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
        "mem_kind": mem.source,
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
