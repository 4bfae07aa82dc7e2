"""Checkpoints: atomic save, round trip, verified pulls (local, file://, http), clear errors, resume."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch

import zoo
from zoo import checkpoints as ck
from zoo import hub
from zoo.train import TrainConfig, Trainer, seed_everything


def _tiny(method: str = "deinforeg", num_classes: int = 10, name: str = "paper_vgg") -> zoo.DecoupledModel:
    torch.manual_seed(0)
    return zoo.create_model(name, method=method, num_classes=num_classes, width=0.125, img_size=16)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    m = _tiny()
    m.set_best_block(2)
    m.exit_policy = "best"
    return ck.save_checkpoint(m, tmp_path / "ck", metadata={"dataset": "digits", "metrics": {"val_accuracy": 12.5}})


@pytest.fixture
def manifest(tmp_path: Path, saved: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A manifest with one entry (relative source) and a private cache."""
    src = tmp_path / "zoo_src"
    shutil.copytree(saved, src / "paper_vgg.test")
    entry = {
        "source": "paper_vgg.test",
        "sha256": {n: ck.sha256_file(saved / n) for n in (ck.CONFIG_NAME, ck.WEIGHTS_NAME)},
        "task": "cls",
        "architecture": "paper_vgg",
        "metrics": {"val_accuracy": 12.5},
    }
    path = src / "manifest.json"
    path.write_text(json.dumps({"paper_vgg.test": entry}))
    monkeypatch.setenv(hub.MANIFEST_ENV, str(path))
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "cache"))
    return path


def test_round_trip(saved: Path, x: torch.Tensor):
    m = _tiny()
    m.set_best_block(2)
    m.exit_policy = "best"
    m.eval()
    loaded = zoo.load_checkpoint(saved)
    assert sorted(p.name for p in saved.iterdir()) == [ck.CONFIG_NAME, ck.WEIGHTS_NAME]
    meta = loaded.checkpoint_meta
    assert meta["dataset"] == "digits" and meta["best_block"] == 2 and meta["exit_policy"] == "best"
    assert meta["input_size"] == [3, 16, 16] and meta["num_blocks"] == 4 and meta["method"] == "deinforeg"
    assert loaded.exit_policy == "best" and int(loaded.best_block) == 2
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))


def test_half_precision_loads_as_float32(tmp_path: Path, x: torch.Tensor):
    m = _tiny().eval()
    full = ck.save_checkpoint(m, tmp_path / "full")
    half = ck.save_checkpoint(m, tmp_path / "half", dtype=torch.float16)
    assert (half / ck.WEIGHTS_NAME).stat().st_size < 0.6 * (full / ck.WEIGHTS_NAME).stat().st_size
    loaded = ck.load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), m(x), atol=5e-2, rtol=5e-2)


