"""`python -m benchmarks.run --bench depth`: one-line exits before anything runs, the budget it derives, and a tiny
end-to-end run (depth 8, 1 epoch) writing rows, W&B gradient norms, a resumable run folder and the rendered
section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import _depth_core, depth
from benchmarks.plan import derived_lines
from benchmarks.results import read_rows
from benchmarks.run import config_from_args, main
from leaderboards.render import render

TINY = ["--bench", "depth", "--depths", "8", "--norms", "none", "--inits", "kaiming", "--epochs", "2",
        "--train-size", "64", "--eval-size", "32", "--batch-size", "16", "--threads", "1", "--no-progress"]  # fmt: skip


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--depths", "8,10"], "--depths 10: plain_cnn depth=10 cannot be built"),
        (["--depths", "2"], "--depths must be >= 4"),
        (["--depths", "8,12", "--layers-per-block", "8"], "--layers-per-block 8: plain_cnn layers_per_block=8 "
         "does not divide depth=12"),
        (["--norms", "ln"], "--norms 'ln' is not valid; valid choices: none, bn"),
        (["--model", "resnet18"], "--bench depth trains plain_cnn"),
        (["--methods", "bp,scpl"], "--methods scpl: the depth bench compares bp, deinforeg, greedy"),
        (["--num-blocks", "2"], "--num-blocks is not for --bench depth"),
        (["--task", "seg"], "--bench depth classifies"),
        (["--img-size", "12"], "img_size=12 is not possible"),
    ],
)  # fmt: skip
def test_impossible_requests_exit_2_in_one_line_before_a_run_folder(argv, needle, capsys, tmp_path):
    assert main(["--bench", "depth", *argv, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_depth_flags_belong_to_the_depth_bench(capsys):
    assert main(["--bench", "accuracy", "--depths", "8"]) == 2
    assert "--depths is for --bench depth, not --bench accuracy" in capsys.readouterr().err


def test_converged_budget_is_72_epochs_for_every_method_and_flags_win():
    cfg, _ = config_from_args(["--bench", "depth", "--budget", "converged"])
    assert (cfg.epochs, cfg.img_size, cfg.model, cfg.methods) == (72, 16, ["plain_cnn"], ["bp", "deinforeg", "greedy"])
    lines = derived_lines(cfg)
    assert any("epochs=72" in line and "benchmarks/depth.py BUDGETS" in line for line in lines)
    assert not any("epochs=12" in line for line in lines)  # the dataset's own budget is superseded, not listed
    cfg, _ = config_from_args(["--bench", "depth", "--budget", "converged", "--epochs", "5"])
    assert cfg.epochs == 5 and not any("epochs=" in line for line in derived_lines(cfg))
    grid = depth.runs(cfg)
    assert len(grid) == 4 * 2 * 2 * 3 and grid[0] == depth.DepthRun(8, "none", "default", "bp", 0)


def test_width_and_block_size_name_a_new_recipe():
    base, _ = config_from_args(["--bench", "depth"])
    wide, _ = config_from_args(["--bench", "depth", "--width", "32"])
    fewer, _ = config_from_args(["--bench", "depth", "--depths", "8,16"])  # a grid axis: the same recipe
    assert base.config_hash() != wide.config_hash() and base.config_hash() == fewer.config_hash()


class _Recorder:
    """A stand-in W&B run that keeps what it was given."""

    logged: list[dict] = []

    def __init__(self, *args, **kw):
        pass

    def log(self, data, step=None):
        _Recorder.logged.append(dict(data))

    def summary(self, data):
        pass

    def finish(self, exit_code=0):
        pass


def test_tiny_run_writes_rows_wandb_grad_norms_resumes_and_renders(tmp_path, monkeypatch):
    monkeypatch.setattr(_depth_core, "start_run", _Recorder)
    _Recorder.logged = []
    lb, out = tmp_path / "lb", tmp_path / "runs"
    argv = [*TINY, "--methods", "bp,deinforeg", "--seeds", "0,1", "--out", str(out), "--leaderboard-dir", str(lb)]
    assert main([*argv, "--wandb", "disabled"]) == 0  # the core still calls start_run: the recorder
    (run_dir,) = out.iterdir()
    rows = read_rows(lb / "depth_cls_digits.csv")
    per_run = read_rows(lb / "depth_cls_digits_runs.csv")
    assert [r["method"] for r in rows] == ["bp", "deinforeg"] and len(per_run) == 4
    cfg, _ = config_from_args(argv)
    for r in rows:
        assert (r["config_hash"], r["budget"], r["seeds"], r["epochs"]) == (cfg.config_hash(), "quick", "0;1", "2")
        assert r["commit"] and r["device"].startswith("cpu") and r["run_id"] == run_dir.name
        assert r["mem_kind"] == "cpu_tensor_events" and float(r["peak_mem_mb"]) > 0  # tensors counted, not RSS
    results = [json.loads(p.read_text()) for p in sorted((run_dir / "runs").glob("plain8-*/result.json"))]
    dein = next(r for r in rows if r["method"] == "deinforeg")
    mine = sorted((r for r in results if r["method"] == "deinforeg"), key=lambda r: r["seed"])
    assert dein["metric_per_seed"] == ";".join(f"{r['metric']:.4f}" for r in mine)
    for pr in per_run:
        assert len(pr["grad_init"].split(";")) == len(pr["grad_epoch2"].split(";")) == 8
        assert len(pr["train_loss_per_epoch"].split(";")) == 2
    # every layer's gradient norm went to the run's W&B log: at step 0 and at the start of epoch 2
    steps = [d["grad_norm/step"] for d in _Recorder.logged if "grad_norm/step" in d]
    assert steps.count(0) == 4 and steps.count(int(per_run[0]["steps_per_epoch"])) == 4
    assert all(f"grad_norm/layer{k:02d}" in _Recorder.logged[0] for k in range(1, 9))

    # --resume: every run is reused from its result.json; the same rows again
    assert main(["--resume", str(run_dir)]) == 0
    again = read_rows(lb / "depth_cls_digits.csv")
    assert [r["metric_per_seed"] for r in again[2:]] == [r["metric_per_seed"] for r in rows]

    written = {p.name for p in render(lb)}
    assert {"depth_cls_digits_accuracy.png", "depth_cls_digits_grad_norms_depth8.png",
            "depth_cls_digits_loss_curves.png", "README.md"} <= written  # fmt: skip
    text = (lb / "README.md").read_text()
    assert "## depth_cls_digits" in text and "(p " in text and "1 comparisons in this table" in text
    assert "| none | kaiming | 8 | 2 | deinforeg |" in text


def test_renderer_ignores_the_runs_sidecar_alone(tmp_path):
    from leaderboards._depth import depth_section

    side = tmp_path / "depth_cls_digits_runs.csv"
    side.write_text(",".join(depth.RUN_COLUMNS) + "\n")
    assert depth_section(side) == ([], [])
    assert [p.name for p in render(tmp_path)] == ["README.md"]
    assert Path(tmp_path / "README.md").read_text().count("depth_cls_digits") == 0


def test_ctrl_c_stops_after_the_step_exit_130_and_resume_finishes(tmp_path, monkeypatch):
    from benchmarks import _runner

    lb, out = tmp_path / "lb", tmp_path / "runs"
    monkeypatch.setitem(_runner._STOP, "requested", True)  # what the harness's SIGINT handler sets
    argv = [*TINY, "--methods", "bp", "--wandb", "disabled", "--out", str(out), "--leaderboard-dir", str(lb)]
    assert main(argv) == 130
    (run_dir,) = out.iterdir()
    assert not (lb / "depth_cls_digits.csv").exists() and not list(run_dir.glob("runs/*/result.json"))
    monkeypatch.setitem(_runner._STOP, "requested", False)
    assert main(["--resume", str(run_dir)]) == 0
    assert len(read_rows(lb / "depth_cls_digits.csv")) == 1
