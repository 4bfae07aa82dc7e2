"""Issue 20's convergence rule (leaderboards/convergence.py): a longer budget may move each method's selected
validation metric by at most max(1 point, its std over seeds)."""

from __future__ import annotations

import csv

import pytest

from leaderboards.convergence import compare, main

FIELDS = ["model", "model_kwargs", "img_size", "method", "noise_kind", "noise_rate", "val_protocol", "seed", "epoch",
          "epochs", "val_chosen", "run_id"]  # fmt: skip


def _curves(path, epochs, run, per_method):
    """per_method: method -> per seed, the validation curve (one value per epoch)."""
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        if f.tell() == 0:
            w.writeheader()
        for method, seeds in per_method.items():
            for seed, curve in enumerate(seeds):
                for e, v in enumerate(curve, 1):
                    row = {"model": "resnet18", "model_kwargs": "", "img_size": "32", "method": method,
                           "noise_kind": "symmetric", "noise_rate": "0.4000", "val_protocol": "clean", "seed": seed,
                           "epoch": e, "epochs": epochs, "val_chosen": v, "run_id": run}  # fmt: skip
                    w.writerow(row)


def test_the_rule_reads_the_best_epoch_and_allows_max_one_point_or_the_std(tmp_path):
    path = tmp_path / "curves.csv"
    # bp peaks early (the selected value is the maximum, not the last epoch); deinforeg gains 3 points when longer
    _curves(path, 2, "a", {"bp": [[80, 70], [82, 71]], "deinforeg": [[60, 70], [62, 72]]})
    _curves(path, 3, "b", {"bp": [[80, 81, 70], [82, 81.5, 60]], "deinforeg": [[60, 70, 73], [62, 72, 75]]})
    rows = {s.key[3]: s for s in compare(path, path, 2, 3)}
    assert rows["bp"].base == [80, 82] and rows["bp"].longer == [81, 82]
    assert rows["bp"].moved == pytest.approx(0.5) and rows["bp"].allowed == pytest.approx(1.4142, rel=1e-3)
    assert rows["bp"].holds and not rows["deinforeg"].holds and rows["deinforeg"].moved == pytest.approx(3.0)
    assert main([str(path), str(path), "--epochs", "2", "--longer", "3"]) == 1


def test_exit_codes_for_a_converged_grid_and_for_user_errors(tmp_path, capsys):
    path = tmp_path / "curves.csv"
    _curves(path, 2, "a", {"bp": [[80, 81], [82, 83]]})
    _curves(path, 3, "b", {"bp": [[80, 81, 81.5], [82, 83, 83.2]]})
    out = tmp_path / "table.md"
    assert main([str(path), str(path), "--epochs", "2", "--longer", "3", "--out", str(out)]) == 0
    assert "converged: no method's selected validation metric moves" in out.read_text()
    assert main([str(path), str(tmp_path / "missing.csv"), "--epochs", "2"]) == 2
    assert main([str(path), str(path), "--epochs", "5"]) == 2
    err = capsys.readouterr().err
    assert "no such curves file" in err and "no setting has runs at both 5 and 8 epochs" in err


def _runs(path, epochs, run, per_setting):
    """A depth bench's per-run table: per (norm, method), per seed, the best exit's validation curve in one cell."""
    fields = ["model", "depth", "norm", "init", "method", "epochs", "seed", "val_best_per_epoch", "run_id"]
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fields)
        if f.tell() == 0:
            w.writeheader()
        for (norm, method), seeds in per_setting.items():
            for seed, curve in enumerate(seeds):
                w.writerow({"model": "plain_cnn", "depth": 48, "norm": norm, "init": "kaiming", "method": method,
                            "epochs": epochs, "seed": seed, "val_best_per_epoch": ";".join(map(str, curve)),
                            "run_id": run})  # fmt: skip


def test_the_depth_bench_runs_tables_are_checked_per_depth_norm_init_and_method(tmp_path, capsys):
    base, longer = tmp_path / "runs.csv", tmp_path / "runs72.csv"
    _runs(base, 2, "a", {("bn", "bp"): [[80, 90], [85, 88]], ("bn", "deinforeg"): [[97, 98], [98, 97]]})
    more = {("bn", "bp"): [[80, 90, 95], [85, 88, 96]], ("bn", "deinforeg"): [[97, 98, 98], [98, 97, 98.5]]}
    _runs(longer, 3, "b", more)
    rows = {s.key[4]: s for s in compare(base, longer, 2, 3)}
    assert rows["bp"].base == [90, 88] and rows["bp"].longer == [95, 96] and not rows["bp"].holds
    assert rows["deinforeg"].holds and rows["deinforeg"].moved == pytest.approx(0.25)
    assert main([str(base), str(longer), "--epochs", "2", "--longer", "3"]) == 1
    out = capsys.readouterr().out
    assert "| plain_cnn | 48 | bn | kaiming | bp | 2 |" in out and "not converged: 1 of 2 settings" in out
