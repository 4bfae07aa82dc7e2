"""Noise bench: the accuracy bench over a sweep of training-label noise rates (validation and test stay clean).

Build (noise is applied exactly, per seed, to the train split; each run's `noise_audit.json` lists what flipped) →
run → rows (one per model × method × rate) → `leaderboards/noise_<task>_<dataset>.csv`. Every rate is checked
against its kind and the dataset's classes by `prepare`, before anything trains (pair noise cannot reach 0.5).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import accuracy
from .settings import RunConfig

__all__ = ["prepare", "run", "runs"]

runs = accuracy.runs


def prepare(cfg: RunConfig, given: set[str], note: Callable[[str, Any, str], None]) -> None:
    """Every rate of the sweep against `--noise-kind` and the dataset (benchmarks.plan calls this)."""
    import datasets

    from .build import user_errors

    o = cfg.options
    for rate in o.noise_rates:
        with user_errors():
            try:
                datasets.check_noise(cfg.dataset, rate, o.noise_kind)
            except datasets.DatasetError as e:
                raise datasets.DatasetError(f"--noise-rates {rate:g} --noise-kind {o.noise_kind}: {e}") from None


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Train every method at every rate of the sweep; rows go to the noise leaderboard."""
    o = cfg.options
    log(f"noise sweep ({o.noise_kind}): rates {', '.join(f'{r:g}' for r in o.noise_rates)}")
    return accuracy.run(cfg, run_dir, run_id, env, log)
