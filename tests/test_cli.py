"""End-to-end smoke runs of `python -m benchmarks.run` (tiny budgets) and its bad-flag exits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.results import read_rows
from benchmarks.run import build_parser, config_from_args, main

TINY_CLS = ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16", "--train-size", "64",
            "--eval-size", "32", "--epochs", "1", "--batch-size", "32"]  # fmt: skip
TINY_SEG = ["--model", "resnet18", "--task", "seg", "--img-size", "32", "--train-size", "16", "--eval-size", "8",
            "--epochs", "1", "--batch-size", "8"]  # fmt: skip


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    return tmp_path


def _run(tmp_path: Path, extra: list[str]) -> tuple[int, Path]:
    out = tmp_path / "runs"
    rc = main([*extra, "--out", str(out), "--leaderboard-dir", str(tmp_path / "lb"), "--no-progress"])
    dirs = sorted(out.iterdir()) if out.exists() else []
    return rc, (dirs[-1] if dirs else out)


@pytest.mark.parametrize("task_args,csv_name", [(TINY_CLS, "accuracy_cls_digits.csv"),
                                                (TINY_SEG, "accuracy_seg_shapes.csv")])  # fmt: skip
def test_smoke_run_writes_csv_run_folder_and_wandb(wandb_env, task_args, csv_name):
    tmp = wandb_env
    rc, run_dir = _run(tmp, [*task_args, "--methods", "bp,deinforeg", "--wandb", "offline"])
    assert rc == 0
    rows = read_rows(tmp / "lb" / csv_name)
    assert [r["method"] for r in rows] == ["bp", "deinforeg"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "log.txt").is_file()
    saved = json.loads((run_dir / "rows.json").read_text())
    for row, srow in zip(rows, saved):
        key = f"{row['model']}-{row['method']}-noise0-seed0"
        sub = run_dir / "runs" / key
        result = json.loads((sub / "result.json").read_text())
        assert float(row["metric_mean"]) == pytest.approx(result["metric"], abs=1e-4)
        assert float(row["metric_mean"]) == pytest.approx(srow["metric_mean"], abs=1e-4)
        assert row["best_block"] == str(result["best_block"])
        assert (sub / "metrics.jsonl").read_text().count("\n") == 1
        assert json.loads((sub / "checkpoint" / "config.json").read_text())["metrics"]["metric"] == result["metric"]
        # the offline W&B run holds the same per-block numbers in its results table
        offline = list((sub / "wandb").glob("offline-run-*"))
        assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
        table = json.loads(next(offline[0].glob("files/media/table/results_*.table.json")).read_text())
        got = [r[1] for r in table["data"]]
        assert got == pytest.approx([v for v in result["per_block"]], abs=1e-6)
        assert result["wandb_dir"] == str(offline[0])
    assert "Δ vs bp" in (run_dir / "log.txt").read_text()


def test_wandb_failure_does_not_stop_the_run(tmp_path, monkeypatch):
    import wandb

    def boom(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", boom)
    rc, run_dir = _run(tmp_path, [*TINY_CLS, "--methods", "deinforeg", "--wandb", "online"])
    assert rc == 0
    assert "W&B init failed" in (run_dir / "log.txt").read_text()
    assert read_rows(tmp_path / "lb" / "accuracy_cls_digits.csv")[0]["method"] == "deinforeg"


def test_safe_run_turns_into_noop_after_a_failure():
    from benchmarks._wandb import SafeRun

    class Broken:
        def log(self, *a, **k):
            raise OSError("disk full")

    msgs = []
    run = SafeRun(Broken(), warn=msgs.append)
    run.log({"a": 1})
    run.log({"a": 2})
    run.finish()
    assert run.failed and len(msgs) == 1


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--methods", "bp,sgd"], "valid choices: bp, deinforeg, greedy, scpl"),
        (["--model", "resnet181"], "did you mean"),
        (["--bench", "noise", "--noise-rates", "0,1.5"], "must be a number in [0, 1)"),
        (["--task", "seg", "--dataset", "digits"], "for seg"),
        (["--dataset", "cifar11"], "Available"),
        (["--epochs", "0"], "positive integer"),
        (["--stages", "3"], "is for --bench pipeline"),
        (["--model-kwargs", "foo=1"], "takes no keyword foo; valid keywords: "),
        (["--task", "seg", "--model-kwargs", "foo=1"], "takes no keyword foo; valid keywords: "),
        (["--task", "seg", "--img-size", "7"], "img_size=7 is not possible"),
        (["--bench", "pipeline", "--engines", "gpipe,zb"], "valid choices: bp-single"),
        (["--device", "tpu"], "valid choices: auto, cpu"),
        (["--model-kwargs", "width"], "key=value"),
        (["--bench", "pipeline", "--micro-batches", "2,0"], "--micro-batches must be a positive integer"),
        (["--bench", "pipeline", "--micro-batches", "2,four"], "as a list of int"),
        (["--budget", "bad"], "valid choices: auto, quick, converged"),
        (["--epochs", "4", "--warmup-epochs", "4"], "--warmup-epochs (4) must be below --epochs (4)"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
        (["--grad-clip", "-0.5"], "--grad-clip must be >= 0"),
    ],
)
def test_bad_values_exit_2_with_choices(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one line
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize("argv", [["--task", "det"], ["--bench", "speed"], ["--wandb", "maybe"], ["--nope"]])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_help_documents_every_flag():
    text = build_parser().format_help()
    for flag in ("--model", "--task", "--arch", "--methods", "--bench", "--dataset", "--data-root", "--noise-rates",
                 "--noise-kind", "--epochs", "--batch-size", "--seeds", "--num-blocks", "--device", "--wandb", "--out",
                 "--resume", "--stages", "--micro-batches", "--leaderboard-dir", "--config", "--budget"):  # fmt: skip
        assert flag in text


def test_yaml_sets_defaults_and_flags_win(tmp_path):
    from benchmarks.run import config_from_args

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: paper_vgg\nepochs: 5\nseeds: [1, 2]\nmodel-kwargs: {width: 0.25}\n")
    cfg, _ = config_from_args(["--config", str(cfg_file), "--epochs", "2"])
    assert cfg.model == ["paper_vgg"] and cfg.epochs == 2 and cfg.seeds == [1, 2]
    assert cfg.model_kwargs == {"width": 0.25} and cfg.config == str(cfg_file)
    cfg, _ = config_from_args(["--model", "paper_vgg", "--bench", "pipeline"])
    assert cfg.options.micro_batches == [2, 4]  # GPipe / 1F1B measured at both counts by default
    cfg, _ = config_from_args(["--model", "paper_vgg", "--bench", "pipeline", "--stages", "2", "--micro-batches",
                               "8,2"])  # fmt: skip
    assert cfg.options.micro_batches == [8, 2]
    cfg_file.write_text("epoch: 5\n")
    assert main(["--config", str(cfg_file)]) == 2


def test_wildcard_models_expand():
    from benchmarks.run import config_from_args

    cfg, _ = config_from_args(["--model", "paper_*"])
    assert cfg.model == ["paper_resnet18", "paper_vgg"]


def _append_many(path: str, tag: str) -> None:
    from benchmarks.accuracy import COLUMNS
    from benchmarks.results import append_rows

    for i in range(50):
        append_rows(path, [{"model": f"{tag}-{i}", "method": "bp", "metric_mean": float(i), "run_id": "x" * 500}],
                    COLUMNS)  # fmt: skip


def test_two_runs_appending_at_once_lose_no_row(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "board.csv"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), t)) for t in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    rows = read_rows(path)
    assert len(rows) == 100 and all(r["run_id"] == "x" * 500 for r in rows)
    assert {r["model"] for r in rows} == {f"{t}-{i}" for t in "ab" for i in range(50)}


def test_a_board_written_before_its_bench_gained_columns_keeps_its_rows(tmp_path):
    from benchmarks.results import append_rows

    path = tmp_path / "board.csv"
    append_rows(path, [{"model": "old", "speed": 1.5}], ["model", "speed"])
    append_rows(path, [{"model": "new", "speed": 2.0, "limit": 1.8}], ["model", "speed", "limit"])
    rows = read_rows(path)
    assert [(r["model"], r["speed"], r["limit"]) for r in rows] == [("old", "1.5000", ""), ("new", "2.0000", "1.8000")]
    with pytest.raises(ValueError, match=r"\['speed'\].*no longer writes"):
        append_rows(path, [{"model": "x"}], ["model", "limit"])
    assert len(read_rows(path)) == 2


@pytest.mark.dist
def test_pipeline_throughput_through_the_harness_logs_rows_to_wandb(wandb_env):
    tmp = wandb_env
    args = ["--bench", "pipeline", "--stages", "2", "--micro-batches", "2", "--steps", "4", "--warmup", "1"]
    args += ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16", "--batch-size", "8"]
    rc, run_dir = _run(tmp, [*args, "--wandb", "offline", "--optimizer", "sgd", "--lr", "0.05"])
    assert rc == 0
    rows = read_rows(tmp / "lb" / "throughput_pipeline_cls_digits.csv")
    saved = json.loads((run_dir / "rows.json").read_text())
    assert [r["engine"] for r in rows] == [r["engine"] for r in saved]
    assert {"deinforeg-pipe", "bp-single", "gpipe", "1f1b"} <= {r["engine"] for r in rows}
    assert {r["run_id"] for r in rows} == {run_dir.name}  # the run folder and every row share one run id
    offline = list((run_dir / "runs" / "pipeline" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    table = json.loads(next(offline[0].glob("files/media/table/rows_*.table.json")).read_text())
    engine = table["columns"].index("engine")
    assert [r[engine] for r in table["data"]] == [r["engine"] for r in rows]


def test_rows_for_the_repository_leaderboards_need_a_clean_tree(monkeypatch, capsys, tmp_path):
    import zoo.runtime
    from benchmarks import run as run_module

    monkeypatch.setattr(zoo.runtime, "git_commit", lambda *a, **k: "0123456789ab+dirty")
    argv = ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16", "--epochs", "1"]
    argv += ["--out", str(tmp_path), "--leaderboard-dir", str(run_module._REPO_LEADERBOARDS), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and "--allow-dirty" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before anything ran
    cfg, _ = config_from_args([*argv, "--allow-dirty"])
    run_module._check_provenance(cfg)  # told to: no error (the rows then carry the +dirty commit)
    cfg, _ = config_from_args([*argv[:-5], "--leaderboard-dir", str(tmp_path / "lb")])
    run_module._check_provenance(cfg)  # another folder is the user's business


def test_config_hash_names_the_recipe_not_the_seeds_or_outputs():
    base, _ = config_from_args(["--model", "paper_vgg", "--lr", "0.01"])
    same, _ = config_from_args(["--model", "paper_vgg", "--lr", "0.01", "--seeds", "3,4", "--out", "elsewhere"])
    other, _ = config_from_args(["--model", "paper_vgg", "--lr", "0.02"])
    assert base.config_hash() == same.config_hash() != other.config_hash()
    assert len(base.config_hash()) == 12


# ------------------------------------------------------------------------------------------ budgets


def test_budget_auto_is_quick_on_cpu_and_converged_on_cuda(monkeypatch):
    import torch

    import zoo.runtime
    from benchmarks.plan import DATASET_BUDGETS

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg, _ = config_from_args(["--model", "resnet18", "--task", "seg"])
    quick = DATASET_BUDGETS["shapes"]["quick"]
    assert cfg.budget == "quick" and {k: getattr(cfg, k) for k in quick} == quick
    digits, _ = config_from_args(["--model", "paper_vgg"])
    assert (digits.budget, digits.epochs, digits.train_size) == ("quick", DATASET_BUDGETS["digits"]["quick"]["epochs"],
                                                                 None)  # fmt: skip
    monkeypatch.setattr(zoo.runtime, "resolve_device", lambda name="auto": torch.device("cuda"))
    cfg, _ = config_from_args(["--model", "resnet18", "--task", "seg"])
    conv = DATASET_BUDGETS["shapes"]["converged"]
    assert cfg.budget == "converged" and {k: getattr(cfg, k) for k in conv} == conv


def test_budget_values_the_user_sets_win_and_the_name_is_not_hashed(tmp_path):
    from benchmarks.plan import DATASET_BUDGETS

    conv = DATASET_BUDGETS["shapes"]["converged"]
    cfg, _ = config_from_args(["--task", "seg", "--budget", "converged", "--epochs", "2", "--lr", "0.01"])
    assert (cfg.budget, cfg.epochs, cfg.lr, cfg.train_size) == ("converged", 2, 0.01, conv["train_size"])
    (tmp_path / "c.yaml").write_text("budget: converged\nimg_size: 32\n")
    cfg, _ = config_from_args(["--task", "seg", "--config", str(tmp_path / "c.yaml")])
    assert (cfg.img_size, cfg.epochs) == (32, conv["epochs"])  # the YAML's value wins too
    quick, _ = config_from_args(["--task", "seg", "--budget", "quick"])
    q = DATASET_BUDGETS["shapes"]["quick"]
    spelled = [f"--{k.replace('_', '-')}={v}" for k, v in q.items()]
    same, _ = config_from_args(["--task", "seg", "--budget", "converged", *spelled])
    assert same.budget == "converged" and same.config_hash() == quick.config_hash()  # resolved values, not the name
    converged, _ = config_from_args(["--task", "seg", "--budget", "converged"])
    assert converged.config_hash() != quick.config_hash()
    assert "budget" not in quick.recipe()


def test_noise_run_writes_curves_audit_and_a_publishable_checkpoint(tmp_path):
    from benchmarks import publish
    from leaderboards.render import main as render

    argv = [
        *TINY_CLS,
        "--bench",
        "noise",
        "--train-size",
        "100",
        "--noise-rates",
        "0.4",
        "--seeds",
        "0,1",
        "--methods",
        "bp,deinforeg",
    ]
    rc, run_dir = _run(tmp_path, argv)
    assert rc == 0
    lb = tmp_path / "lb"
    (row,) = [r for r in read_rows(lb / "noise_cls_digits.csv") if r["method"] == "deinforeg"]
    assert row["budget"] == "quick" and "budget: quick" in (run_dir / "log.txt").read_text().splitlines()[-1 - 1]
    # the audit: one row per seed (not per method), exactly round(0.4 · 100) flips, every flip in a class
    audit = read_rows(lb / "noise_cls_digits_audit.csv")
    assert [r["seed"] for r in audit] == ["0", "1"]
    for r in audit:
        assert int(r["num_flipped"]) == int(r["expected"]) == round(0.4 * 100) and r["train_size"] == "100"
        assert sum(int(c.split(":")[1]) for c in r["flips_per_class"].split(";")) == int(r["num_flipped"])
        assert sum(int(t.split(":")[1]) for t in r["transitions"].split(";")) == int(r["num_flipped"])
        assert r["config_hash"] == row["config_hash"] and r["run_id"] == row["run_id"]
    # the curves: one row per run and epoch; the chosen exit's validation metric is the best block's
    curves = read_rows(lb / "curves_cls_digits.csv")
    assert len(curves) == 4 and {c["config_hash"] for c in curves} == {row["config_hash"]}
    for c in curves:
        key = f"{c['model']}-{c['method']}-noise0.4-seed{c['seed']}"
        (rec,) = [json.loads(line) for line in (run_dir / "runs" / key / "metrics.jsonl").read_text().splitlines()]
        want = rec["val_last"] if c["method"] == "bp" else max(v for v in rec["val_per_block"] if v is not None)
        assert float(c["val_chosen"]) == pytest.approx(want, abs=1e-4) and c["epoch"] == "1"
    # the checkpoint carries its recipe; published, the manifest entry names it, the exit and the test metric
    ckpt = run_dir / "runs" / "paper_vgg-deinforeg-noise0.4-seed0" / "checkpoint"
    saved = json.loads((ckpt / "config.json").read_text())
    assert saved["config_hash"] == row["config_hash"] and saved["recipe"]["lr"] == float(row["lr"])
    manifest = tmp_path / "zoo" / "manifest.json"
    assert publish.main([str(ckpt), "--name", "paper_vgg.noisy_digits", "--manifest", str(manifest)]) == 0
    entry = json.loads(manifest.read_text())["paper_vgg.noisy_digits"]
    assert entry["config_hash"] == row["config_hash"] and entry["budget"] == "quick"
    assert {"val_accuracy", "test_accuracy"} <= set(entry["metrics"])
    assert entry["exit_policy"] == "best" and entry["exit_block"] == saved["best_block"] + 1
    # the renderer draws the recipe's curves and lists the audit
    (lb / "README.md").write_text("# Leaderboards\n")
    assert render(["--dir", str(lb)]) == 0
    text = (lb / "README.md").read_text()
    png = f"curves_cls_digits_{row['config_hash']}.png"
    assert "## Learning curves" in text and f"]({png})" in text and (lb / png).stat().st_size > 5000
    assert "noise_cls_digits_audit.csv" in text and "| 40 / 40 | 100 labels |" in text


def test_warmup_and_clipping_are_recipe_settings_that_reach_the_trainer():
    from benchmarks._runner import train_config

    base, _ = config_from_args(["--model", "paper_vgg", "--epochs", "4"])
    warm, _ = config_from_args(["--model", "paper_vgg", "--epochs", "4", "--warmup-epochs", "1.5"])
    clip, _ = config_from_args(["--model", "paper_vgg", "--epochs", "4", "--grad-clip", "1"])
    # hashed only when set: the hash of every earlier row (no warm-up, no clipping) is unchanged
    assert "warmup_epochs" not in base.recipe() and "grad_clip" not in base.recipe()
    assert len({base.config_hash(), warm.config_hash(), clip.config_hash()}) == 3
    assert warm.recipe()["warmup_epochs"] == 1.5 and clip.recipe()["grad_clip"] == 1.0
    assert train_config(warm, steps_per_epoch=10).warmup_steps == 15  # epochs of the run's own length
    assert train_config(warm).warmup_steps == 0  # the timing benches have no epochs
    assert train_config(clip).grad_clip == 1.0 and train_config(base).grad_clip is None


def test_rows_name_warmup_and_clipping_in_their_schedule():
    from benchmarks.accuracy import recipe_columns

    plain, _ = config_from_args(["--model", "paper_vgg", "--epochs", "4"])
    tuned, _ = config_from_args(["--model", "paper_vgg", "--epochs", "4", "--warmup-epochs", "1", "--grad-clip", "2"])
    assert recipe_columns(plain)["schedule"] == "cosine to 0.01x, warmup 0, per-block optimizers"
    assert recipe_columns(tuned)["schedule"] == (
        "cosine to 0.01x, warmup 1 epochs, per-block optimizers, grad norm clipped at 2"
    )
