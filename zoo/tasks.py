"""The tasks the zoo trains and their defaults: one table that the library, the harness and the CLIs read.

`dataset` names the embedded default data of a task (the harness resolves it; the library never loads data).
"""

from __future__ import annotations

from typing import Any

from .errors import UserError

__all__ = ["TASKS", "TASK_DEFAULTS", "check_task"]

TASKS = ("cls", "seg")

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # classification: a timm classifier (or a paper model) on the embedded 8×8 digits, upscaled
    "cls": {"arch": None, "dataset": "digits", "epochs": 3, "batch_size": 64},
    # segmentation: an SMP architecture on an encoder, on the procedural shapes set
    "seg": {"arch": "unet", "dataset": "shapes", "epochs": 2, "batch_size": 16},
}


def check_task(task: str | None) -> str | None:
    """`task` unchanged if valid (None passes); else a UserError listing the tasks."""
    if task is not None and task not in TASKS:
        raise UserError(f"unknown task {task!r}; valid choices: {', '.join(TASKS)}")
    return task
