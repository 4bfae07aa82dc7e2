"""Settings, then a plan: every committed row's hash recomputes from its settings, the settings import nothing heavy,
each bench's flags belong to it alone, and impossible requests stop with one line before anything runs."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.options import BENCHES, DepthOptions, NoiseOptions, PipelineOptions, bench_fields, owners
from benchmarks.plan import derived_lines, resolve
from benchmarks.run import main
from benchmarks.settings import Settings, flag_name

ROOT = Path(__file__).resolve().parents[1]
# the leaderboards and the grids archived when issue 20 changed their columns (committed rows all the same)
BOARDS = sorted(p for d in ("", "archive/last_epoch") for p in (ROOT / "leaderboards" / d).glob("*.csv")
                if not p.stem.endswith("_audit"))  # fmt: skip
TINY = ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16", "--train-size", "32",
        "--eval-size", "16", "--epochs", "1", "--batch-size", "16", "--wandb", "disabled", "--no-progress"]  # fmt: skip


def _kwargs(text: str) -> dict:
    return {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in text.split(";") if p)}


def _recomputed(row: dict[str, str]) -> set[str]:
    """The hashes of the settings a row can have come from: a row keeps the model's block count, image size and
    training-set size as resolved, so each was either given (the row's value) or left unset (None)."""
    hashes = set()
    for nb, img, n in itertools.product(
        [None, int(row["num_blocks"])], [None, int(row["img_size"]) if row["img_size"] else None],
        [None, int(row["train_size"])],
    ):  # fmt: skip
        noisy_val = row.get("val_protocol") == "noisy"  # --val-noise joins the hash only when set
        if row["bench"] == "noise":
            options = NoiseOptions(noise_kind=row["noise_kind"], val_noise=noisy_val)
        elif row["bench"] == "depth":  # its rows name the recipe options they used; arch, eval size: the defaults
            options = DepthOptions(width=int(row["width"]), layers_per_block=int(row["layers_per_block"]))
        else:
            options = BENCHES["accuracy"][0]()
        eval_size = row.get("eval_size", "all")
        s = Settings(
            task=row["task"], arch=row.get("arch") or None, dataset=row["dataset"], epochs=int(row["epochs"]),
            batch_size=int(row["batch_size"]), num_blocks=nb, img_size=img, train_size=n,
            eval_size=None if eval_size == "all" else int(eval_size),
            model_kwargs=_kwargs(row.get("model_kwargs", "")), optimizer=row["optimizer"], lr=float(row["lr"]),
            weight_decay=float(row["weight_decay"]), train_aug=row.get("train_aug", "false") == "true",
            bn_recalib=row["bn_recalib"] == "true", bench=row["bench"], options=options,
        )  # fmt: skip
        hashes.add(s.config_hash())
    return hashes


def test_every_committed_row_hash_recomputes_from_its_settings():
    rows = [(p.name, r) for p in BOARDS for r in csv.DictReader(p.open()) if r.get("config_hash")]
    # the leaderboards (the rest: their curves and per-run tables)
    boards = [(name, r) for name, r in rows if "num_blocks" in r and not name.endswith("_runs.csv")]
    assert len(boards) >= 40  # accuracy and noise boards, cls and seg
    bad = [(name, r["model"], r["method"], r["config_hash"]) for name, r in boards if r["config_hash"] not in
           _recomputed(r)]  # fmt: skip
    assert not bad
    hashes = {r["config_hash"] for _, r in boards}
    sidecars = {r["config_hash"] for name, r in rows if name.startswith("curves_") or name.endswith("_runs.csv")}
    assert sidecars <= hashes  # the curves and runs of those rows


def test_a_new_recipe_option_at_its_default_leaves_every_hash_unchanged():
    @dataclasses.dataclass
    class WithExtra(NoiseOptions):
        val_noise: bool = dataclasses.field(default=False, metadata={"help": "x", "recipe": True})

    base = Settings(bench="noise", options=NoiseOptions())
    assert Settings(bench="noise", options=WithExtra()).config_hash() == base.config_hash()
    assert Settings(bench="noise", options=WithExtra(val_noise=True)).config_hash() != base.config_hash()


def test_importing_the_settings_loads_no_data_checkpoints_or_network_code():
    code = (
        "import sys, benchmarks.settings, benchmarks.settings as s; s.Settings(); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('datasets', 'zoo', 'torch', 'huggingface_hub', "
        "'requests', 'urllib3', 'wandb', 'safetensors')]; print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_pipeline_bench_and_zoo_pipeline_share_one_flag_surface():
    from benchmarks.run import build_parser
    from zoo.pipeline import PipelineConfig
    from zoo.pipeline.__main__ import build_parser as zoo_parser
    from zoo.pipeline.flags import PIPELINE_FLAGS

    ours, theirs = build_parser().format_help(), zoo_parser().format_help()
    defaults = PipelineOptions()
    for fl in PIPELINE_FLAGS:
        assert fl.option in ours and fl.option in theirs
        assert getattr(defaults, fl.name) == getattr(PipelineConfig(), fl.target)  # one default, PipelineConfig's


@pytest.mark.parametrize("key", sorted(bench_fields()))
def test_every_bench_flag_given_to_another_bench_exits_2_with_one_line(key, capsys, tmp_path):
    f, benches = bench_fields()[key]
    other = next(b for b in BENCHES if b not in benches)
    flag = flag_name(key, f)
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    value = [] if isinstance(default, bool) else [",".join(map(str, default)) if isinstance(default, list) else
                                                   str(default if default is not None else 1)]  # fmt: skip
    assert main(["--bench", other, flag, *value, "--out", str(tmp_path / "runs")]) == 2  # its default value too
    err = capsys.readouterr().err.strip()
    assert f"{flag} is for --bench {' or '.join(owners(key))}, not --bench {other}" in err and "\n" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--bench", "noise", "--noise-kind", "pair"], "--noise-rates 0.6 --noise-kind pair: pair noise rate 0.6"),
        (["--stages", "2", "--bench", "accuracy"], "--stages is for --bench pipeline, not --bench accuracy"),
        (["--noise-rates", "0.2"], "--noise-rates is for --bench noise, not --bench accuracy"),
        (["--grow-at", "1"], "--grow-at is for --bench grow, not --bench accuracy"),
        (["--bench", "noise", "--noise-kind", "cross"], "invalid choice"),
        (["--bench", "pipeline", "--micro-batches", "3"], "batch_size=16 is not divisible by micro_batches=3"),
        (["--bench", "pipeline", "--replica-loss", "all"], "valid choices: global, shard"),
        (["--model", "resnet181"], "did you mean"),
    ],
)
def test_impossible_requests_stop_before_any_run_folder(argv, needle, capsys, tmp_path):
    try:
        rc = main([*TINY, *argv, "--out", str(tmp_path / "runs")])
    except SystemExit as e:  # argparse's own choices
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_resume_refuses_to_change_what_is_trained(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": ["paper_vgg"], "bench": "accuracy", "stages": 2}))
    assert main(["--resume", str(run), "--epochs", "5"]) == 2
    assert "--epochs cannot change" in capsys.readouterr().err


def test_the_plan_records_what_it_derived_and_from_where():
    cfg = resolve({"bench": "grow", "grow_at": "1", "model": ["paper_vgg"], "model_kwargs": "width=0.125",
                   "img_size": 16, "epochs": 2, "device": "cpu", "budget": "auto"})  # fmt: skip
    got = {d["setting"]: d for d in cfg.derived}
    assert cfg.methods == ["deinforeg"] and "--bench grow without --methods" in got["methods"]["source"]
    assert got["budget"] == {"setting": "budget", "value": "quick", "source": "--budget auto on cpu"}
    assert "epochs" not in got  # given
    lines = derived_lines(cfg)
    assert any(line.startswith("set methods=deinforeg from --bench grow") for line in lines)
    seg = resolve({"task": "seg", "budget": "converged", "epochs": 1, "img_size": 32})
    assert {d["setting"] for d in seg.derived} == {"train_size", "eval_size", "lr", "batch_size"}


CONFIGS = sorted([*(ROOT / "leaderboards" / "configs").glob("*.yaml"), *(ROOT / "zoo" / "pretrained" / "recipes").glob(
    "*.yaml")])  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_committed_config_reads_as_settings(path):
    from benchmarks.plan import known_keys, read_settings
    from benchmarks.settings import load_yaml

    s = read_settings(load_yaml(path, known_keys()))
    assert s.bench in BENCHES and isinstance(s.options, BENCHES[s.bench].options)
