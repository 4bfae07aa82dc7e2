"""The pipeline throughput bench end to end at toy size: rows, ratios, the best pipelining baseline, CLI errors."""

from __future__ import annotations

import csv

import pytest

from benchmarks.pipeline import main

pytestmark = pytest.mark.dist

TINY = ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--dataset", "synthetic", "--img-size", "16"]
TINY += ["--batch-size", "8"]


def test_bench_writes_one_row_per_engine_and_micro_batch_count(tmp_path, capsys):
    argv = [*TINY, "--steps", "4", "--warmup", "1", "--micro-batches", "2,4", "--optimizer", "sgd", "--lr", "0.05"]
    assert main([*argv, "--leaderboard-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "throughput_pipeline_cls_synthetic.csv").open()))
    got = sorted((r["engine"], r["micro_batches"], r["batch_size"]) for r in rows)
    want = [("1f1b", "2", "8"), ("1f1b", "4", "8"), ("bp-single", "1", "8"), ("bp-single-mb", "1", "2")]
    want += [("bp-single-mb", "1", "4"), ("deinforeg-pipe", "1", "8"), ("deinforeg-single", "1", "8")]
    want += [("gpipe", "2", "8"), ("gpipe", "4", "8")]
    assert got == sorted(want)
    by = {(r["engine"], r["micro_batches"], r["batch_size"]): r for r in rows}
    assert float(by["bp-single", "1", "8"]["speedup_vs_bp"]) == pytest.approx(1.0)
    # ratios against the best GPipe / 1F1B row of the run: exactly one row is 1.0, none above
    pipelining = [float(r["speedup_vs_pipelining_bp"]) for r in rows if r["engine"] in ("gpipe", "1f1b")]
    assert max(pipelining) == pytest.approx(1.0) and sum(v == pytest.approx(1.0) for v in pipelining) == 1
    # the DeInfoReg pipeline's profiled partition is the one GPipe / 1F1B run on
    assert len({r["partition"] for r in rows if r["stages"] == "2"}) == 1
    assert "best BP over torch.distributed.pipelining:" in out and "scaling model" in out
    assert "each process on its own core" in rows[0]["note"] and "optimizer sgd" in rows[0]["note"]
    assert (tmp_path / "throughput_pipeline_cls_synthetic_paper_vgg.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--micro-batches", "2,0"], "micro-batches must be positive"),
        (["--seeds", "a"], "--seeds must be integers"),
        (["--model-kwargs", "width"], "key=value"),
    ],
)
def test_bad_values_exit_2(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--leaderboard-dir", str(tmp_path)])
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_micro_batches_that_do_not_divide_the_batch_stop_before_anything_runs(tmp_path, capsys):
    assert main([*TINY, "--micro-batches", "2,3", "--leaderboard-dir", str(tmp_path)]) == 2
    assert "batch_size=8 is not divisible by micro_batches=3" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
