"""Train one (model, method, seed, noise rate) run with `zoo.train.Trainer`, resumably, and measure it.

Each run owns a folder: `metrics.jsonl` (one line per epoch), `noise_audit.json`, `checkpoint/` (saved with
`zoo.checkpoints.save_checkpoint` after every epoch, with the trainer state), `result.json` (written last: a run
with it is finished and is skipped on `--resume`). The test metric reported is the one of the exit chosen on the
validation split; the test split is never used to choose anything.

Data order is a pure function of (seed, epoch), so a run resumed mid-epoch replays exactly the batches it had not
seen: together with the trainer's RNG state this makes a resumed CPU run end with the same metrics.

Peak memory: on CUDA `torch.cuda.max_memory_allocated`; on CPU the growth of the process's peak resident set
(VmHWM in /proc/self/status, reset per run through /proc/self/clear_refs) over the resident set at the start of the
run, measured after `malloc_trim` has handed freed heap pages back to the system (so earlier runs in the same process
do not hide this one's allocations): it counts tensors, autograd buffers and allocator caches.
"""

from __future__ import annotations

import gc
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
from torch.utils.data import DataLoader, Subset

import datasets
import zoo
from zoo.train import NonFiniteLossError, TrainConfig, Trainer, seed_everything

from ._wandb import start_run
from .config import RunConfig

__all__ = [
    "Interrupted",
    "RunFailed",
    "RunSpec",
    "PeakMemory",
    "build_datasets",
    "build_model",
    "install_sigint",
    "resolve_device",
    "train_one",
]


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- memory ------------------------------------------------------------------------------------------------
def _proc_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block of work in MB (see the module docstring for what is counted on CPU)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss_growth"
        self._base = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = 0
            return
        gc.collect()
        _malloc_trim()  # hand freed heap pages back, so the resident set is close to live memory
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass
        self._base = _proc_kb("VmRSS") or 0

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        hwm = _proc_kb("VmHWM")
        return float("nan") if hwm is None else max(0, hwm - self._base) / 1024


# -- build -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid."""

    model: str
    method: str
    seed: int
    noise_rate: float

    @property
    def key(self) -> str:
        return f"{self.model.replace('/', '_')}-{self.method}-noise{self.noise_rate:g}-seed{self.seed}"


def build_datasets(cfg: RunConfig, seed: int, noise_rate: float) -> tuple[Any, Any, Any, dict | None]:
    """Train (noisy), validation and test splits (clean), limited by train_size / eval_size."""
    info = datasets.get_dataset_info(cfg.dataset)
    common = dict(root=cfg.data_root, image_size=cfg.img_size, seed=0)
    sized = info.name == "shapes"  # procedural: generate only the images we use
    kw_train = {"size": cfg.train_size} if sized and cfg.train_size else {}
    kw_eval = {"size": cfg.eval_size} if sized and cfg.eval_size else {}
    train = datasets.create_dataset(
        cfg.dataset,
        "train",
        noise_rate=noise_rate,
        noise_kind=cfg.noise_kind,
        noise_seed=seed,
        train_aug=cfg.train_aug,
        **common,
        **kw_train,
    )
    audit = getattr(train, "noise_audit", None)
    val = datasets.create_dataset(cfg.dataset, "val", **common, **kw_eval)
    test = datasets.create_dataset(cfg.dataset, "test", **common, **kw_eval)
    if not sized:
        # a fixed subset (independent of the seed) so every method and seed sees the same images
        train = _subset(train, cfg.train_size)
        val, test = _subset(val, cfg.eval_size), _subset(test, cfg.eval_size)
    return train, val, test, audit


def _subset(ds: Any, n: int | None) -> Any:
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(12345))[:n].sort().values.tolist()
    sub = Subset(ds, idx)
    sub.embedded = getattr(ds, "embedded", False)
    return sub


def _num_workers(ds: Any) -> int:
    return 0 if getattr(ds, "embedded", False) else min(4, os.cpu_count() or 1)


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled full batches of one epoch, a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    bs = min(batch_size, n)
    return [perm[i : i + bs] for i in range(0, n - bs + 1, bs)]


def _train_loader(ds: Any, batches: list[list[int]], seed: int, epoch: int) -> DataLoader:
    return DataLoader(
        ds,
        batch_sampler=batches,
        num_workers=_num_workers(ds),
        generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch),
        pin_memory=torch.cuda.is_available(),
    )


