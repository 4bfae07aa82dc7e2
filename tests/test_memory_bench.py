"""`--bench memory` through the harness: rows with the environment columns, ratios against BP, the largest batch
under a cap, the rendered section, and one-line exits (code 2) before anything runs."""

from __future__ import annotations

import pytest
import torch

from benchmarks.results import read_rows
from benchmarks.run import main
from leaderboards._memory import memory_section

TINY = ["--bench", "memory", "--model", "resnet18", "--img-size", "16", "--batch-size", "4", "--threads", "1",
        "--wandb", "disabled", "--no-progress"]  # fmt: skip


def _bench(tmp_path, *extra):
    lb = tmp_path / "lb"
    argv = [*TINY, "--block-counts", "2", *extra, "--out", str(tmp_path / "runs")]
    assert main([*argv, "--leaderboard-dir", str(lb)]) == 0
    rows = read_rows(lb / "memory_cls_digits.csv")
    peaks = [r for r in rows if not r["largest_batch"]]
    capped = [r for r in rows if r["largest_batch"]]
    assert [(r["method"], r["balance"]) for r in peaks] == [("bp", ""), ("deinforeg", "memory")]
    return rows, peaks, capped, lb


def test_memory_rows_ratios_and_section(tmp_path):
    rows, peaks, capped, lb = _bench(tmp_path)
    assert not capped
    bp, dec = peaks
    assert float(bp["ratio_vs_bp"]) == 1.0 and dec["num_blocks"] == "2" and dec["batch_size"] == "4"
    assert float(dec["ratio_vs_bp"]) == pytest.approx(float(dec["peak_mb"]) / float(bp["peak_mb"]), rel=1e-4)
    assert sum(map(int, dec["units_per_block"].split("+"))) == 8  # resnet18: 8 residual blocks
    for r in rows:
        assert r["commit"] and r["device"] and r["torch"] and r["run_id"] and r["mem_kind"] == "cpu_tensor_events"
        parts = sum(float(r[c]) for c in ("parameters_mb", "gradients_mb", "optimizer_mb", "activations_mb"))
        assert float(r["peak_mb"]) == pytest.approx(parts, rel=1e-4)
    md, pngs = memory_section(lb / "memory_cls_digits.csv")
    text = "\n".join(md)
    assert (
        "| resnet18 (16px) | CPU tensor events | deinforeg | 2 | memory |" in text
        and "| resnet18 (16px) | CPU tensor events | bp | - | - |" in text
    )
    assert "Largest batch" not in text and pngs and pngs[0].stat().st_size > 0


@pytest.mark.slow  # about 50 s on a busy 2-core CPU: some 20 measured steps
def test_largest_batch_under_a_cap_through_the_harness(tmp_path):
    rows, peaks, capped, lb = _bench(tmp_path, "--img-size", "64", "--memory-cap-mb", "200")
    assert [r["method"] for r in capped] == ["bp", "deinforeg"]
    for r in capped:
        assert float(r["peak_mb"]) <= 200 and int(r["largest_batch"]) == int(r["batch_size"]) >= 2
    # block by block, the decoupled model fits a larger batch under the same cap than BP
    assert int(capped[1]["largest_batch"]) > int(capped[0]["largest_batch"])
    md, pngs = memory_section(lb / "memory_cls_digits.csv")
    text = "\n".join(md)
    assert "| resnet18 (64px) | deinforeg | 2 | memory | 200 |" in text


