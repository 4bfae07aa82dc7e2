"""One selection rule for every method, on the validation split only: the best (epoch, exit) of a run.

After every epoch `Trainer.fit` measures each exit on the validation split (`record["val_per_block"]`). `SelectBest`
keeps the (epoch, exit) with the highest validation metric and a CPU copy of the weights at that epoch; at the end of
`fit` it puts those weights back and sets the model's exit to the selected one. For BP, whose only exit is its last
block, this is early stopping; for a decoupled method it is the best (epoch, exit) pair. Ties go to the earlier epoch,
then the earlier exit (the cheaper model). The test split is never seen here: `evaluate` reads the test metric at the
selected point, and also at the last epoch (`final`: the last weights, exit chosen on validation at the last epoch),
so a table can show both.

The reference code of the DeInfoReg paper picks the best block and epoch on the test set; see DESIGN.md, "How two
methods are compared". The weights are copied whenever a new best appears (only then), and `state_dict` carries them,
so a resumed run keeps its selection; the (epoch, exit) itself is recomputed from the trainer's history and checked.

Progressive-depth runs (`zoo.grow`) change the model's layout between epochs; restoring an earlier epoch's weights
does not undo that layout, so those runs should report the final view.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from .train import Callback, EvalResult, Trainer

__all__ = ["Selection", "SelectBest", "Views", "best_exit", "select"]


class Selection(NamedTuple):
    """A point of a run: `epoch` (1-based, as in the trainer's records), `exit` (0-based block) and its val metric."""

    epoch: int
    exit: int
    val_metric: float


class Views(NamedTuple):
    """Test results (every exit in `per_block`) at the `selected` point and at the last epoch (`final`)."""

    selected: EvalResult
    final: EvalResult


def best_exit(val_per_block: Sequence[float | None]) -> tuple[int, float] | None:
    """(exit, metric) of the best-scoring exit (ties: the earlier); None when no exit has a (finite) metric.

    A block without a head (BP's inner blocks) or not active has None and is never chosen."""
    best: tuple[int, float] | None = None
    for k, v in enumerate(val_per_block):
        if v is None or math.isnan(v):
            continue
        if best is None or v > best[1]:
            best = (k, float(v))
    return best


def select(history: Iterable[Mapping[str, Any]]) -> Selection | None:
    """The selection rule over a run's epoch records (`Trainer.history`): the best (epoch, exit) on validation;
    a later epoch wins only when strictly better. None when no record holds a validation metric."""
    chosen: Selection | None = None
    for record in history:
        found = best_exit(record.get("val_per_block") or [])
        if found is not None and (chosen is None or found[1] > chosen.val_metric):
            chosen = Selection(int(record["epoch"]), found[0], found[1])
    return chosen


def _cpu_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class SelectBest(Callback):
    """Keep the weights of the best (epoch, exit) on validation; restore them, and that exit, when `fit` ends.

    Put it before any checkpointing callback, so the checkpoint saved at an epoch's end includes that epoch's copy;
    save `state_dict()` beside `Trainer.state_dict()` and load it before resuming (`on_train_start` refuses a resumed
    trainer whose history it does not match). After `fit`: `selected`, `final` and `evaluate(trainer, test_loader)`.
    """

    def __init__(self) -> None:
        self.selected: Selection | None = None
        self.final: Selection | None = None  # last epoch, its best exit on validation (set when fit ends)
        self._weights: dict[str, torch.Tensor] | None = None  # at the selected epoch, on the CPU
        self._final_weights: dict[str, torch.Tensor] | None = None
        self._restored = False

    # -- the callback ----------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer) -> None:
        expected = select(trainer.history)
        mine = None if self.selected is None else self.selected[:2]
        if (None if expected is None else expected[:2]) != mine:
            raise RuntimeError(
                f"SelectBest holds selection {mine} but the trainer's history selects "
                f"{None if expected is None else expected[:2]}: load the SelectBest.state_dict() saved with the "
                f"trainer's state before resuming (and put SelectBest before the checkpoint callback)"
            )

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if "val_per_block" not in record:
            raise ValueError("SelectBest selects on the validation split: pass `val` to Trainer.fit")
        found = best_exit(record["val_per_block"])
        if found is not None and (self.selected is None or found[1] > self.selected.val_metric):
            self.selected = Selection(int(record["epoch"]), found[0], found[1])
            self._weights = _cpu_copy(trainer.model)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.selected is None:
            raise ValueError("SelectBest saw no validation metric: train at least one epoch with `val`")
        if self._restored:  # a second fit on a finished trainer: the model already holds the selected weights
            return
        last = trainer.history[-1]
        found = best_exit(last.get("val_per_block") or [])
        if found is None:
            raise ValueError(f"epoch {last['epoch']} has no validation metric on any exit: no final view to keep")
        self.final = Selection(int(last["epoch"]), found[0], found[1])
        self._final_weights = _cpu_copy(trainer.model)
        self.restore(trainer.model)

    # -- after fit ------------------------------------------------------------------------------------------------
    def restore(self, model: torch.nn.Module, which: str = "selected") -> None:
        """Load the `selected` (or `final`) weights into `model` and set its exit accordingly."""
        point, weights = (self.selected, self._weights) if which == "selected" else (self.final, self._final_weights)
        if point is None or weights is None:
            raise ValueError(f"no {which} point to restore: run Trainer.fit with this callback first")
        model.load_state_dict(weights)
        model.set_best_block(point.exit)
        self._restored = True

    def evaluate(self, trainer: Trainer, loader: Iterable, adaptive: bool = False) -> Views:
        """Every exit's metric on `loader` (the test split) at the final point, then at the selected one; the model
        is left at the selected point. `views.selected.best` is the headline metric, `views.final.best` the
        last-epoch figure; both `per_block` lists hold every exit."""
        self.restore(trainer.model, "final")
        final = trainer.evaluate(loader, adaptive=adaptive)
        self.restore(trainer.model, "selected")
        selected = trainer.evaluate(loader, adaptive=adaptive)
        return Views(selected, final)

    def weights(self, which: str = "selected") -> dict[str, torch.Tensor]:
        """The CPU copy of the `selected` (or `final`) weights."""
        w = self._weights if which == "selected" else self._final_weights
        if w is None:
            raise ValueError(f"no {which} weights yet")
        return w

    # -- resume ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The selection and its weights (tensors and plain values: `torch.load(weights_only=True)` reads it)."""
        if self.selected is None:
            return {"version": 1, "selected": None, "weights": None}
        return {"version": 1, "selected": list(self.selected), "weights": self._weights}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sel = state.get("selected")
        self.selected = None if sel is None else Selection(int(sel[0]), int(sel[1]), float(sel[2]))
        self._weights = None if sel is None else dict(state["weights"])
        self.final, self._final_weights, self._restored = None, None, False
