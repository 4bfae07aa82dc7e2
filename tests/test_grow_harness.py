"""The grow bench (`--grow-at`, `--freeze-overtaken`, `--init-from` + `--add-blocks`): blocks join at their epochs,
frozen blocks stay bit-for-bit, a resumed progressive run ends exactly like an uninterrupted one, an extended
checkpoint keeps its parent's exits and round-trips, bad requests exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import zoo
from benchmarks.plan import resolve
from benchmarks.results import read_rows
from benchmarks.run import main
from zoo.checkpoints import save_checkpoint, sha256_file
from zoo.grow import grow

TINY = ["--bench", "grow", "--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16",
        "--train-size", "64", "--eval-size", "32", "--batch-size", "16", "--wandb", "disabled", "--no-progress",
        "--threads", "1"]  # fmt: skip
STEPS = 4  # 64 images / batch 16


def _run(tmp: Path, extra: list[str], resume: Path | None = None) -> tuple[int, Path]:
    if resume is not None:
        return main(["--resume", str(resume), "--no-progress"]), resume
    out = tmp / "runs"
    rc = main([*extra, "--out", str(out), "--leaderboard-dir", str(tmp / "lb")])
    return rc, sorted(out.iterdir())[-1]


def _records(run_dir: Path, variant: str) -> list[dict]:
    path = next((run_dir / "runs").glob(f"*-{variant}")) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _weights(run_dir: Path, variant: str) -> dict[str, torch.Tensor]:
    return load_file(str(next((run_dir / "runs").glob(f"*-{variant}")) / "checkpoint" / "model.safetensors"))


def test_progressive_schedule_activates_each_block_at_its_epoch(tmp_path):
    rc, run_dir = _run(tmp_path, [*TINY, "--epochs", "4", "--grow-at", "1,2,3"])
    assert rc == 0
    prog, full = _records(run_dir, "progressive"), _records(run_dir, "all_at_once")
    assert [r["active"] for r in prog] == [1, 2, 3, 4] and [r["active"] for r in full] == [4] * 4
    assert [r["block_steps"] for r in prog] == [STEPS * k for k in (1, 2, 3, 4)]
    assert [len(r["train_loss"]) for r in prog] == [1, 2, 3, 4]  # one local loss per trained block
    for r in prog:  # blocks not yet active have no exit
        assert all(v is None for v in r["val_per_block"][r["active"] :])
    rows = read_rows(tmp_path / "lb" / "grow_cls_digits.csv")
    assert [r["variant"] for r in rows] == ["progressive", "all_at_once"]
    assert float(rows[0]["block_steps_ratio"]) == pytest.approx(10 / 16)
    assert rows[0]["grow_at"] == "1;2;3" and rows[0]["seeds"] == "0" and rows[0]["run_id"] == run_dir.name
    assert rows[0]["commit"] and len(rows[0]["per_block_mean"].split(";")) == 4


def test_freeze_overtaken_keeps_frozen_blocks_bit_exact_and_resumes_exactly(tmp_path):
    args = [*TINY, "--epochs", "3", "--grow-at", "1,2", "--num-blocks", "3", "--freeze-overtaken"]
    rc, ref_dir = _run(tmp_path / "ref", args)
    assert rc == 0
    # stop in epoch 2 (step 6): block 1 has been frozen since epoch 1, block 2 trains
    rc, run_dir = _run(tmp_path / "cut", [*args, "--interrupt-after-steps", "6"])
    assert rc == 130
    at_cut = _weights(run_dir, "progressive")
    rc, _ = _run(tmp_path, [], resume=run_dir)
    assert rc == 0
    final, ref = _weights(run_dir, "progressive"), _weights(ref_dir, "progressive")
    block1 = [n for n in final if n.startswith("blocks.0.")]
    assert block1 and all(torch.equal(final[n], at_cut[n]) for n in block1)  # BatchNorm statistics included
    assert any(not torch.equal(final[n], at_cut[n]) for n in final if n.startswith("blocks.2."))
    assert sorted(final) == sorted(ref) and all(torch.equal(final[n], ref[n]) for n in ref)  # resume is exact
    recs = _records(run_dir, "progressive")
    assert [r["frozen"] for r in recs] == [[], [1], [1, 2]] and [r["active"] for r in recs] == [1, 2, 3]
    config = json.loads((next((run_dir / "runs").glob("*-progressive")) / "checkpoint" / "config.json").read_text())
    assert config["growth"]["frozen"] == [0, 1]


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """A tiny DeInfoReg paper_vgg checkpoint folder for digits (10 classes, 16 px), as the harness writes one."""
    torch.manual_seed(0)
    model = zoo.create_model("paper_vgg", num_classes=10, width=0.125, img_size=16)
    folder = tmp_path_factory.mktemp("parent") / "checkpoint"
    save_checkpoint(model.eval(), folder, metadata={"dataset": "digits"})
    return folder


def test_init_from_folder_trains_only_new_blocks_and_round_trips(tmp_path, parent):
    rc, run_dir = _run(tmp_path, ["--bench", "grow", "--init-from", str(parent), "--add-blocks", "conv:16:1",
                                  *TINY[6:], "--epochs", "1"])  # fmt: skip
    assert rc == 0
    ckpt = next((run_dir / "runs").glob("*-extended")) / "checkpoint"
    grown, old = zoo.load_checkpoint(ckpt), zoo.load_checkpoint(parent)
    assert grown.num_blocks == 5 and grown.growth["frozen"] == [0, 1, 2, 3]
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        new_preds, old_preds = grown.forward_blocks(x), old.forward_blocks(x)
    assert all(torch.equal(a, b) for a, b in zip(new_preds[:4], old_preds))  # the old exits, exactly
    torch.manual_seed(0)  # the harness seeds before building: the new block's initial weights
    init = grow(zoo.load_checkpoint(parent), [{"kind": "conv", "width": 16, "stride": 1}])
    init_new, trained_new = dict(init.blocks[4].named_parameters()), dict(grown.blocks[4].named_parameters())
    assert all(not torch.equal(init_new[n], p) for n, p in trained_new.items())
    config = grown.checkpoint_meta
    assert config["grown_from"]["weights_sha256"] == sha256_file(parent / "model.safetensors")
    assert config["grown_from"]["source"] == str(parent)
    assert config["added_blocks"] == [{"kind": "conv", "width": 16, "stride": 1, "depth": 1}]
    save_checkpoint(grown, tmp_path / "again")  # save → load → export
    again = zoo.load_checkpoint(tmp_path / "again")
    with torch.no_grad():
        assert torch.equal(again(x), grown(x)) and torch.allclose(zoo.export(again).eval()(x), grown(x), atol=1e-5)
    rows = read_rows(tmp_path / "lb" / "grow_cls_digits.csv")
    assert [r["variant"] for r in rows] == ["extended", "scratch"] and rows[0]["trained_blocks"] == "5"
    assert rows[0]["init_sha256"] == config["grown_from"]["weights_sha256"][:16]


def test_add_blocks_syntax_and_what_init_from_derives():
    cfg = resolve({"bench": "grow", "init_from": "paper_vgg.deinforeg_digits", "add_blocks": "conv:64:1"})
    assert cfg.bench == "grow" and cfg.model == ["paper_vgg"] and cfg.methods == ["deinforeg"]
    assert cfg.img_size == 16 and cfg.model_kwargs == {"width": 0.25}
    derived = {d["setting"]: d for d in cfg.derived}  # printed by the run and saved in its config.yaml
    assert {"model", "methods", "img_size", "model_kwargs"} <= set(derived)
    assert "--init-from paper_vgg.deinforeg_digits" in derived["model"]["source"]
    from benchmarks._growth import parse_block_specs

    assert parse_block_specs(["conv:64:2", "conv:32:1:2", "stages:2", "stages:resnet34:2+3"]) == [
        {"kind": "conv", "width": 64, "stride": 2, "depth": 1},
        {"kind": "conv", "width": 32, "stride": 1, "depth": 2},
        {"kind": "stages", "name": None, "stages": [2]},
        {"kind": "stages", "name": "resnet34", "stages": [2, 3]},
    ]


@pytest.fixture(scope="module")
def parent4(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = zoo.create_model("paper_vgg", num_classes=4, width=0.125, img_size=16)
    folder = tmp_path_factory.mktemp("parent4") / "checkpoint"
    save_checkpoint(model, folder)
    return folder


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--grow-at", "2,1"], "strictly increasing"),
        (["--grow-at", "1,1"], "strictly increasing"),
        (["--grow-at", "3"], "must lie in 1..2"),
        (["--grow-at", "0"], "must lie in 1..2"),
        (["--grow-at", "1,x"], "list of int"),
        (["--epochs", "8", "--grow-at", "1,2,3,4"], "at most 3"),
        (["--freeze-overtaken"], "needs --grow-at"),
        (["--grow-at", "1", "--methods", "bp"], "decoupled method"),
        (["--grow-at", "1", "--bench", "noise"], "is for --bench grow, not --bench noise"),
        (["--bench", "grow"], "needs --grow-at"),
        (["--init-from", "no/such/folder", "--add-blocks", "conv:8"], "neither a checkpoint folder"),
        (["--init-from", "PARENT", "--add-blocks", "conv:x"], "expected conv:WIDTH"),
        (["--init-from", "PARENT"], "go together"),
        (["--init-from", "PARENT4", "--add-blocks", "conv:8"], "has 4 classes; dataset digits has 10"),
        (["--init-from", "unet_resnet18.deinforeg_shapes", "--add-blocks", "conv:8"], "is a seg checkpoint"),
        (["--init-from", "PARENT", "--add-blocks", "conv:8", "--grow-at", "1"], "do not combine"),
        (["--init-from", "PARENT", "--add-blocks", "stages:paper_vgg:9"], "has no stage 9"),
    ],
)
def test_bad_growth_requests_exit_2_with_one_line(tmp_path, capsys, parent, parent4, extra, words):
    extra = [str(parent) if a == "PARENT" else str(parent4) if a == "PARENT4" else a for a in extra]
    base = ["--bench", "grow", *TINY[6:]] if "--init-from" in extra else TINY
    rc, _ = main([*base, "--epochs", "3", *extra, "--out", str(tmp_path / "runs")]), None
    err = capsys.readouterr().err.strip()
    assert rc == 2 and words in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing ran, no run folder


def test_published_grown_checkpoint_loads_by_name_and_exports(tmp_path, monkeypatch):
    from zoo import hub

    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(hub.MANIFEST_ENV, raising=False)
    model = zoo.create_model("paper_vgg.deinforeg_grown_digits", pretrained=True)
    meta = model.checkpoint_meta
    assert model.num_blocks == 5 and meta["growth"]["frozen"] == [0, 1, 2, 3]
    assert meta["grown_from"]["source"] == "paper_vgg.deinforeg_digits" and meta["added_blocks"][0]["kind"] == "conv"
    parent = zoo.create_model("paper_vgg.deinforeg_digits", pretrained=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model.forward_blocks(x)[:4], parent.forward_blocks(x)))
        assert torch.allclose(zoo.export(model).eval()(x), model(x), atol=1e-5)
