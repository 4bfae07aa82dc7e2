"""The pipeline bench of the harness end to end at toy size: rows, ratios, the best pipelining baseline, one run of
the decoupled engines per local method, user errors before anything runs."""

from __future__ import annotations

import csv
import json

import pytest

from benchmarks import pipeline
from benchmarks.plan import resolve
from zoo.errors import UserError
from zoo.runtime import environment

pytestmark = pytest.mark.dist


def _cfg(tmp_path, **kw):
    values = dict(
        bench="pipeline", model=["paper_vgg"], model_kwargs="width=0.125", img_size=16, batch_size=8, steps=4,
        warmup=1, optimizer="sgd", lr=0.05, device="cpu", wandb="disabled", leaderboard_dir=str(tmp_path / "lb"),
    )  # fmt: skip
    return resolve(values | kw)


def _run(cfg, tmp_path, capsys=None):
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    rows = pipeline.run(cfg, run_dir, "test-run", environment("cpu"), print)
    return rows, list(csv.DictReader((tmp_path / "lb" / "throughput_pipeline_cls_digits.csv").open()))


GPIPE_1F1B = ["bp-single", "deinforeg-single", "deinforeg-pipe", "gpipe", "1f1b", "bp-single-mb"]


def test_bench_writes_one_row_per_engine_and_micro_batch_count(tmp_path, capsys):
    rows, written = _run(_cfg(tmp_path, micro_batches=[2, 4], engines=GPIPE_1F1B), tmp_path)
    out = capsys.readouterr().out
    got = sorted((r["engine"], r["method"], r["micro_batches"], r["batch_size"]) for r in written)
    want = [("1f1b", "bp", "2", "8"), ("1f1b", "bp", "4", "8"), ("bp-single", "bp", "1", "8")]
    want += [("bp-single-mb", "bp", "1", "2"), ("bp-single-mb", "bp", "1", "4")]
    want += [("deinforeg-pipe", "deinforeg", "1", "8"), ("deinforeg-single", "deinforeg", "1", "8")]
    want += [("gpipe", "bp", "2", "8"), ("gpipe", "bp", "4", "8")]
    assert got == sorted(want)
    assert {r["run_id"] for r in written} == {"test-run"} and {r["dataset"] for r in written} == {"digits"}
    by = {(r["engine"], r["micro_batches"], r["batch_size"]): r for r in written}
    assert float(by["bp-single", "1", "8"]["speedup_vs_bp"]) == pytest.approx(1.0)
    # ratios against the best GPipe / 1F1B row of the run: exactly one row is 1.0, none above
    pipelining = [float(r["speedup_vs_pipelining_bp"]) for r in written if r["engine"] in ("gpipe", "1f1b")]
    assert max(pipelining) == pytest.approx(1.0) and sum(v == pytest.approx(1.0) for v in pipelining) == 1
    # the DeInfoReg pipeline's profiled partition is the one GPipe / 1F1B run on
    assert len({r["partition"] for r in written if r["stages"] == "2"}) == 1
    assert all(float(v) >= 0 for r in written for v in r["peak_mem_mb_per_stage"].split("/"))
    assert "best BP over torch.distributed.pipelining:" in out and "scaling model" in out
    assert "each process on its own core" in written[0]["note"] and "optimizer sgd" in written[0]["note"]
    assert (tmp_path / "lb" / "throughput_pipeline_cls_digits_paper_vgg.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "rows.json").read_text())[0]["run_id"] == "test-run"
    assert len(rows) == len(written)


def test_the_decoupled_engines_train_the_local_method_asked_for(tmp_path):
    """`--methods scpl` trains SCPL (it once silently trained DeInfoReg): the rows carry the method."""
    cfg = _cfg(tmp_path, methods=["scpl"], engines=["bp-single", "deinforeg-single", "deinforeg-pipe"], plot=False)
    _, written = _run(cfg, tmp_path)
    assert sorted((r["engine"], r["method"]) for r in written) == [
        ("bp-single", "bp"),
        ("deinforeg-pipe", "scpl"),
        ("deinforeg-single", "scpl"),
    ]


def test_each_local_method_runs_the_decoupled_engines_once(tmp_path, monkeypatch):
    """Which engine receives which method (engines replaced by a recorder: no processes)."""
    seen = []

    def fake(engine, method, pc, builder, batches):
        model = builder(method=method if engine != "bp-single" else "bp")
        seen.append((engine, method, model.method, pc.micro_batches if engine in pipeline.MICRO_ENGINES else None))
        stage = {k: 1.0 for k in ("samples_per_s", "busy", "peak_mem_mb", "compute_s_per_step", "comm_s_per_step")}
        stage |= {k: 1.0 for k in ("bytes_sent_per_step", "bytes_received_per_step", "recv_transfer_s_per_step")}
        stage["blocked_s_per_step"] = 0.0
        return {"stages": [stage], "partition": [2, 2], "predicted_s": None, "profile": None}

    monkeypatch.setattr(pipeline, "_run_engine", fake)
    cfg = _cfg(tmp_path, methods=["bp", "deinforeg", "greedy", "scpl"], micro_batches=[2], plot=False)
    _run(cfg, tmp_path)
    local = [(e, m, built) for e, m, built, _ in seen if e.startswith("deinforeg")]
    assert sorted(local) == sorted(
        (e, m, m) for e in ("deinforeg-single", "deinforeg-pipe") for m in ("deinforeg", "greedy", "scpl")
    )
    assert seen[0][:2] == ("deinforeg-pipe", "deinforeg")  # the first pipeline decides the partition
    assert sorted((e, m, mb) for e, m, _, mb in seen if m == "bp") == [
        ("1f1b", "bp", 2), ("bp-contended", "bp", None), ("bp-single", "bp", None), ("bp-single-mb", "bp", 2),
        ("dualpipev", "bp", 2),
        ("gpipe", "bp", 2), ("zb-interleaved", "bp", 2), ("zbv", "bp", 2),
    ]  # fmt: skip


def test_zero_bubble_engines_give_a_row_or_say_why_not(tmp_path, capsys):
    """ZB1P and ZBV run at M=2 on the [2, 2] partition; DualPipeV needs M >= 4 stages and says so; the
    `× best pipelining BP` ratio is over every schedule that ran."""
    engines = ["bp-single", "gpipe", "zb-interleaved", "zbv", "dualpipev"]
    cfg = _cfg(tmp_path, engines=engines, micro_batches=[2], partition=[2, 2], steps=3, plot=False)
    _, written = _run(cfg, tmp_path)
    out = capsys.readouterr().out
    assert sorted(r["engine"] for r in written) == ["bp-single", "gpipe", "zb-interleaved", "zbv"]
    assert "dualpipev M=2: not run (dualpipev needs at least as many micro-batches as pipeline stages" in out
    ratios = [float(r["speedup_vs_pipelining_bp"]) for r in written if r["engine"] != "bp-single"]
    assert max(ratios) == pytest.approx(1.0) and all(r["partition"] == "2+2" for r in written[1:])
    assert "of the schedules that ran: gpipe M=2, zb-interleaved M=2, zbv M=2" in out


def test_zero_bubble_engines_on_too_few_blocks_are_skipped_with_the_reason(tmp_path, capsys):
    cfg = _cfg(tmp_path, engines=["bp-single", "zbv"], micro_batches=[2], partition=[1, 3], steps=2, plot=False)
    _, written = _run(cfg, tmp_path)
    assert [r["engine"] for r in written] == ["bp-single"]
    assert "zbv M=2: not run (zbv runs 2 pipeline stages per rank: partition [1, 3]" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(micro_batches=[2, 3]), "batch_size=8 is not divisible by micro_batches=3"),
        (dict(methods=["bp"]), "give at least one of deinforeg, greedy, scpl in --methods"),
    ],
)
def test_user_errors_stop_before_anything_runs(tmp_path, kw, needle):
    with pytest.raises(UserError, match=needle):
        _run(_cfg(tmp_path, **kw), tmp_path)
    assert not (tmp_path / "lb").exists()


