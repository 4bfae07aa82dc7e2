"""The harness's fair-comparison protocol (issue 20) on tiny CPU runs: selection on validation through `train_one`,
both validation protocols, the per-seed per-exit columns, and a selection the test labels cannot move."""

from __future__ import annotations

import json

import pytest

from benchmarks import _runner
from benchmarks.results import read_rows
from benchmarks.run import main
from benchmarks.settings import Settings

TINY = ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16", "--train-size", "64",
        "--eval-size", "32", "--epochs", "3", "--batch-size", "32", "--methods", "bp,deinforeg", "--seeds", "0,1",
        "--wandb", "disabled", "--no-progress", "--threads", "1"]  # fmt: skip


def _run(tmp_path, name, extra=()):
    out = tmp_path / name
    rc = main([*TINY, *extra, "--out", str(out), "--leaderboard-dir", str(tmp_path / f"lb_{name}")])
    return rc, next(out.iterdir()), tmp_path / f"lb_{name}"


def _results(run_dir):
    return {sub.name: json.loads((sub / "result.json").read_text()) for sub in sorted((run_dir / "runs").iterdir())}


def _blocks(text):
    return [[None if v == "-" else float(v) for v in seed.split("/")] for seed in text.split(";")]


def test_noisy_validation_protocol_writes_its_rows_audit_and_hash(tmp_path):
    rc, run_dir, lb = _run(tmp_path, "noisy", ["--bench", "noise", "--noise-rates", "0.4", "--val-noise"])
    assert rc == 0
    rows = read_rows(lb / "noise_cls_digits.csv")
    assert {r["val_protocol"] for r in rows} == {"noisy"} and len(rows) == 2
    # the validation labels' own draw, audited per seed beside the training labels' (exactly round(0.4 · 32))
    audit = read_rows(lb / "noise_cls_digits_audit.csv")
    assert sorted((r["split"], r["seed"]) for r in audit) == [
        ("train", "0"),
        ("train", "1"),
        ("val", "0"),
        ("val", "1"),
    ]
    for r in audit:
        n = 64 if r["split"] == "train" else 32
        assert int(r["num_items"]) == n and int(r["num_flipped"]) == int(r["expected"]) == round(0.4 * n)
    runs = sorted(p.name for p in (run_dir / "runs").iterdir())
    assert runs and all(name.endswith("-valnoisy") for name in runs)
    val_audit = json.loads((run_dir / "runs" / runs[0] / "noise_audit_val.json").read_text())
    train_audit = json.loads((run_dir / "runs" / runs[0] / "noise_audit.json").read_text())
    assert val_audit["split"] == "val" and train_audit["split"] == "train"
    assert {r["val_protocol"] for r in read_rows(lb / "curves_cls_digits.csv")} == {"noisy"}
    # --val-noise joins the recipe's hash only when set, so clean rows keep theirs
    (h,) = {r["config_hash"] for r in rows}
    cfg = Settings(**{**_saved(run_dir), "bench": "noise"})
    assert h == cfg.config_hash()
    cfg.options.val_noise = False
    assert h != cfg.config_hash()


def _saved(run_dir):
    """The run's resolved settings, rebuilt from config.yaml (options as their dataclass)."""
    import dataclasses

    import yaml

    from benchmarks.options import BENCHES

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    opts = BENCHES[saved["bench"]].options
    names = {f.name for f in dataclasses.fields(opts)}
    common = {f.name for f in dataclasses.fields(Settings)} - {"options", "derived", "given", "config"}
    out = {k: v for k, v in saved.items() if k in common}
    out["options"] = opts(**{k: v for k, v in saved.items() if k in names})
    return out


