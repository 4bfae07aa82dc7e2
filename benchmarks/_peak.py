"""The training peak the accuracy and noise tables report: tensors counted (`zoo.memory.measure_train_step`) in one
extra training step after the run, on a copy of the trained model, so the run itself is neither profiled nor
changed. The same measure as `--bench memory` and the pipeline's stages; the process's resident set (what the table
showed before) also held the data, allocator caches and whatever earlier runs of the process left behind."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from zoo.memory import MemoryBreakdown, measure_train_step
from zoo.train import Trainer

__all__ = ["training_peak"]


def training_peak(trainer: Trainer, source: Callable[[int], Any]) -> MemoryBreakdown:
    """Peak tensor memory of one training step (after one warm-up step: the optimizer state exists) of a copy of
    `trainer`'s model with its training settings, on the first batch of `source(0)` (a `zoo.train` batch source)."""
    x, y = next(iter(source(0)))
    probe = Trainer(copy.deepcopy(trainer.model), trainer.cfg, total_steps=10, device=trainer.device)
    return measure_train_step(probe, x, y)