def test_finer_cuts_let_the_bench_choose_one_block_per_stage_by_measured_cost(tmp_path, capsys):
    """`--model-kwargs cut=block`: the units are profiled, choose_cuts merges them into one block per stage, and
    every engine trains that model on a 1+1 partition."""
    cfg = _cfg(
        tmp_path, model=["test_resnet"], model_kwargs="cut=block", engines=["bp-single", "deinforeg-pipe", "gpipe"],
        micro_batches=[2], steps=3, plot=False,
    )  # fmt: skip
    _, written = _run(cfg, tmp_path)
    out = capsys.readouterr().out
    assert "cut=block: 4 units profiled" in out and "choose_cuts: blocks of " in out
    assert sorted(r["engine"] for r in written) == ["bp-single", "deinforeg-pipe", "gpipe"]
    assert {r["partition"] for r in written if r["engine"] != "bp-single"} == {"1+1"}
    assert "residual-block units chosen by choose_cuts" in written[0]["note"]
    pipe = next(r for r in written if r["engine"] == "deinforeg-pipe")
    assert len(pipe["predicted_ms_per_stage"].split("/")) == 2


def test_memory_balanced_cuts_and_per_stage_peaks_counted_from_tensors(tmp_path, capsys):
    """`--balance memory`: the fine units are measured (tensors counted) and cut where the stages' predicted peaks
    balance; every stage's peak is zoo.memory's count of its second (warm-up) step, the same as --bench memory."""
    cfg = _cfg(
        tmp_path, model=["test_resnet"], model_kwargs="cut=block", engines=["bp-single", "deinforeg-pipe"],
        steps=3, plot=False, balance="memory",
    )  # fmt: skip
    rows, written = _run(cfg, tmp_path)
    out = capsys.readouterr().out
    assert "cut=block: 4 units measured" in out and "memory-balanced cuts: blocks of " in out
    assert "cuts balance memory" in written[0]["note"]
    pipe = next(r for r in written if r["engine"] == "deinforeg-pipe")
    peaks = [float(v) for v in pipe["peak_mem_mb_per_stage"].split("/")]
    assert len(peaks) == 2 and all(v > 0 for v in peaks)
    assert "tensors counted (zoo.memory)" in out