def eval_loader(ds: Any, batch_size: int) -> DataLoader:
    return datasets.create_loader(ds, batch_size, shuffle=False, num_workers=_num_workers(ds))


def build_model(cfg: RunConfig, name: str, method: str) -> zoo.DecoupledModel:
    info = datasets.get_dataset_info(cfg.dataset)
    kw = dict(cfg.model_kwargs)
    kw.setdefault("img_size", cfg.img_size or info.image_size)
    return zoo.create_model(
        name,
        task=cfg.task,
        method=method,
        num_classes=info.num_classes,
        num_blocks=cfg.num_blocks,
        arch=cfg.arch if cfg.task == "seg" else None,
        **kw,
    )


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, loader: DataLoader, device: torch.device, max_batches: int = 50) -> None:
    """Recompute every BatchNorm's running statistics as an exact average over (up to `max_batches`) batches.

    With budgets of a few dozen steps, momentum-averaged statistics lag far behind fast-moving weights (a BP ResNet
    at 95% with batch statistics scored 10% with its running ones); recomputing them, as SWA's `update_bn` does,
    gives every method the statistics of its final weights. Labels are not used.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
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


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- train -------------------------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _blocks_str(values: list[float | None]) -> str:
    return " ".join("-" if v is None else f"{v:.1f}" for v in values)


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
        return json.loads(done.read_text())
    device = resolve_device(cfg.device)
    seed_everything(spec.seed)
    train_ds, val_ds, test_ds, audit = build_datasets(cfg, spec.seed, spec.noise_rate)
    if audit is not None:
        datasets.noise.save_audit(audit, run_dir / "noise_audit.json")
    seed_everything(spec.seed)
    model = build_model(cfg, spec.model, spec.method)
    steps_per_epoch = len(_epoch_batches(len(train_ds), cfg.batch_size, spec.seed, 0))
    total = steps_per_epoch * cfg.epochs
    tcfg = TrainConfig(optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay)
    trainer = Trainer(model, tcfg, total_steps=total, device=device)
    val_loader = eval_loader(val_ds, cfg.batch_size)
    bn_loader = eval_loader(train_ds, cfg.batch_size)

    def evaluate(loader: DataLoader, adaptive: bool):
        if cfg.bn_recalib:
            recalibrate_bn(model, bn_loader, device)
        return trainer.evaluate(loader, adaptive=adaptive)

    ckpt = run_dir / "checkpoint"
    progress: dict[str, Any] = {"epoch_step": 0, "history": [], "step_times": []}
    if (ckpt / "training_state.pt").exists():
        from zoo.checkpoints import load_training_state, resume_trainer

        resume_trainer(trainer, ckpt)
        progress = dict((load_training_state(ckpt) or {}).get("harness") or progress)
        log(f"{position}{spec.key}: resuming at epoch {trainer.epoch + 1}, step {trainer.step}")
    metrics_path = run_dir / "metrics.jsonl"
    if trainer.step == 0 and metrics_path.exists():
        metrics_path.unlink()

    wb_config = {**cfg.to_dict(), "model": spec.model, "method": spec.method, "seed": spec.seed}
    wb_config.update(noise_rate=spec.noise_rate, run_key=spec.key, steps_per_epoch=steps_per_epoch)
    wb = start_run(cfg.wandb, cfg.wandb_project, run_dir, spec.key, group, wb_config, [cfg.bench, cfg.task], log)

    def save(final: bool = False, extra: dict | None = None) -> None:
        if not cfg.checkpoint and not final:
            return
        from zoo.checkpoints import save_checkpoint

        state = None
        if not final:  # the final checkpoint keeps weights only: a finished run is never resumed
            state = trainer.state_dict()
            state["harness"] = progress
        meta = {"dataset": cfg.dataset, "noise_rate": spec.noise_rate, "noise_kind": cfg.noise_kind}
        meta.update(seed=spec.seed, step=trainer.step, epoch=trainer.epoch, **(extra or {}))
        save_checkpoint(model, ckpt, metadata=meta, trainer_state=state)

    mem = PeakMemory(device)
    mem.start()
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=trainer.step, desc=f"{position}{spec.key}", unit="step", leave=False)
    try:
        while trainer.epoch < cfg.epochs:
            batches = _epoch_batches(len(train_ds), cfg.batch_size, spec.seed, trainer.epoch)
            start = int(progress["epoch_step"])
            loss_sum: list[float] = list(progress.get("loss_sum") or [])
            for i, (x, y) in enumerate(_train_loader(train_ds, batches[start:], spec.seed, trainer.epoch)):
                _sync(device)
                t0 = time.perf_counter()
                out = trainer.train_step(x, y)
                _sync(device)
                progress["step_times"].append(time.perf_counter() - t0)
                loss_sum = [a + b for a, b in zip(loss_sum, out["losses"])] if loss_sum else list(out["losses"])
                progress["epoch_step"] = start + i + 1
                progress["loss_sum"] = loss_sum
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sum(out['losses']):.3f}")
                stop_test = cfg.interrupt_after_steps is not None and trainer.step >= cfg.interrupt_after_steps
                if _STOP["requested"] or stop_test:
                    save()
                    wb.finish(exit_code=130)
                    raise Interrupted(f"{spec.key}: stopped at step {trainer.step}; checkpoint in {ckpt}")
            trainer.epoch += 1
            val = evaluate(val_loader, adaptive=False)
            n = max(1, int(progress["epoch_step"]))
            rec = {
                "epoch": trainer.epoch,
                "step": trainer.step,
                "train_loss": [s / n for s in loss_sum],
                "val_per_block": val.per_block,
                "val_last": val.last,
                "lr": trainer.schedulers[0].get_last_lr()[0],
            }
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            progress["history"].append(rec)
            progress["epoch_step"], progress["loss_sum"] = 0, []
            wlog = {"epoch": trainer.epoch, f"val/{val.metric_name}_last": val.last}
            for k, v in enumerate(val.per_block):
                if v is not None:
                    wlog[f"val/{val.metric_name}_block{k + 1}"] = v
            for k, v in enumerate(rec["train_loss"]):
                wlog[f"train/loss_head{k + 1}"] = v
            wb.log(wlog, step=trainer.step)
            if bar is not None:
                bar.write(f"{position}{spec.key} epoch {trainer.epoch}: val {val.metric_name} per block "
                          f"{_blocks_str(val.per_block)}")  # fmt: skip
            save()
    except NonFiniteLossError as e:
        wb.finish(exit_code=1)
        last = f"last good checkpoint: {ckpt}" if (ckpt / "config.json").exists() else "no checkpoint was saved yet"
        raise RunFailed(f"{spec.key}: {e}; {last}") from e
    finally:
        if bar is not None:
            bar.close()
    peak = mem.peak_mb()

    val = evaluate(val_loader, adaptive=False)
    best = trainer.select_best_block(val)
    test = trainer.evaluate(eval_loader(test_ds, cfg.batch_size), adaptive=spec.method != "bp")  # same BN stats
    times = progress["step_times"][2:] or progress["step_times"]  # the first steps warm caches up
    step_s = statistics.median(times) if times else float("nan")
    result = {
        "model": spec.model,
        "method": spec.method,
        "seed": spec.seed,
        "noise_rate": spec.noise_rate,
        "metric_name": test.metric_name,
        "metric": test.best,
        "best_block": best + 1,
        "num_blocks": model.num_blocks,
        "val_best": val.per_block[best],
        "per_block": test.per_block,
        "last": test.last,
        "adaptive": test.adaptive,
        "adaptive_depth": test.adaptive_depth,
        "params": count_params(model),
        "step_ms": 1000 * step_s,
        "samples_per_s": cfg.batch_size / step_s if step_s and not math.isnan(step_s) else float("nan"),
        "peak_mem_mb": peak,
        "mem_kind": mem.kind,
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "train_size": len(train_ds),
        "noise_flipped": (audit or {}).get("num_flipped", 0),
        "history": progress["history"],
    }
    save(final=True, extra={"metrics": {k: result[k] for k in ("metric", "best_block", "per_block", "adaptive")}})
    summary = {k: v for k, v in result.items() if k not in ("history", "per_block")}
    wb.summary(summary)
    cols = ["block", f"test_{test.metric_name}", "chosen_on_val"]
    wb.table("results", cols, [[k + 1, v, k == best] for k, v in enumerate(test.per_block)])
    wb.artifact(ckpt, f"ckpt-{spec.key}".replace("=", "_"), "model", metadata=summary)
    wandb_dir = wb.dir
    result["wandb_dir"] = str(Path(wandb_dir).parent) if wandb_dir else None
    wb.finish()
    _write_json(done, result)
    return result
