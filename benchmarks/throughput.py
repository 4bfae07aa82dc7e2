"""Throughput bench: time and memory of one training step of each method on one device.

Build (each method's model, one real batch of the dataset) → run (`warmup` untimed steps, then `steps` timed ones;
the median is reported, robust to a shared CPU) → rows → `leaderboards/throughput_<task>_<dataset>.csv`, with each
method's step time as a ratio of BP's. With `--stages S` (S > 1) the multi-device pipeline bench
(`benchmarks.pipeline`) runs instead. Either way the rows also go to `<run dir>/rows.json` and to one W&B run
(`<run dir>/runs/throughput/wandb`): a `rows` table and a summary keyed by model and method or engine.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.train import TrainConfig, Trainer, seed_everything

from ._runner import PeakMemory, _sync, build_datasets, build_model, count_params, resolve_device
from ._wandb import start_run
from .config import ConfigError, RunConfig
from .results import append_rows

__all__ = ["COLUMNS", "run", "time_steps"]

COLUMNS = (
    "bench",
    "task",
    "model",
    "arch",
    "model_kwargs",
    "img_size",
    "method",
    "num_blocks",
    "dataset",
    "batch_size",
    "stages",
    "steps",
    "params",
    "step_ms",
    "step_ms_std",
    "ratio_vs_bp",
    "samples_per_s",
    "peak_mem_mb",
    "mem_kind",
    "device",
    "torch",
    "commit",
    "date",
    "run_id",
)


def time_steps(trainer: Trainer, x: Any, y: Any, steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` timed training steps after `warmup` untimed ones."""
    for _ in range(warmup):
        trainer.train_step(x, y)
    times = []
    for _ in range(steps):
        _sync(trainer.device)
        t0 = time.perf_counter()
        trainer.train_step(x, y)
        _sync(trainer.device)
        times.append(time.perf_counter() - t0)
    return times


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Time every model × method; append rows; print the table."""
    if cfg.stages > 1:
        try:
            from . import pipeline  # the multi-device pipeline bench (its own module)
        except ImportError as e:
            raise ConfigError(f"--stages {cfg.stages} needs benchmarks.pipeline, which cannot be imported: {e}") from e
        rows = pipeline.run(cfg)
        _record(cfg, run_dir, run_id, rows, log)
        return rows
    device = resolve_device(cfg.device)
    train, _, _, _ = build_datasets(cfg, cfg.seeds[0], 0.0)
    n = min(cfg.batch_size, len(train))
    items = [train[i] for i in range(n)]
    import torch

    x = torch.stack([a for a, _ in items])
    y = torch.stack([torch.as_tensor(b) for _, b in items])
    rows: list[dict[str, Any]] = []
    for model_name in cfg.model:
        for method in cfg.methods:
            seed_everything(cfg.seeds[0])
            model = build_model(cfg, model_name, method)
            trainer = Trainer(model, TrainConfig(optimizer=cfg.optimizer, lr=cfg.lr), total_steps=10**6, device=device)
            mem = PeakMemory(device)
            mem.start()
            times = time_steps(trainer, x, y, cfg.steps, cfg.warmup)
            med = statistics.median(times)
            rows.append(
                {
                    "bench": "throughput",
                    "task": cfg.task,
                    "model": model_name,
                    "arch": (cfg.arch or "unet") if cfg.task == "seg" else "",
                    "model_kwargs": ";".join(f"{k}={v}" for k, v in sorted(cfg.model_kwargs.items())),
                    "img_size": cfg.img_size or "",
                    "method": method,
                    "num_blocks": model.num_blocks,
                    "dataset": cfg.dataset,
                    "batch_size": n,
                    "stages": 1,
                    "steps": cfg.steps,
                    "params": count_params(model),
                    "step_ms": 1000 * med,
                    "step_ms_std": 1000 * statistics.stdev(times) if len(times) > 1 else 0.0,
                    "samples_per_s": n / med,
                    "peak_mem_mb": mem.peak_mb(),
                    "mem_kind": mem.kind,
                    **env,
                    "run_id": run_id,
                }
            )
            log(f"{model_name} {method}: {1000 * med:.1f} ms/step, {n / med:.1f} samples/s, "
                f"peak {rows[-1]['peak_mem_mb']:.0f} MB")  # fmt: skip
            del trainer, model
    bp = {r["model"]: r["step_ms"] for r in rows if r["method"] == "bp"}
    for r in rows:
        r["ratio_vs_bp"] = r["step_ms"] / bp[r["model"]] if r["model"] in bp else None
    path = Path(cfg.leaderboard_dir) / f"throughput_{cfg.task}_{cfg.dataset}.csv"
    append_rows(path, rows, COLUMNS)
    _record(cfg, run_dir, run_id, rows, log)
    log(f"\nthroughput, {cfg.task} on {cfg.dataset}, batch {n}; rows appended to {path}")
    for r in rows:
        ratio = "" if r["ratio_vs_bp"] is None else f"  ({r['ratio_vs_bp']:.2f}× bp)"
        log(f"  {r['model']:<16} {r['method']:<10} {r['step_ms']:8.1f} ms/step{ratio}  {r['peak_mem_mb']:7.0f} MB")
    return rows


def _summary_key(r: dict[str, Any]) -> str:
    if "engine" not in r:  # one device: model / method
        return f"{r['model']}/{r['method']}"
    m = f"/M{r['micro_batches']}" if r["engine"] in ("gpipe", "1f1b") else ""
    mb = f"/batch{r['batch_size']}" if r["engine"] == "bp-single-mb" else ""
    return f"{r['model']}/{r['engine']}{m}{mb}"


def _record(cfg: RunConfig, run_dir: Path, run_id: str, rows: list[dict[str, Any]], log: Callable[[str], None]):
    """rows.json in the run folder, and one W&B run with the rows as a table and the headline figures as summary."""
    (run_dir / "rows.json").write_text(json.dumps(rows, indent=1, default=float))
    if not rows:
        return
    figures = ("samples_per_s", "step_ms", "ratio_vs_bp", "speedup_vs_bp", "speedup_vs_pipelining_bp", "peak_mem_mb")
    wb = start_run(
        cfg.wandb, cfg.wandb_project, run_dir / "runs" / "throughput", f"{run_id}-throughput", run_id,
        cfg.to_dict(), ["throughput", cfg.task, f"stages{cfg.stages}"], log,
    )  # fmt: skip
    columns = list(rows[0])
    wb.table("rows", columns, [[r.get(c) for c in columns] for r in rows])
    wb.summary({f"{_summary_key(r)}/{k}": r[k] for r in rows for k in figures if r.get(k) not in (None, "")})
    wb.finish()