def test_a_bad_balance_is_refused_by_the_launcher_and_the_harness(tmp_path, capsys):
    from benchmarks.run import main
    from zoo.pipeline import PipelineConfig
    from zoo.pipeline.checks import check_config

    with pytest.raises(UserError, match=r"unknown balance 'speed'; valid choices: time, memory"):
        check_config(PipelineConfig(balance="speed"), devices=False)
    assert main(["--bench", "pipeline", "--balance", "speed", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "valid choices: time, memory" in err
    assert not any(tmp_path.iterdir())


def test_the_contended_limit_and_each_pipelines_fraction_of_it_per_repeat():
    """limit = (S independent BP processes' summed rate) / (one BP process's), per repeat; a pipeline's fraction is
    its × BP over that repeat's limit, then the median."""
    from benchmarks._pipeline_report import contended_limits, fraction_of_limit, summaries

    def run(engine, rates):
        stage = dict.fromkeys(("busy", "peak_mem_mb", "compute_s_per_step", "comm_s_per_step"), 1.0)
        stage |= dict.fromkeys(("bytes_sent_per_step", "bytes_received_per_step", "recv_transfer_s_per_step"), 0.0)
        stages = [stage | {"samples_per_s": r, "blocked_s_per_step": 0.0} for r in rates]
        return {"stages": stages, "partition": None, "predicted_s": None, "profile": None, "engine": engine,
                "method": "bp" if engine != "deinforeg-pipe" else "deinforeg", "m": None}  # fmt: skip

    results = {
        "bp-single": [run("bp-single", [100.0]), run("bp-single", [50.0]), run("bp-single", [100.0])],
        # two processes at once: 90 + 90 of a solo 100 (limit 1.8), then 40 + 40 of a solo 50 (1.6), then 1.9
        "bp-contended": [run("bp-contended", [90.0, 90.0]), run("bp-contended", [40.0, 40.0]),
                         run("bp-contended", [95.0, 95.0])],
        # the pipeline delivers its slowest stage: 162 (0.9 of 1.8), 72 (0.9 of 1.6), 171 (0.9 of 1.9)
        "deinforeg-pipe": [run("deinforeg-pipe", [170.0, 162.0]), run("deinforeg-pipe", [72.0, 80.0]),
                           run("deinforeg-pipe", [171.0, 180.0])],
    }  # fmt: skip
    summ = summaries(results)
    assert summ["bp-contended"]["samples_per_s"] == 180.0  # the median of the summed rates
    assert contended_limits(summ) == pytest.approx([1.8, 1.6, 1.9])
    assert fraction_of_limit(summ, "deinforeg-pipe") == pytest.approx(0.9)
    assert fraction_of_limit(summ, "bp-single") is None and fraction_of_limit(summ, "bp-contended") is None
    del summ["bp-contended"]
    assert contended_limits(summ) == [] and fraction_of_limit(summ, "deinforeg-pipe") is None


def test_the_pipeline_rows_carry_the_contended_limit_and_the_renderer_shows_it(tmp_path, capsys):
    from leaderboards.sections import _pipeline_section

    cfg = _cfg(tmp_path, engines=["bp-single", "bp-contended", "deinforeg-pipe"], steps=4, plot=False)
    _, written = _run(cfg, tmp_path)
    out = capsys.readouterr().out
    by = {r["engine"]: r for r in written}
    assert set(by) == {"bp-single", "bp-contended", "deinforeg-pipe"} and by["bp-contended"]["stages"] == "2"
    limit = float(by["bp-contended"]["speedup_vs_bp"])
    assert all(float(r["contended_limit"]) == pytest.approx(limit, rel=1e-3) for r in written) and limit > 0
    pipe = by["deinforeg-pipe"]
    assert float(pipe["fraction_of_limit"]) == pytest.approx(float(pipe["speedup_vs_bp"]) / limit, rel=1e-3)
    assert by["bp-single"]["fraction_of_limit"] == "" and "contended limit: 2 independent BP processes" in out
    text = "\n".join(_pipeline_section(tmp_path / "lb" / "throughput_pipeline_cls_digits.csv"))
    assert "| limit | of limit |" in text and f"| {limit:.2f} | {float(pipe['fraction_of_limit']):.0%} |" in text
    # the stages' balance (mean / max of their measured compute) and the fraction equal stages would reach
    from leaderboards.sections import stage_balance

    ms = [float(v) for v in pipe["measured_ms_per_stage"].split("/")]
    balance = stage_balance(pipe["measured_ms_per_stage"])
    assert balance == pytest.approx(sum(ms) / 2 / max(ms)) and 0 < balance <= 1
    assert f"| {balance:.2f} | {float(pipe['fraction_of_limit']) / balance:.0%} |" in text
    assert f"stage balance (mean / max of the stages' compute): {balance:.2f}" in out
    assert stage_balance("101.4/121.4") == pytest.approx(111.4 / 121.4)
    assert stage_balance("236.6") is None and stage_balance("") is None and stage_balance(None) is None
