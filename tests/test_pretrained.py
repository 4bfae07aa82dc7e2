"""Published checkpoints: every manifest entry pulls, verifies and reproduces its recorded validation metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import datasets
import zoo
from benchmarks import publish
from zoo import checkpoints as ck
from zoo import hub
from zoo.metrics import ConfusionMatrix

MANIFEST = Path(ck.__file__).parent / "pretrained" / "manifest.json"
ENTRIES = hub.read_manifest(MANIFEST)
REQUIRED = [
    f"{arch}.{method}_{ds}"
    for arch, ds in [("paper_vgg", "digits"), ("paper_resnet18", "digits"), ("resnet18", "digits"),
                     ("unet_resnet18", "shapes")]
    for method in ("deinforeg", "bp")
]  # fmt: skip


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(hub.MANIFEST_ENV, raising=False)
    return tmp_path / "cache"


@torch.no_grad()
def _metric(model: zoo.DecoupledModel, dataset: str, image_size: int, split: str = "val") -> float:
    model.eval()
    ds = datasets.create_dataset(dataset, split, image_size=image_size)
    mat = ConfusionMatrix(model.num_classes, 255 if model.task == "seg" else -100)
    for x, y in datasets.create_loader(ds, 128):
        mat.update(model(x), y)
    return mat.miou() if model.task == "seg" else mat.accuracy()


def test_required_checkpoints_are_published():
    assert sorted(set(REQUIRED) - set(ENTRIES)) == []
    assert sorted(zoo.list_models(pretrained=True)) == sorted(ENTRIES)
    assert set(zoo.list_models(pretrained=True, task="seg")) == {n for n, e in ENTRIES.items() if e["task"] == "seg"}


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_published_checkpoint_reproduces_its_metric(name: str, cache: Path):
    entry = ENTRIES[name]
    assert entry["size_bytes"] < 8 * 2**20, "published checkpoints stay a few MB"
    model = zoo.create_model(name, pretrained=True)
    assert (cache / name).is_dir()  # pulled through the cache, verified by sha256
    meta = model.checkpoint_meta
    assert meta["dataset"] == entry["dataset"] and meta["task"] == entry["task"]
    assert entry["metrics"] and set(entry["metrics"]) <= {"val_accuracy", "val_miou", "test_accuracy", "test_miou"}
    for key, recorded in entry["metrics"].items():  # every split the manifest records, measured on that split
        split = key.split("_")[0]
        assert abs(_metric(model, entry["dataset"], entry["image_size"], split) - recorded) <= 0.5, key


def test_publish_cli_round_trip(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch):
    torch.manual_seed(0)
    m = zoo.create_model("paper_vgg", method="greedy", width=0.125, img_size=16)
    meta = {"dataset": "digits", "image_size": 16, "config_hash": "0123456789ab"}  # the harness saves the hash
    src = ck.save_checkpoint(m, tmp_path / "run" / "checkpoint", metadata=meta)
    manifest = tmp_path / "zoo" / "manifest.json"
    rc = publish.main([str(src), "--name", "paper_vgg.tiny_digits", "--half", "--manifest", str(manifest)])
    assert rc == 0
    entry = json.loads(manifest.read_text())["paper_vgg.tiny_digits"]
    assert entry["weights_dtype"] == "float16" and entry["source"] == "paper_vgg.tiny_digits"
    assert entry["config_hash"] == "0123456789ab" and {"val_accuracy", "test_accuracy"} <= set(entry["metrics"])
    assert entry["exit_policy"] == "best" and entry["exit_block"] == entry["best_block"] + 1
    assert not (tmp_path / "zoo" / "paper_vgg.tiny_digits" / ck.TRAINING_STATE_NAME).exists()
    monkeypatch.setenv(hub.MANIFEST_ENV, str(manifest))
    pulled = zoo.create_model("paper_vgg.tiny_digits", pretrained=True)
    assert abs(_metric(pulled, "digits", 16) - entry["metrics"]["val_accuracy"]) < 1e-3
    assert publish.main([str(tmp_path / "nothing"), "--name", "x.y", "--manifest", str(manifest)]) == 2


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_published_checkpoint_exports(name: str, cache: Path):
    model = zoo.create_model(name, pretrained=True)
    entry = ENTRIES[name]
    ds = datasets.create_dataset(entry["dataset"], "val", image_size=entry["image_size"])
    x = torch.stack([ds[i][0] for i in range(4)])
    plain = zoo.export(model)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), rtol=1e-4, atol=1e-4)
