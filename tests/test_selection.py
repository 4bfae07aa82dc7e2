"""The selection rule (zoo.selection): best (epoch, exit) on validation only, weights restored, kept across a resume.

The must-hold of issue 20: corrupting the test labels changes no selected epoch or exit.
"""

import copy
import io

import pytest
import torch

import zoo
from datasets import create_dataset, create_loader
from zoo.selection import SelectBest, Selection, best_exit, select
from zoo.train import Callback, EvalResult, TrainConfig, Trainer, TrainingStopped, seed_everything

torch.set_num_threads(1)

N, BATCH = 48, 16  # 3 steps per epoch


def _batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(N, 3, 16, 16, generator=g), torch.randint(0, 10, (N,), generator=g)

    def source(epoch: int, start: int):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(1000 * seed + epoch))
        for i in range(start, N // BATCH):
            idx = order[i * BATCH : (i + 1) * BATCH]
            yield x[idx], y[idx]

    return source


def _trainer(method: str = "deinforeg", total_steps: int = 4 * (N // BATCH)) -> Trainer:
    seed_everything(0)
    model = zoo.create_model("paper_vgg", method=method, num_classes=10, width=0.125, img_size=16)
    return Trainer(model, TrainConfig(lr=5e-3), total_steps=total_steps)


def _scripted(scores: list[list[float | None]]):
    """A `val` for Trainer.fit that returns scripted per-exit metrics, epoch by epoch."""

    def val(trainer: Trainer) -> EvalResult:
        per_block = scores[trainer.epoch - 1]
        return EvalResult("accuracy", per_block, last=per_block[-1])

    return val


class _Snapshots(Callback):
    """Every epoch's weights, for comparison with what SelectBest restores."""

    def __init__(self):
        self.weights = {}

    def on_epoch_end(self, trainer, record):
        self.weights[record["epoch"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _equal(a: dict, b: dict, skip=("best_block",)) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a if k not in skip)


# -- the rule --------------------------------------------------------------------------------------------------
def test_rule_best_pair_ties_to_earlier_epoch_then_earlier_exit():
    assert best_exit([None, 60.0, 70.0, 70.0]) == (2, 70.0)
    assert best_exit([None, None]) is None and best_exit([float("nan"), 5.0]) == (1, 5.0)
    history = [
        {"epoch": 1, "val_per_block": [50.0, 60.0, 55.0, 40.0]},
        {"epoch": 2, "val_per_block": [70.0, 65.0, 80.0, 80.0]},  # 80 at exits 3 and 4: the earlier exit
        {"epoch": 3, "val_per_block": [80.0, 60.0, 60.0, 79.0]},  # 80 again: the earlier epoch keeps it
        {"epoch": 4, "val_per_block": [10.0, 20.0, 30.0, 40.0]},
    ]
    assert select(history) == Selection(2, 2, 80.0)
    assert select([{"epoch": 1}]) is None


def test_restored_weights_are_the_selected_epochs():
    scores = [[50.0, 60.0, 55.0, 40.0], [70.0, 65.0, 80.0, 80.0], [80.0, 60.0, 60.0, 79.0], [10.0, 20.0, 30.0, 40.0]]
    trainer, sel, snaps = _trainer(), SelectBest(), _Snapshots()
    trainer.fit(_batches(), 4, val=_scripted(scores), callbacks=[sel, snaps])
    assert sel.selected == Selection(2, 2, 80.0) and sel.final == Selection(4, 3, 40.0)
    state = trainer.model.state_dict()
    assert _equal(state, snaps.weights[2]) and not _equal(state, snaps.weights[4])
    assert int(trainer.model.best_block) == 2
    assert _equal(sel.weights("final"), snaps.weights[4])
    sel.restore(trainer.model, "final")
    assert _equal(trainer.model.state_dict(), snaps.weights[4]) and int(trainer.model.best_block) == 3


def test_bp_selection_is_early_stopping_on_its_one_exit():
    last = [30.0, 55.0, 55.0, 41.0]  # BP's inner blocks have no head: None there
    trainer, sel, snaps = _trainer("bp"), SelectBest(), _Snapshots()
    trainer.fit(_batches(), 4, val=_scripted([[None, None, None, v] for v in last]), callbacks=[sel, snaps])
    stop = max(range(4), key=lambda e: (last[e], -e)) + 1  # early stopping: best epoch, the earlier on a tie
    assert sel.selected == Selection(stop, 3, 55.0) and stop == 2
    assert _equal(trainer.model.state_dict(), snaps.weights[2])


def test_bp_on_real_validation_stops_at_its_best_epoch():
    train = create_dataset("digits", "train", image_size=16, limit=512)
    val = create_loader(create_dataset("digits", "val", image_size=16, limit=60), 64)
    trainer, sel = _trainer("bp", 3 * 16), SelectBest()
    trainer.fit(create_loader(train, 32, shuffle=True, seed=0), 3, val=val, callbacks=[sel])
    vals = [r["val_last"] for r in trainer.history]
    assert sel.selected.epoch == vals.index(max(vals)) + 1 and sel.selected.exit == trainer.model.num_blocks - 1
    assert trainer.evaluate(val).last == max(vals)  # the restored weights score what was selected


# -- the must-hold: no selection touches the test split -------------------------------------------------------------
def _digits_run(test_targets: torch.Tensor | None):
    train = create_dataset("digits", "train", image_size=16, limit=512)
    val = create_dataset("digits", "val", image_size=16, limit=60)
    test = create_dataset("digits", "test", image_size=16, limit=60)
    if test_targets is not None:
        test.targets = test_targets
    trainer, sel = _trainer("deinforeg", 4 * 16), SelectBest()
    trainer.fit(create_loader(train, 32, shuffle=True, seed=0), 4, val=create_loader(val, 64), callbacks=[sel])
    views = sel.evaluate(trainer, create_loader(test, 64))
    return sel, views, test.clean_targets


def test_corrupting_test_labels_changes_no_selected_epoch_or_exit():
    sel, views, clean = _digits_run(None)
    wrong = (clean + 1 + torch.arange(len(clean)) % 9) % 10  # every test label wrong
    sel_bad, views_bad, _ = _digits_run(wrong)
    assert (sel_bad.selected, sel_bad.final) == (sel.selected, sel.final)
    assert _equal(sel_bad.weights(), sel.weights())
    # the corruption reached the test metric (every exit now scores differently), and only that
    assert all(a != b for a, b in zip(views.selected.per_block, views_bad.selected.per_block))
    assert views.selected.best == views.selected.per_block[sel.selected.exit]
    assert views.final.best == views.final.per_block[sel.final.exit]
    assert len(views.final.per_block) == 4 and all(v is not None for v in views.final.per_block)


# -- resume ---------------------------------------------------------------------------------------------------
class _StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def should_stop(self, trainer):
        return trainer.step >= self.step


def test_resume_keeps_the_selection_and_its_weights():
    scores = [[50.0, 60.0, 55.0, 40.0], [70.0, 65.0, 80.0, 80.0], [30.0, 60.0, 60.0, 79.0], [10.0, 20.0, 30.0, 90.0]]
    ref, ref_sel = _trainer(), SelectBest()
    ref.fit(_batches(), 4, val=_scripted(scores), callbacks=[ref_sel])

    first, sel = _trainer(), SelectBest()
    with pytest.raises(TrainingStopped):  # mid epoch 3, after epoch 2 was selected
        first.fit(_batches(), 4, val=_scripted(scores), callbacks=[sel, _StopAt(7)])
    buf = io.BytesIO()
    torch.save(sel.state_dict(), buf)  # as the harness's training_state.pt would hold it
    buf.seek(0)
    saved = {"trainer": copy.deepcopy(first.state_dict()), "selection": torch.load(buf, weights_only=True)}

    resumed, sel2 = _trainer(), SelectBest()
    resumed.load_state_dict(saved["trainer"])
    with pytest.raises(RuntimeError, match="load the SelectBest.state_dict"):  # forgotten: refused, not silent
        resumed.fit(_batches(), 4, val=_scripted(scores), callbacks=[SelectBest()])
    sel2.load_state_dict(saved["selection"])
    resumed.fit(_batches(), 4, val=_scripted(scores), callbacks=[sel2])
    assert sel2.selected == ref_sel.selected == Selection(4, 3, 90.0)  # a later best still replaces it
    assert _equal(resumed.model.state_dict(), ref.model.state_dict())

    # stopped after the best epoch and resumed into worse ones: the copy from before the stop is restored
    scores[3] = [10.0, 20.0, 30.0, 40.0]
    ref, ref_sel = _trainer(), SelectBest()
    ref.fit(_batches(), 4, val=_scripted(scores), callbacks=[ref_sel])
    first, sel = _trainer(), SelectBest()
    with pytest.raises(TrainingStopped):
        first.fit(_batches(), 4, val=_scripted(scores), callbacks=[sel, _StopAt(7)])
    resumed, sel2 = _trainer(), SelectBest()
    resumed.load_state_dict(first.state_dict())
    sel2.load_state_dict(sel.state_dict())
    resumed.fit(_batches(), 4, val=_scripted(scores), callbacks=[sel2])
    assert sel2.selected == ref_sel.selected == Selection(2, 2, 80.0)
    assert _equal(resumed.model.state_dict(), ref.model.state_dict())
    assert _equal(resumed.model.state_dict(), ref_sel.weights())


def test_needs_validation():
    with pytest.raises(ValueError, match="pass `val`"):
        _trainer().fit(_batches(), 1, callbacks=[SelectBest()])