def test_interrupted_save_keeps_old_checkpoint(saved: Path, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch):
    before = ck.load_checkpoint(saved)

    def crash(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C after the weights are written, before config.json

    monkeypatch.setattr(ck, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(_tiny(method="greedy"), saved, metadata={"dataset": "other"})
    assert [p.name for p in saved.parent.iterdir()] == ["ck"]  # no temporary folder left behind
    after = ck.load_checkpoint(saved)
    assert after.method == "deinforeg" and after.checkpoint_meta["dataset"] == "digits"
    with torch.no_grad():
        assert torch.equal(after(x), before(x))


def test_half_written_folder_does_not_load(saved: Path, tmp_path: Path):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(saved / ck.WEIGHTS_NAME, half)  # what a killed process could leave: weights, no config
    with pytest.raises(ck.CheckpointError, match="config.json is missing"):
        ck.load_checkpoint(half)


def test_replace_existing(saved: Path):
    ck.save_checkpoint(_tiny(method="greedy"), saved)
    assert ck.load_checkpoint(saved).method == "greedy"
    assert [p.name for p in saved.parent.iterdir()] == ["ck"]


def test_truncated_or_corrupt(saved: Path):
    w = saved / ck.WEIGHTS_NAME
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="truncated or corrupt"):
        ck.load_checkpoint(saved)
    w.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one flipped byte
    with pytest.raises(ck.CheckpointError, match="sha256"):
        ck.load_checkpoint(saved)
    w.write_bytes(data)
    (saved / ck.CONFIG_NAME).write_text((saved / ck.CONFIG_NAME).read_text()[:40])
    with pytest.raises(ck.CheckpointError, match="truncated or corrupt"):
        ck.load_checkpoint(saved)


def test_class_count_mismatch(saved: Path):
    with pytest.raises(ck.CheckpointError, match=r"has 10 classes, 7 were asked"):
        ck.load_checkpoint(saved, num_classes=7)
    with pytest.raises(ck.CheckpointError, match=r"num_classes mismatch.*10 classes.*7 classes"):
        ck.load_weights(_tiny(num_classes=7), saved)


def test_architecture_mismatch(saved: Path):
    other = zoo.create_model("paper_resnet18", width=0.125, img_size=16)
    with pytest.raises(ck.CheckpointError, match=r"name mismatch.*paper_vgg.*paper_resnet18"):
        ck.load_weights(other, saved)
    cfg = json.loads((saved / ck.CONFIG_NAME).read_text())
    cfg["model"]["width"] = 0.25  # the config now describes a wider net than the weights
    (saved / ck.CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ck.CheckpointError, match="does not fit the architecture"):
        ck.load_checkpoint(saved)


def test_pull_by_name(manifest: Path, x: torch.Tensor, tmp_path: Path):
    assert zoo.list_models(pretrained=True) == ["paper_vgg.test"]
    assert zoo.list_models(pretrained=True, task="seg") == []
    m = zoo.create_model("paper_vgg.test")
    ref = ck.load_checkpoint(manifest.parent / "paper_vgg.test")
    with torch.no_grad():
        assert torch.equal(m(x), ref(x))
    assert zoo.create_model("paper_vgg", pretrained=True).checkpoint_meta["dataset"] == "digits"
    assert list((tmp_path / "cache" / "paper_vgg.test").iterdir())  # cached under $DEINFOREG_CACHE


def test_unknown_tag_lists_available(manifest: Path):
    with pytest.raises(ck.CheckpointError, match=r"unknown pretrained tag 'paper_vgg.nope'; available: paper_vgg.test"):
        zoo.create_model("paper_vgg.nope")


def test_hash_mismatch_refused_and_removed(manifest: Path, tmp_path: Path):
    data = json.loads(manifest.read_text())
    data["paper_vgg.test"]["sha256"][ck.WEIGHTS_NAME] = "0" * 64
    manifest.write_text(json.dumps(data))
    with pytest.raises(ck.CheckpointError, match="sha256 mismatch.*model.safetensors.*removed"):
        hub.pull("paper_vgg.test")
    cache = tmp_path / "cache" / "paper_vgg.test"
    assert not cache.exists() or not any(cache.iterdir())


def test_damaged_cache_is_fetched_again(manifest: Path):
    folder = hub.pull("paper_vgg.test")
    (folder / ck.WEIGHTS_NAME).write_bytes(b"garbage")
    again = hub.pull("paper_vgg.test")
    assert ck.sha256_file(again / ck.WEIGHTS_NAME) == ck.sha256_file(
        manifest.parent / "paper_vgg.test/model.safetensors"
    )


def test_class_count_mismatch_by_name(manifest: Path):
    with pytest.raises(ck.CheckpointError, match=r"paper_vgg.test.*has 10 classes, 3 were asked"):
        zoo.create_model("paper_vgg.test", num_classes=3)


def test_manifest_architecture_mismatch(manifest: Path):
    data = json.loads(manifest.read_text())
    data["paper_vgg.test"]["architecture"] = "paper_resnet18"
    manifest.write_text(json.dumps(data))
    with pytest.raises(ck.CheckpointError, match="manifest says paper_resnet18, the checkpoint is paper_vgg"):
        zoo.create_model("paper_vgg.test")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_pull(manifest: Path, http_root, x: torch.Tensor, tmp_path: Path):
    root, base = http_root
    shutil.copytree(manifest.parent / "paper_vgg.test", root / "vgg")
    data = json.loads(manifest.read_text())
    data["paper_vgg.test"]["source"] = f"{base}/vgg"
    manifest.write_text(json.dumps(data))
    ref = ck.load_checkpoint(root / "vgg")
    with torch.no_grad():
        assert torch.equal(zoo.create_model("paper_vgg.test")(x), ref(x))
        assert torch.equal(zoo.load_checkpoint(f"{base}/vgg")(x), ref(x))  # any checkpoint URL
        assert torch.equal(zoo.load_checkpoint((root / "vgg").as_uri())(x), ref(x))
    with pytest.raises(ck.CheckpointError, match="cannot download.*404"):
        zoo.load_checkpoint(f"{base}/missing")


def _loader(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs, ys = torch.randn(n * 4, 3, 16, 16, generator=g), torch.randint(0, 10, (n * 4,), generator=g)
    return [(xs[i : i + 4], ys[i : i + 4]) for i in range(0, n * 4, 4)]


@pytest.mark.parametrize("method", ["deinforeg", "bp"])
def test_resume_equals_uninterrupted(tmp_path: Path, method: str):
    data, total = _loader(), 8
    cfg = TrainConfig(optimizer="adamw", lr=1e-2)

    seed_everything(0)
    straight = Trainer(_tiny(method), cfg, total)
    for xb, yb in data:
        straight.train_step(xb, yb)

    seed_everything(0)
    first = Trainer(_tiny(method), cfg, total)
    for xb, yb in data[:4]:
        first.train_step(xb, yb)
    path = ck.save_checkpoint(first.model, tmp_path / "resume", trainer_state=first.state_dict())
    assert (path / ck.TRAINING_STATE_NAME).is_file()
    assert ck.read_config(path)["step"] == 4
    torch.manual_seed(123)  # the resumed run must restore the RNG, not inherit this one

    fresh = zoo.create_model(**ck.read_config(path)["model"])
    resumed = Trainer(fresh, cfg, total)
    ck.resume_trainer(resumed, path)
    assert resumed.step == 4 and len(resumed.optimizers) == len(straight.optimizers)
    for xb, yb in data[4:]:
        resumed.train_step(xb, yb)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_save_rejects_half_resumable(tmp_path: Path):
    m = _tiny()
    t = Trainer(m, TrainConfig(), 1)
    with pytest.raises(ck.CheckpointError, match="float32"):
        ck.save_checkpoint(m, tmp_path / "x", trainer_state=t.state_dict(), dtype=torch.float16)
    assert ck.load_training_state(tmp_path) is None


def test_seg_checkpoint_saved_before_head_default_rebuilds_its_layout(tmp_path: Path):
    """A seg config that records no head (saved when pointwise was the default) rebuilds pointwise heads at its
    stored num_blocks, not today's default (K = 2, decoding), and gives the same outputs."""
    torch.manual_seed(0)
    kw = dict(task="seg", num_classes=3, img_size=32, encoder_depth=3, decoder_channels=[16, 8, 8])
    old = zoo.create_model("resnet18", num_blocks=4, head="pointwise", **kw).eval()
    folder = ck.save_checkpoint(old, tmp_path / "old")
    cfg = json.loads((folder / ck.CONFIG_NAME).read_text())
    del cfg["model"]["head_kwargs"]  # as every seg checkpoint saved before the switch
    (folder / ck.CONFIG_NAME).write_text(json.dumps(cfg))
    loaded = ck.load_checkpoint(folder)
    assert loaded.num_blocks == 4 and type(loaded.blocks[0].head).__name__ == "DenseLocalHead"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(old.forward_blocks(x), loaded.forward_blocks(x), strict=True):
            assert torch.equal(a, b)
    assert zoo.create_model("resnet18", **kw).config["head_kwargs"] == {"head": "decoding"}  # new ones record it


def test_checkpoint_commit_ignores_result_files_a_sibling_run_appended(tmp_path: Path):
    """A run beside another in one checkout: rows the other appended to a tracked leaderboard CSV do not make the
    checkpoint's commit `+dirty` (the code is the commit's); a changed source file does."""
    import subprocess

    from zoo.runtime import RESULT_FILES, git_commit

    def git(*a: str) -> None:
        subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "leaderboards").mkdir()
    (tmp_path / "leaderboards" / "noise_cls_digits.csv").write_text("a,b\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (tmp_path / "leaderboards" / "noise_cls_digits.csv").write_text("a,b\n1,2\n")
    clean = git_commit(tmp_path, full=True, ignore=RESULT_FILES)
    assert clean and not clean.endswith("+dirty") and len(clean) == 40
    assert git_commit(tmp_path, full=True).endswith("+dirty")  # without the ignore list it would be
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path, full=True, ignore=RESULT_FILES).endswith("+dirty")


def test_checkpoint_records_the_commit_without_result_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = {}

    def fake(*a, **k):
        seen.update(k)
        return "f" * 40

    monkeypatch.setattr(ck, "git_commit", fake)
    ck.save_checkpoint(_tiny(), tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["commit"] == "f" * 40
    from zoo.runtime import RESULT_FILES

    assert tuple(seen.get("ignore", ())) == RESULT_FILES
