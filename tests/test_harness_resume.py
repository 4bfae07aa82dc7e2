"""Resume equivalence, Ctrl-C checkpoints and non-finite losses in the harness (tiny CPU runs)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from benchmarks.results import read_rows
from benchmarks.run import main

TINY = ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16", "--train-size", "48",
        "--eval-size", "32", "--epochs", "2", "--batch-size", "16", "--methods", "bp,deinforeg", "--seeds", "3",
        "--wandb", "disabled", "--no-progress"]  # fmt: skip


def _run(tmp_path, name, extra=()):
    out = tmp_path / name
    rc = main([*TINY, *extra, "--out", str(out), "--leaderboard-dir", str(tmp_path / f"lb_{name}")])
    return rc, next(out.iterdir())


def _results(run_dir):
    out = {}
    for sub in sorted((run_dir / "runs").iterdir()):
        res = json.loads((sub / "result.json").read_text())
        keys = ("metric", "per_block", "best_block", "adaptive", "steps", "epochs", "selected_epoch", "val_best",
                "final_metric", "final_block", "final_per_block")  # fmt: skip
        out[sub.name] = ({k: res[k] for k in keys},
                         load_file(str(sub / "checkpoint" / "model.safetensors")))  # fmt: skip
    return out


def test_resume_reaches_the_same_final_metrics(tmp_path):
    rc, full = _run(tmp_path, "full")
    assert rc == 0
    # 3 steps per epoch: stop mid-way through epoch 1 of the first run (bp), then resume the whole grid
    rc, cut = _run(tmp_path, "cut", ["--interrupt-after-steps", "4"])
    assert rc == 130
    ckpt = cut / "runs" / "paper_vgg-bp-noise0-seed3" / "checkpoint"
    assert (ckpt / "training_state.pt").is_file() and json.loads((ckpt / "config.json").read_text())["step"] == 4
    assert not (tmp_path / "lb_cut").exists()
    assert main(["--resume", str(cut), "--no-progress"]) == 0
    a, b = _results(full), _results(cut)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][0] == b[key][0], key
        for name, t in a[key][1].items():
            assert (b[key][1][name] == t).all(), (key, name)
    rows_a, rows_b = (
        read_rows(tmp_path / "lb_full" / "accuracy_cls_digits.csv"),
        read_rows(tmp_path / "lb_cut" / "accuracy_cls_digits.csv"),
    )
    assert [r["metric_mean"] for r in rows_a] == [r["metric_mean"] for r in rows_b]
    assert [r["selected_epoch"] for r in rows_a] == [r["selected_epoch"] for r in rows_b]


def test_resume_from_a_checkpoint_without_a_selection_exits_2(tmp_path, capsys):
    """A checkpoint saved before runs selected on validation holds no selected weights: resuming it would report
    a selection made over part of the run only, so the harness refuses (one line, exit 2)."""
    import torch

    rc, cut = _run(tmp_path, "old", ["--interrupt-after-steps", "4"])
    assert rc == 130
    state_path = cut / "runs" / "paper_vgg-bp-noise0-seed3" / "checkpoint" / "training_state.pt"
    state = torch.load(state_path, weights_only=True)
    assert state["selection"]["selected"][0] == 1  # epoch 1's selection was saved with the state
    del state["selection"]
    torch.save(state, state_path)
    capsys.readouterr()
    assert main(["--resume", str(cut), "--no-progress"]) == 2
    out = capsys.readouterr()
    assert "rerun without --resume" in out.out and "Traceback" not in out.out + out.err


def test_non_finite_loss_stops_with_block_method_step(tmp_path, monkeypatch, capsys):
    from zoo.train import NonFiniteLossError, Trainer

    real = Trainer.train_step

    def flaky(self, x, y):
        if self.model.method == "deinforeg" and self.step == 4:
            raise NonFiniteLossError(1, "deinforeg", self.step, float("nan"))
        return real(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", flaky)
    rc, run_dir = _run(tmp_path, "nan")
    assert rc == 1
    out = capsys.readouterr().out
    assert "block 2" in out and "deinforeg" in out and "step 4" in out and "last good checkpoint" in out
    ckpt = run_dir / "runs" / "paper_vgg-deinforeg-noise0-seed3" / "checkpoint"
    assert json.loads((ckpt / "config.json").read_text())["epoch"] == 1  # the epoch-1 checkpoint stayed


def test_sigint_requests_a_checkpoint_then_stops(tmp_path):
    import os
    import signal

    from benchmarks import _runner

    _runner.install_sigint()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert _runner._STOP["requested"]
        rc, run_dir = _run(tmp_path, "sigint")
        assert rc == 130
        ckpt = run_dir / "runs" / "paper_vgg-bp-noise0-seed3" / "checkpoint"
        assert json.loads((ckpt / "config.json").read_text())["step"] == 1
    finally:
        _runner._STOP["requested"] = False
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.mark.parametrize("bad", ["missing"])
def test_resume_of_a_missing_folder_exits_2(tmp_path, bad, capsys):
    assert main(["--resume", str(tmp_path / bad)]) == 2
    assert "no config.yaml" in capsys.readouterr().err


def test_rows_append_as_each_noise_rate_finishes_and_resume_does_not_repeat_them(tmp_path, monkeypatch):
    """A grid stopped during its second noise rate has already appended the first rate's rows (and audit/curves);
    --resume appends the rest once."""
    from benchmarks import _runner, accuracy

    real = accuracy.train_one

    def stop_in_second_rate(cfg, spec, *a, **kw):
        if spec.noise_rate > 0:
            _runner._STOP["requested"] = True  # as if Ctrl-C came during the first step of this run
        return real(cfg, spec, *a, **kw)

    monkeypatch.setattr(accuracy, "train_one", stop_in_second_rate)
    extra = ["--bench", "noise", "--noise-rates", "0,0.4", "--epochs", "1", "--methods", "bp"]
    rc, cut = _run(tmp_path, "cut", extra)
    assert rc == 130
    board = tmp_path / "lb_cut" / "noise_cls_digits.csv"
    assert [r["noise_rate"] for r in read_rows(board)] == ["0.0000"]
    monkeypatch.setattr(accuracy, "train_one", real)
    _runner._STOP["requested"] = False
    assert main(["--resume", str(cut), "--no-progress"]) == 0
    assert [r["noise_rate"] for r in read_rows(board)] == ["0.0000", "0.4000"]
    audit = read_rows(tmp_path / "lb_cut" / "noise_cls_digits_audit.csv")
    assert [r["noise_rate"] for r in audit] == ["0.4000"]
