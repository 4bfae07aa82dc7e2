"""Throughput bench: time and memory (tensors counted, `zoo.memory`) of one training step of each method on one device.

Build (each method's model, one real batch of the dataset) → run (`warmup` untimed steps, then `steps` timed ones;
the median is reported, robust to a shared CPU) → rows → `leaderboards/throughput_<task>_<dataset>.csv`, with each
method's step time as a ratio of BP's. The rows also go to `<run dir>/rows.json` and to one W&B run
(`<run dir>/runs/throughput/wandb`): a `rows` table and a summary keyed by model and method. The multi-device
pipeline is `--bench pipeline` (benchmarks/pipeline.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo.memory import measure_train_step
from zoo.runtime import resolve_device, sync
from zoo.train import Trainer, seed_everything

from ._runner import train_config
from .build import batch_pool, build_model
from .results import ENV_COLUMNS, SETUP_COLUMNS, append_rows, record_rows, setup_columns
from .settings import RunConfig

__all__ = ["COLUMNS", "run", "runs", "time_steps"]

COLUMNS = (
    *SETUP_COLUMNS,
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
    *ENV_COLUMNS,
    "run_id",
)


def time_steps(trainer: Trainer, x: Any, y: Any, steps: int, warmup: int) -> list[float]:
    """Seconds of each of `steps` timed training steps after `warmup` untimed ones."""
    for _ in range(warmup):
        trainer.train_step(x, y)
    times = []
    for _ in range(steps):
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.train_step(x, y)
        sync(trainer.device)
        times.append(time.perf_counter() - t0)
    return times


def runs(cfg: RunConfig) -> list[tuple[str, str]]:
    """(model, method) pairs, timed in this order."""
    return [(name, method) for name in cfg.model for method in cfg.methods]


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Time every model × method; append rows; print the table."""
    device = resolve_device(cfg.device)
    ((x, y),) = batch_pool(cfg, 1, cfg.seeds[0])
    n = x.shape[0]
    rows: list[dict[str, Any]] = []
    for model_name, method in runs(cfg):
        seed_everything(cfg.seeds[0])
        model = build_model(cfg, model_name, method)
        trainer = Trainer(model, train_config(cfg), total_steps=10**6, device=device)
        times = time_steps(trainer, x, y, cfg.options.steps, cfg.options.warmup)
        med = statistics.median(times)
        mem = measure_train_step(trainer, x, y)  # after the timed steps: the profiler stays out of the timing
        rows.append(
            {
                **setup_columns(cfg, "throughput", model_name, method, model.num_blocks),
                "batch_size": n,
                "stages": 1,
                "steps": cfg.options.steps,
                "params": sum(p.numel() for p in model.parameters()),
                "step_ms": 1000 * med,
                "step_ms_std": 1000 * statistics.stdev(times) if len(times) > 1 else 0.0,
                "samples_per_s": n / med,
                "peak_mem_mb": mem.peak_mb,
                "mem_kind": mem.source,
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
    record_rows(cfg, run_dir, run_id, rows, log)
    log(f"\nthroughput, {cfg.task} on {cfg.dataset}, batch {n}; rows appended to {path}")
    for r in rows:
        ratio = "" if r["ratio_vs_bp"] is None else f"  ({r['ratio_vs_bp']:.2f}× bp)"
        log(f"  {r['model']:<16} {r['method']:<10} {r['step_ms']:8.1f} ms/step{ratio}  {r['peak_mem_mb']:7.0f} MB")
    return rows