def test_rows_keep_both_views_and_every_exit_per_seed(tmp_path):
    rc, run_dir, lb = _run(tmp_path, "clean")
    assert rc == 0
    results = _results(run_dir)
    rows = read_rows(lb / "accuracy_cls_digits.csv")
    assert {r["val_protocol"] for r in rows} == {"clean"}
    for row in rows:
        res = [results[f"paper_vgg-{row['method']}-noise0-seed{s}"] for s in (0, 1)]
        assert row["selected_epoch"] == ";".join(str(r["selected_epoch"]) for r in res)
        assert row["final_block"] == ";".join(str(r["final_block"]) for r in res)
        assert row["threads"] == "1;1"
        per_block, final_blocks = _blocks(row["per_block_per_seed"]), _blocks(row["final_per_block_per_seed"])
        assert len(per_block) == len(final_blocks) == 2 and all(len(b) == 4 for b in per_block + final_blocks)
        chosen = [int(b) for b in row["best_block"].split(";")]
        final = [int(b) for b in row["final_block"].split(";")]
        for s in range(2):  # the headline is the selected exit's entry; final_* is the last epoch's exit's
            assert per_block[s][chosen[s] - 1] == pytest.approx(float(row["metric_per_seed"].split(";")[s]), abs=1e-4)
            assert final_blocks[s][final[s] - 1] == pytest.approx(float(row["final_per_seed"].split(";")[s]), abs=1e-4)
            assert res[s]["final_epoch"] == 3 and 1 <= res[s]["selected_epoch"] <= 3
            # the selection is the best (epoch, exit) on validation over the run's history
            best = max((v, -rec["epoch"], -k) for rec in res[s]["history"]
                       for k, v in enumerate(rec["val_per_block"]) if v is not None)  # fmt: skip
            assert (res[s]["val_best"], res[s]["selected_epoch"], res[s]["best_block"]) == (
                best[0], -best[1], -best[2] + 1)  # fmt: skip
        if row["method"] == "bp":  # BP's one exit: early stopping
            assert set(chosen) == set(final) == {4}
    # the final checkpoint holds the selected weights and says which epoch they are from
    ckpt = json.loads((run_dir / "runs" / "paper_vgg-bp-noise0-seed0" / "checkpoint" / "config.json").read_text())
    res = results["paper_vgg-bp-noise0-seed0"]
    assert ckpt["selected_epoch"] == res["selected_epoch"] and ckpt["metrics"]["metric"] == res["metric"]
    assert ckpt["val_protocol"] == "clean"


def test_corrupted_test_labels_move_no_selection(tmp_path, monkeypatch):
    """The selection reads validation only: with every test label shifted to another class, each run selects the
    same (epoch, exit) and keeps the same validation record, while its test metric changes."""
    rc, clean_dir, _ = _run(tmp_path, "a")
    assert rc == 0
    real = _runner.build_datasets

    def corrupt_test(cfg, seed, rate):
        train, val, test, audit = real(cfg, seed, rate)
        test.targets = (test.targets + 1) % 10
        return train, val, test, audit

    monkeypatch.setattr(_runner, "build_datasets", corrupt_test)
    rc, bad_dir, _ = _run(tmp_path, "b")
    assert rc == 0
    a, b = _results(clean_dir), _results(bad_dir)
    assert a.keys() == b.keys()
    keys = ("selected_epoch", "best_block", "val_best", "final_epoch", "final_block", "final_val")
    for run in a:
        assert {k: a[run][k] for k in keys} == {k: b[run][k] for k in keys}, run
        assert [r["val_per_block"] for r in a[run]["history"]] == [r["val_per_block"] for r in b[run]["history"]]
    assert any(a[run]["metric"] != b[run]["metric"] for run in a)  # the test labels did change


def test_val_noise_belongs_to_the_noise_bench(tmp_path, capsys):
    rc = main([*TINY, "--bench", "accuracy", "--val-noise", "--out", str(tmp_path / "runs")])
    assert rc == 2 and not (tmp_path / "runs").exists()
    err = capsys.readouterr()
    assert "--val-noise" in err.out + err.err and "Traceback" not in err.out + err.err
