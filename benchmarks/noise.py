"""Noise bench: the accuracy bench over a sweep of training-label noise rates (validation and test stay clean).

Build (noise is applied exactly, per seed, to the train split; each run's `noise_audit.json` lists what flipped) →
run → rows (one per model × method × rate) → `leaderboards/noise_<task>_<dataset>.csv`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import accuracy
from .config import RunConfig

__all__ = ["run"]


def run(
    cfg: RunConfig, run_dir: Path, run_id: str, env: dict[str, str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Train every method at every rate of `cfg.noise_rates`; rows go to the noise leaderboard."""
    log(f"noise sweep ({cfg.noise_kind}): rates {', '.join(f'{r:g}' for r in cfg.noise_rates)}")
    return accuracy.run(cfg, run_dir, run_id, env, log)
