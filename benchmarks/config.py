"""Where the harness configuration used to live; kept so that code written against it still imports.

New code imports `benchmarks.settings` (what a user asks for), `benchmarks.options` (each bench's options) and
`benchmarks.plan` (resolve and check, list the runs).
"""

from .options import ENGINE_ORDER
from .plan import BUDGETS, DATASET_BUDGETS, budget_note, expand_models, resolve
from .settings import WANDB_MODES, RunConfig

__all__ = ["BUDGETS", "DATASET_BUDGETS", "ENGINE_ORDER", "WANDB_MODES", "RunConfig", "budget_note", "expand_models",
           "resolve"]  # fmt: skip
