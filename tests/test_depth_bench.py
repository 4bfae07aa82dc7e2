"""benchmarks.depth: the (epoch, exit) selection reads validation only; rows and rendering from tiny runs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmarks import _depth_core, depth
from benchmarks.results import environment

RECIPE = depth.DepthRecipe(width=4, img_size=8, epochs=3, batch_size=16, train_size=64, eval_size=32)


def test_select_point_best_val_ties_to_earlier_epoch_then_exit() -> None:
    assert depth.select_point([[10.0, 20.0], [30.0, 25.0], [30.0, 30.0]]) == (1, 0)
    assert depth.select_point([[None, 50.0], [None, float("nan")]]) == (0, 1)
    with pytest.raises(ValueError):
        depth.select_point([[None], [float("nan")]])


@pytest.fixture(scope="module")
def data():
    return _depth_core._build_data(RECIPE)


def test_corrupting_test_labels_changes_no_selection(data) -> None:
    train, val, test = data
    run = depth.DepthRun(8, "bn", "kaiming", "deinforeg", 0)
    clean = depth.train_run(run, RECIPE, data=data, log=lambda s: None)
    bad = type(test).__new__(type(test))
    bad.__dict__.update(test.__dict__)
    bad.targets = (test.targets + 1 + torch.randint(0, 9, test.targets.shape)) % 10  # every label wrong
    noisy = depth.train_run(run, RECIPE, data=(train, val, bad), log=lambda s: None)
    for key in ("selected_epoch", "selected_exit", "val_selected", "final_exit"):
        assert clean[key] == noisy[key], key
    assert [h["val_per_block"] for h in clean["history"]] == [h["val_per_block"] for h in noisy["history"]]
    assert noisy["test_per_exit"] != clean["test_per_exit"]  # the test labels were read, and only for testing
    assert clean["metric"] == clean["test_per_exit"][clean["selected_exit"] - 1]
    assert len(clean["test_per_exit"]) == clean["num_blocks"] == 2
    first = clean["grad_norms"]["records"][0]
    assert first["step"] == 0 and len(first["grad_norms"]) == 8


def test_rows_and_render(data, tmp_path) -> None:
    runs = depth.grid([8], ["none"], ["default"], ["bp", "greedy"], [0, 1])
    recipe = dataclasses.replace(RECIPE, epochs=1)
    results = depth.run_grid(runs, recipe, tmp_path, log=lambda s: None)
    again = depth.run_grid(runs[:1], recipe, tmp_path, log=lambda s: None)  # finished runs are reused
    assert again[0] == results[0]
    rows = depth.rows_from_results(results, recipe, environment("cpu"), "test")
    assert len(rows) == 2 and all(set(r) == set(depth.COLUMNS) for r in rows)
    greedy = next(r for r in rows if r["method"] == "greedy")
    assert greedy["seeds"] == "0;1" and len(greedy["exit_test_per_seed"].split(";")) == 2
    assert all(len(s.split(":")) == 2 for s in greedy["exit_test_per_seed"].split(";"))
    assert math.isclose(greedy["metric_mean"], sum(r["metric"] for r in results if r["method"] == "greedy") / 2)
    paths = depth.render(rows, results, tmp_path / "out")
    assert [p.name for p in paths] == ["table.md", "accuracy_vs_depth.png", "loss_curves.png", "grad_norms_depth8.png"]
    assert "| none | default | 8 | 2 | greedy |" in paths[0].read_text()


def test_warmup_and_clipping_reach_the_depth_runs_and_rows(data, tmp_path) -> None:
    from benchmarks.run import config_from_args

    cfg, _ = config_from_args(["--bench", "depth", "--warmup-epochs", "2", "--grad-clip", "1"])
    recipe = depth.recipe_of(cfg)
    assert recipe.warmup_epochs == 2.0 and recipe.grad_clip == 1.0
    run = depth.grid([8], ["bn"], ["default"], ["bp"], [0])
    plain = dataclasses.replace(RECIPE, epochs=2)
    warm = dataclasses.replace(plain, warmup_epochs=1.0, grad_clip=0.5)
    a = depth.run_grid(run, plain, tmp_path / "plain", log=lambda s: None)
    b = depth.run_grid(run, warm, tmp_path / "warm", log=lambda s: None)
    assert a[0]["history"][0]["train_loss"] != b[0]["history"][0]["train_loss"]  # a different first epoch
    row = depth.rows_from_results(b, warm, environment("cpu"), "test")[0]
    assert row["warmup_epochs"] == 1.0 and row["grad_clip"] == 0.5
    assert depth.rows_from_results(a, plain, environment("cpu"), "test")[0]["grad_clip"] == ""
