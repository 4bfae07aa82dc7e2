"""Train one (model, method, seed, noise rate) run through `zoo.train.Trainer.fit`, resumably, and measure it.

The training loop is zoo's; the harness adds what a benchmark run needs through callbacks: tqdm progress with ETA,
per-epoch `metrics.jsonl`, W&B logging, a checkpoint after every epoch (with the trainer state, so `--resume`
continues mid-run) and Ctrl-C handling. Each run owns a folder: `metrics.jsonl`, `noise_audit.json` (and
`noise_audit_val.json` under the noisy-validation protocol), `checkpoint/`, and `result.json` (written last: a run
with it is finished and is skipped on `--resume`).

One selection rule for every method (`zoo.selection.SelectBest`, DESIGN.md "How two methods are compared"): the run
keeps the (epoch, exit) with the best validation metric (BP: its one exit, i.e. early stopping), and the headline
test metric (`metric`, `per_block`) is read there; `final_*` is the last epoch with its exit chosen on validation.
The final checkpoint holds the selected weights. The test split is never used to choose anything. The grow bench's
variants (`spec.variant`) report the final view for every variant alike: progressive growth changes the model's
layout between epochs, which restoring an earlier epoch's weights would not undo.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import datasets
from zoo.checkpoints import load_training_state, resume_trainer, save_checkpoint
from zoo.errors import UserError
from zoo.runtime import resolve_device
from zoo.selection import SelectBest, Selection
from zoo.train import Callback, NonFiniteLossError, TrainConfig, Trainer, TrainingStopped, seed_everything

from ._growth import GrowthCallback, make_model
from ._peak import training_peak
from ._wandb import start_run
from .build import EpochBatches, build_datasets, eval_loader
from .settings import RunConfig

__all__ = ["Interrupted", "RunFailed", "RunSpec", "install_sigint", "recalibrate_bn", "train_one", "train_config"]


class Interrupted(Exception):
    """Ctrl-C (or --interrupt-after-steps): a checkpoint was saved; `--resume` continues from it."""


class RunFailed(Exception):
    """A run cannot go on (non-finite loss): the message names block, method and step."""


_STOP = {"requested": False}


def install_sigint() -> None:
    """First Ctrl-C: finish the current step, save a checkpoint, stop. Second Ctrl-C: stop at once."""

    def handler(signum: int, frame: Any) -> None:
        if _STOP["requested"]:
            raise KeyboardInterrupt
        _STOP["requested"] = True
        print("\nCtrl-C: saving a checkpoint after this step (press again to stop at once)", flush=True)

    signal.signal(signal.SIGINT, handler)


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    model: str
    method: str
    seed: int
    noise_rate: float
    variant: str = ""  # grow bench: progressive | all_at_once | extended | scratch (benchmarks/_growth.py)
    val_noise: bool = False  # noisy-validation protocol (`--val-noise`): validation labels noisy like training's

    @property
    def key(self) -> str:
        key = f"{self.model.replace('/', '_')}-{self.method}-noise{self.noise_rate:g}-seed{self.seed}"
        key += "-valnoisy" if self.val_noise else ""
        return f"{key}-{self.variant}" if self.variant else key

    @property
    def val_protocol(self) -> str:
        """`clean` (a trusted validation set) or `noisy` (validation labels noisy like the training labels)."""
        return "noisy" if self.val_noise else "clean"


def train_config(cfg: RunConfig | Any, steps_per_epoch: int = 0) -> TrainConfig:
    """The optimizer settings of a run (every bench trains with these; `cfg` is a RunConfig or the depth bench's
    DepthRecipe, which share these fields); `--warmup-epochs` becomes warm-up steps with the run's `steps_per_epoch`
    (the timing benches, which have no epochs, pass 0: no warm-up)."""
    return TrainConfig(
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        grad_clip=cfg.grad_clip or None,
    )


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, loader: DataLoader, device: torch.device, max_batches: int = 50) -> None:
    """Recompute every BatchNorm's running statistics as an exact average over (up to `max_batches`) batches.

    With budgets of a few dozen steps, momentum-averaged statistics lag far behind fast-moving weights (a BP ResNet
    at 95% with batch statistics scored 10% with its running ones); recomputing them, as SWA's `update_bn` does,
    gives every method the statistics of its final weights. Labels are not used. Frozen and inactive blocks
    (`zoo.grow`) keep theirs: they are not trained, and a frozen block runs in eval mode.
    """
    skip = {id(m) for k, b in enumerate(model.blocks) if b.frozen or k >= model.num_active for m in b.modules()}
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
           and id(m) not in skip]  # fmt: skip
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    for i, (x, _) in enumerate(loader):
        if i >= max_batches:
            break
        model.forward_blocks(x.to(device))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def _blocks_str(values: list[float | None]) -> str:
    return " ".join("-" if v is None else f"{v:.1f}" for v in values)


# -- the harness's callbacks -------------------------------------------------------------------------------------
class _Progress(Callback):
    """A tqdm bar over every step of the run, with ETA and the current loss; one line per epoch."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.bar = total, desc, None

    def on_train_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, initial=trainer.step, desc=self.desc, unit="step", leave=False)

    def on_step(self, trainer: Trainer, out: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{sum(out['losses']):.3f}")

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.bar.write(f"{self.desc} epoch {record['epoch']}: val {record['metric_name']} per block "
                       f"{_blocks_str(record['val_per_block'])}")  # fmt: skip

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Record(Callback):
    """metrics.jsonl and W&B, one record per epoch."""

    def __init__(self, path: Path, wb: Any):
        self.path, self.wb = path, wb

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        name = record["metric_name"]
        wlog = {"epoch": record["epoch"], f"val/{name}_last": record["val_last"]}
        wlog.update({f"val/{name}_block{k + 1}": v for k, v in enumerate(record["val_per_block"]) if v is not None})
        wlog.update({f"train/loss_head{k + 1}": v for k, v in enumerate(record["train_loss"])})
        self.wb.log(wlog, step=record["step"])


class _Checkpoint(Callback):
    """A resumable checkpoint after every epoch (with `--checkpoint`) and whenever the run is stopped."""

    def __init__(self, save: Callable[[], None], every_epoch: bool):
        self.save, self.every_epoch = save, every_epoch

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.every_epoch:
            self.save()

    def on_stop(self, trainer: Trainer) -> None:
        self.save()


class _StopOnRequest(Callback):
    """Stop after the current step on Ctrl-C, or after `after_steps` steps (tests)."""

    def __init__(self, after_steps: int | None):
        self.after_steps = after_steps

    def should_stop(self, trainer: Trainer) -> bool:
        return _STOP["requested"] or (self.after_steps is not None and trainer.step >= self.after_steps)


# -- one run -----------------------------------------------------------------------------------------------------
def train_one(
    cfg: RunConfig,
    spec: RunSpec,
    run_dir: Path,
    group: str,
    log: Callable[[str], None] = print,
    position: str = "",
) -> dict[str, Any]:
    """Train, select the exit on validation, test; returns the result dict (also written to result.json)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "result.json"
    if done.exists():
        log(f"{position}{spec.key}: finished earlier, reusing {done}")
        result = json.loads(done.read_text())
        if "selected_epoch" not in result:
            raise UserError(f"{done} was written before runs selected their (epoch, exit) on validation; its "
                            "figures are not comparable with new rows: rerun without --resume")  # fmt: skip
        return result
    device = resolve_device(cfg.device)
    train_ds, val_ds, test_ds, audit = build_datasets(cfg, spec.seed, spec.noise_rate)
    if audit is not None:
        datasets.noise.save_audit(audit, run_dir / "noise_audit.json")
    val_audit = getattr(val_ds, "noise_audit", None)
    if val_audit is not None:
        datasets.noise.save_audit(val_audit, run_dir / "noise_audit_val.json")
    seed_everything(spec.seed)
    model, grown_meta = make_model(cfg, spec.model, spec.method, spec.variant)
    source = EpochBatches(train_ds, cfg.batch_size, spec.seed)
    total = len(source) * cfg.epochs
    trainer = Trainer(model, train_config(cfg, len(source)), total_steps=total, device=device)
    val_loader = eval_loader(val_ds, cfg.batch_size)
    bn_loader = eval_loader(train_ds, cfg.batch_size)

    def evaluate(loader: DataLoader, adaptive: bool = False):
        if cfg.bn_recalib:
            recalibrate_bn(model, bn_loader, device)
        return trainer.evaluate(loader, adaptive=adaptive)

    ckpt = run_dir / "checkpoint"
    grow_at = cfg.opt("grow_at") if spec.variant == "progressive" else None
    schedule = GrowthCallback(grow_at, cfg.opt("freeze_overtaken"))
    sel = None if spec.variant else SelectBest()  # the grow bench reports every variant's final view (docstring)
    if (ckpt / "training_state.pt").exists():
        state = load_training_state(ckpt)
        if sel is not None:
            if "selection" not in state:
                raise UserError(f"{ckpt} was saved before runs selected their (epoch, exit) on validation and "
                                "holds no selection to resume: rerun without --resume")  # fmt: skip
            sel.load_state_dict(state["selection"])
        schedule.apply(trainer, int(state["epoch"]))  # the layout its optimizers were built for
        resume_trainer(trainer, ckpt)
        log(f"{position}{spec.key}: resuming at epoch {trainer.epoch + 1}, step {trainer.step}")
    metrics_path = run_dir / "metrics.jsonl"
    if trainer.step == 0 and metrics_path.exists():
        metrics_path.unlink()

    wb_config = {**cfg.to_dict(), "model": spec.model, "method": spec.method, "seed": spec.seed}
    wb_config.update(noise_rate=spec.noise_rate, run_key=spec.key, steps_per_epoch=len(source))
    wb = start_run(cfg.wandb, cfg.wandb_project, run_dir, spec.key, group, wb_config, [cfg.bench, cfg.task], log)

    def save(final: bool = False, extra: dict | None = None) -> None:
        # the final checkpoint keeps weights only: a finished run is never resumed
        # the recipe and its hash travel with the weights: a published checkpoint names the leaderboard rows it made
        meta = {"dataset": cfg.dataset, "noise_rate": spec.noise_rate, "noise_kind": cfg.opt("noise_kind")}
        meta.update(config_hash=cfg.config_hash(), budget=cfg.budget, recipe=cfg.recipe())
        meta.update(seed=spec.seed, step=trainer.step, epoch=trainer.epoch, **grown_meta, **(extra or {}))
        meta.update(val_protocol=spec.val_protocol)
        state = None if final else trainer.state_dict()
        if state is not None and sel is not None:
            state["selection"] = sel.state_dict()  # the selected epoch's weights: a resumed run keeps its choice
        save_checkpoint(model, ckpt, metadata=meta, trainer_state=state)

    progress = _Progress(total, f"{position}{spec.key}") if cfg.progress else None
    callbacks = [
        schedule,  # first: the records it completes and the layout the checkpoint saves
        *([sel] if sel is not None else []),  # before the checkpoint, which saves the epoch's selection with it
        _Record(metrics_path, wb),
        _Checkpoint(save, cfg.checkpoint),
        _StopOnRequest(cfg.interrupt_after_steps),
    ]
    t0 = time.perf_counter()
    try:
        trainer.fit(
            source, cfg.epochs, val=lambda t: evaluate(val_loader), callbacks=[*callbacks, progress or Callback()]
        )
    except TrainingStopped as e:
        wb.finish(exit_code=130)
        raise Interrupted(f"{spec.key}: {e}; checkpoint in {ckpt}") from None
    except NonFiniteLossError as e:
        wb.finish(exit_code=1)
        last = f"last good checkpoint: {ckpt}" if (ckpt / "config.json").exists() else "no checkpoint was saved yet"
        raise RunFailed(f"{spec.key}: {e}; {last}") from e
    finally:
        if progress is not None:
            progress.close()
    wall = time.perf_counter() - t0
    mem = training_peak(trainer, source)  # one extra step, tensors counted (benchmarks/_peak.py)

    # every epoch's validation left the BatchNorm statistics recalibrated for that epoch's weights, and both the
    # selected copy and the final weights carry them (a resumed run's too, saved after it): the test below uses
    # them, with no second pass over the training images
    test_loader = eval_loader(test_ds, cfg.batch_size)
    adaptive = spec.method != "bp"
    last = trainer.history[-1]
    if sel is not None:
        test, final = sel.evaluate(trainer, test_loader, adaptive=adaptive)  # the model ends at the selected point
        chosen, at_end = sel.selected, sel.final
    else:
        test = final = trainer.evaluate(test_loader, adaptive=adaptive)
        chosen = at_end = Selection(int(last["epoch"]), int(model.best_block), last["val_per_block"][model.best_block])
    times = trainer.step_times[2:] or trainer.step_times  # the first steps warm caches up
    step_s = statistics.median(times) if times else float("nan")
    result = {
        "model": spec.model,
        "method": spec.method,
        "seed": spec.seed,
        "noise_rate": spec.noise_rate,
        "metric_name": test.metric_name,
        "val_protocol": spec.val_protocol,
        # the headline: test at the (epoch, exit) selected on validation
        "metric": test.best,
        "best_block": chosen.exit + 1,
        "selected_epoch": chosen.epoch,
        "num_blocks": model.num_blocks,
        "val_best": chosen.val_metric,
        "per_block": test.per_block,
        "last": test.last,
        "adaptive": test.adaptive,
        "adaptive_depth": test.adaptive_depth,
        # the last epoch, its exit chosen on validation at that epoch
        "final_metric": final.best,
        "final_block": at_end.exit + 1,
        "final_epoch": at_end.epoch,
        "final_val": at_end.val_metric,
        "final_per_block": final.per_block,
        "final_last": final.last,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "step_ms": 1000 * step_s,
        "samples_per_s": cfg.batch_size / step_s if step_s and not math.isnan(step_s) else float("nan"),
        "peak_mem_mb": mem.peak_mb,
        "mem_kind": mem.source,
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "train_size": len(train_ds),
        "noise_flipped": (audit or {}).get("num_flipped", 0),
        "variant": spec.variant,
        "grown_from": grown_meta.get("grown_from"),
        "trained_blocks": [k + 1 for k in model.trained_blocks()],
        "trained_params": sum(p.numel() for k in model.trained_blocks() for p in model.blocks[k].parameters()),
        "block_steps": sum(r.get("block_steps", 0) for r in trainer.history),
        "train_s": sum(trainer.step_times),  # every training step's time, resumed sessions included
        "wall_s": wall,  # this session's fit: training and per-epoch validation
        "history": trainer.history,
    }
    # the weights saved are the selected ones (the model holds them): a published checkpoint is what the row reports
    metrics = {k: result[k] for k in ("metric", "best_block", "per_block", "adaptive", "final_metric", "final_block")}
    save(final=True, extra={"metrics": metrics, "selected_epoch": chosen.epoch, "final_epoch": at_end.epoch})
    summary = {k: v for k, v in result.items() if k not in ("history", "per_block", "final_per_block")}
    wb.summary(summary)
    cols = ["block", f"test_{test.metric_name}", f"final_test_{test.metric_name}", "chosen_on_val"]
    rows = [[k + 1, v, f, k == chosen.exit] for k, (v, f) in enumerate(zip(test.per_block, final.per_block))]
    wb.table("results", cols, rows)
    wb.artifact(ckpt, f"ckpt-{spec.key}".replace("=", "_"), "model", metadata=summary)
    wandb_dir = wb.dir
    result["wandb_dir"] = str(Path(wandb_dir).parent) if wandb_dir else None
    wb.finish()
    _write_json(done, result)
    return result