def test_a_segmentation_model_gets_a_row_per_k_of_its_own_grouping(tmp_path):
    lb = tmp_path / "lb"
    argv = ["--bench", "memory", "--task", "seg", "--model", "resnet18", "--img-size", "32", "--batch-size", "2",
            "--block-counts", "2,6", "--threads", "1", "--wandb", "disabled", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "runs"), "--leaderboard-dir", str(lb)]) == 0
    rows = read_rows(lb / "memory_seg_shapes.csv")
    assert [(r["method"], r["num_blocks"], r["balance"]) for r in rows[1:]] == [("deinforeg", "2", ""),
                                                                              ("deinforeg", "6", "")]  # fmt: skip
    assert rows[0]["method"] == "bp" and float(rows[0]["ratio_vs_bp"]) == 1.0
    for r in rows:
        parts = sum(float(r[c]) for c in ("parameters_mb", "gradients_mb", "optimizer_mb", "activations_mb"))
        assert float(r["peak_mb"]) == pytest.approx(parts, rel=1e-4)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--block-counts", "7"], "num_blocks=7 is not possible"),
        (["--balance", "time"], "--balance is for classifiers"),
        (["--model-kwargs", "num_blocks=3"], "give K there, not as num_blocks"),
    ],
)
def test_bad_segmentation_memory_requests_exit_2_in_one_line(argv, needle, tmp_path, capsys):
    base = ["--bench", "memory", "--task", "seg", "--model", "resnet18", "--img-size", "32", "--batch-size", "2",
            "--wandb", "disabled", "--no-progress"]  # fmt: skip
    assert main([*base, *argv, "--out", str(tmp_path / "runs"), "--leaderboard-dir", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--balance", "speed"], "--balance 'speed' is not valid; valid choices: time, memory"),
        (["--memory-cap-mb", "1"], "--memory-cap-mb 1 is below what resnet18 holds at any batch"),
        (["--memory-cap-mb", "-3"], "--memory-cap-mb must be positive"),
        (["--stages", "2"], "--stages is for --bench pipeline, not --bench memory"),
        (["--engines", "gpipe"], "is for --bench pipeline"),
        (["--block-counts", "1,2"], "--block-counts must be >= 2"),
    ],
)
def test_bad_memory_requests_exit_2_in_one_line_before_anything_runs(extra, needle, tmp_path, capsys):
    assert main([*TINY, *extra, "--out", str(tmp_path / "runs"), "--leaderboard-dir", str(tmp_path / "lb")]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # no run folder, no leaderboard


def test_the_accuracy_table_reports_the_tensor_counted_peak_of_one_extra_step(tmp_path, monkeypatch):
    """The main command's peak: zoo.memory's count of one extra step on a copy of the trained model (benchmarks/
    _peak.py), equal to measuring that model directly; the trained weights are untouched by it."""
    import benchmarks._runner as runner
    from benchmarks._peak import training_peak

    seen = {}

    def spy(trainer, source):
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        mem = training_peak(trainer, source)
        after = trainer.model.state_dict()
        seen["unchanged"] = all(torch.equal(v, after[k]) for k, v in before.items())
        seen["peak"] = mem.peak_mb
        return mem

    monkeypatch.setattr(runner, "training_peak", spy)
    argv = ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16", "--train-size", "64",
            "--eval-size", "32", "--epochs", "1", "--batch-size", "16", "--methods", "deinforeg", "--threads", "1",
            "--wandb", "disabled", "--no-progress", "--out", str(tmp_path / "runs")]  # fmt: skip
    assert main([*argv, "--leaderboard-dir", str(tmp_path / "lb")]) == 0
    (row,) = read_rows(tmp_path / "lb" / "accuracy_cls_digits.csv")
    assert row["mem_kind"] == "cpu_tensor_events" and seen["unchanged"]
    assert float(row["peak_mem_mb"]) == pytest.approx(seen["peak"], rel=1e-4) and seen["peak"] > 0


def test_ratios_are_against_the_bp_row_of_the_same_model():
    from benchmarks.memory import against_bp

    rows = [dict(model=m, method=k, batch_size=64, peak_mb=p) for m, k, p in
            (("a", "bp", 100.0), ("a", "deinforeg", 60.0), ("b", "bp", 400.0), ("b", "deinforeg", 200.0))]  # fmt: skip
    assert [r["ratio_vs_bp"] for r in against_bp(rows)] == [1.0, 0.6, 1.0, 0.5]


def test_the_throughput_bench_counts_tensors_too(tmp_path):
    argv = ["--bench", "throughput", "--model", "resnet18", "--img-size", "16", "--batch-size", "4", "--steps", "2",
            "--warmup", "1", "--methods", "bp,deinforeg", "--threads", "1", "--wandb", "disabled",
            "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "runs"), "--leaderboard-dir", str(tmp_path / "lb")]) == 0
    rows = read_rows(tmp_path / "lb" / "throughput_cls_digits.csv")
    assert [r["method"] for r in rows] == ["bp", "deinforeg"]
    for r in rows:
        assert r["mem_kind"] == "cpu_tensor_events" and float(r["peak_mem_mb"]) > 0


def test_cuda_rows_say_how_they_were_counted_and_stay_apart_from_cpu_rows(tmp_path):
    """A row measured on CUDA is labelled with its card and grouped apart from the CPU tracker's row of the same
    setup (the renderer keys setups by `mem_kind`), so the two are never read as one figure."""
    cols = ["task", "model", "img_size", "dataset", "method", "num_blocks", "balance", "units_per_block",
            "batch_size", "peak_mb", "ratio_vs_bp", "mem_kind", "device", "commit"]  # fmt: skip
    rows = [
        ["cls", "resnet50", "224", "digits", "bp", "4", "", "", "64", "100.0", "1.0", "cpu_tensor_events", "cpu", "a"],
        ["cls", "resnet50", "224", "digits", "bp", "4", "", "", "64", "110.0", "1.0", "cuda_max_allocated",
         "NVIDIA H200", "b"],
    ]  # fmt: skip
    path = tmp_path / "memory_cls_digits.csv"
    path.write_text("\n".join(",".join(r) for r in [cols, *rows]) + "\n")
    md, pngs = memory_section(path)
    text = "\n".join(md)
    assert "| resnet50 (224px) | CPU tensor events | bp | - | - | - | 64 | 100.0 |" in text
    assert "| resnet50 (224px) | CUDA max allocated (NVIDIA H200) | bp | - | - | - | 64 | 110.0 |" in text
    assert len(pngs) == 1 and pngs[0].exists()


def test_a_rerun_under_the_same_cap_replaces_the_earlier_row(tmp_path):
    """Under a cap the batch is the result: a rerun that fits another batch replaces the row, not adds a second."""
    cols = "task,model,img_size,dataset,method,num_blocks,balance,batch_size,peak_mb,memory_cap_mb,largest_batch,commit"
    setup = "cls,resnet18,64,digits,deinforeg,2,memory"
    path = tmp_path / "memory_cls_digits.csv"
    path.write_text(f"{cols}\n{setup},177,398.7,400,177,a\n{setup},212,399.0,400,212,b\n")
    text = "\n".join(memory_section(path)[0])
    assert "| 400 | 212 | 399.0 | b |" in text and "| 400 | 177 |" not in text
