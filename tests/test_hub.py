"""`hf-hub:` checkpoints, offline: pulls from a cache in the Hub's own layout, pushes into a fake Hub on localhost.

The fake Hub answers `resolve` requests the way huggingface.co does (`X-Repo-Commit`, `ETag`, `X-Error-Code` on a
404), so the real `huggingface_hub` download code runs end to end; its `HfApi` side is replaced by `FakeApi`, which
checks every call against the real `HfApi` signatures and commits into the same fake Hub. Nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import inspect
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi
from huggingface_hub.utils import _http as hf_http

import zoo
from benchmarks import publish as publish_cli
from zoo import checkpoints as ck
from zoo import hub
from zoo.publish import BPTwin, find_bp_twin, model_card

PRETRAINED = Path(ck.__file__).parent / "pretrained"
REPO = "deinforeg/tiny-vgg"


class FakeHub:
    """Repos as {repo_id: {"refs": {branch: sha}, "commits": {sha: {path: bytes}}}}, served over HTTP."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}

    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        parent = repo["commits"].get(repo["refs"].get(branch), {})
        tree = {**parent, **files}
        sha = hashlib.sha1(json.dumps(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in tree.items())).encode())
        repo["commits"][sha.hexdigest()] = tree
        repo["refs"][branch] = sha.hexdigest()
        return sha.hexdigest()

    def resolve(self, path: str) -> tuple[int, dict[str, str], bytes]:
        parts = [urllib.parse.unquote(p) for p in path.split("?")[0].strip("/").split("/")]
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        repo = self.repos.get(f"{parts[0]}/{parts[1]}")
        if repo is None:
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        rev, name = parts[3], "/".join(parts[4:])
        sha = repo["refs"].get(rev, rev if rev in repo["commits"] else None)
        if sha is None:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b""
        body = repo["commits"][sha].get(name)
        if body is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha}, b""
        etag = hashlib.sha256(body).hexdigest()
        return 200, {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Content-Length": str(len(body))}, body


def _handler(fake: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, with_body: bool) -> None:
            status, headers, body = fake.resolve(self.path)
            self.send_response(status)
            headers.setdefault("Content-Length", "0" if status != 200 else str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if with_body and status == 200:
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(True)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class FakeApi:
    """Stands in for `HfApi` on push: same call signatures (checked), commits land in `FakeHub`."""

    def __init__(self, fake: FakeHub) -> None:
        self.fake, self.calls = fake, []

    def _check(self, method: str, kwargs: dict) -> None:
        inspect.signature(getattr(HfApi, method)).bind(None, **kwargs)  # a renamed keyword fails here
        self.calls.append((method, kwargs))

    def create_repo(self, repo_id: str, **kwargs: object) -> str:
        self._check("create_repo", {"repo_id": repo_id, **kwargs})
        self.fake.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        return f"https://hf.example/{repo_id}"

    def create_branch(self, repo_id: str, **kwargs: object) -> None:
        self._check("create_branch", {"repo_id": repo_id, **kwargs})
        repo = self.fake.repos[repo_id]
        repo["refs"].setdefault(kwargs["branch"], repo["refs"].get("main"))

    def upload_folder(self, **kwargs: object) -> SimpleNamespace:
        self._check("upload_folder", kwargs)
        folder = Path(str(kwargs["folder_path"]))
        files = {f.relative_to(folder).as_posix(): f.read_bytes() for f in folder.rglob("*") if f.is_file()}
        sha = self.fake.commit(str(kwargs["repo_id"]), files, branch=str(kwargs.get("revision") or "main"))
        return SimpleNamespace(oid=sha, commit_url=f"https://hf.example/{kwargs['repo_id']}/commit/{sha}")


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeHub, FakeApi]]:
    """A fake Hub on localhost as $HF_ENDPOINT, an empty HF cache under $HF_HOME, online; pushes go to FakeApi."""
    fake = FakeHub()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for key in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    api = FakeApi(fake)
    monkeypatch.setattr(hub, "_hf_api", lambda token=None: api)
    yield fake, api
    server.shutdown()
    server.server_close()


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$HF_HOME in tmp with HF_HUB_OFFLINE=1 and an endpoint nothing listens on: only the cache can answer."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return tmp_path / "hf" / "hub"


def _tiny(seed: int = 0) -> zoo.DecoupledModel:
    torch.manual_seed(seed)
    return zoo.create_model("paper_vgg", width=0.125, img_size=16).eval()


def _fill_cache(cache: Path, repo_id: str, folder: Path, sha: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Copy checkpoint `folder` into the Hub cache layout by hand: blobs by etag, snapshot symlinks, refs."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / sha
    snap.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for f in folder.iterdir():
        if f.name in (ck.CONFIG_NAME, ck.WEIGHTS_NAME):
            blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
            blob.write_bytes(f.read_bytes())
            (snap / f.name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(sha)
    return snap


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert e.value.__cause__ is None and (e.value.__context__ is None or e.value.__suppress_context__), "chained"
    return msg


# -- pull from a pre-filled cache, offline --------------------------------------------------------------------
def test_pull_from_prefilled_cache_offline_and_pinned_revision(tmp_path: Path, offline_cache: Path):
    old, new = _tiny(0), _tiny(1)
    sha_old, sha_new = "a" * 40, "b" * 40
    _fill_cache(offline_cache, REPO, ck.save_checkpoint(old, tmp_path / "old"), sha_old, refs=("v1",))
    _fill_cache(offline_cache, REPO, ck.save_checkpoint(new, tmp_path / "new"), sha_new)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        pulled = zoo.create_model(f"hf-hub:{REPO}", pretrained=True)
        torch.testing.assert_close(pulled(x), new(x))
        assert pulled.checkpoint_meta["hf_hub"] == {"repo_id": REPO, "commit": sha_new}
        for rev in (sha_old, "v1"):  # a pinned commit, and a branch recorded in refs/
            torch.testing.assert_close(zoo.create_model(f"hf-hub:{REPO}@{rev}", pretrained=True)(x), old(x))
        fresh = zoo.create_model(f"hf-hub:{REPO}", pretrained=False)  # config.json only: architecture, new weights
        assert fresh.config == new.config and not torch.equal(fresh(x), new(x))
        torch.testing.assert_close(ck.load_checkpoint(f"hf-hub:{REPO}")(x), new(x))


def test_offline_miss_and_missing_revision_are_one_line(offline_cache: Path, tmp_path: Path):
    with pytest.raises(zoo.CheckpointError) as e:
        zoo.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert "not in the local cache" in _one_line(e) and "HF_HUB_OFFLINE" in str(e.value)
    _fill_cache(offline_cache, REPO, ck.save_checkpoint(_tiny(), tmp_path / "c"), "c" * 40)
    with pytest.raises(zoo.CheckpointError) as e:
        zoo.create_model(f"hf-hub:{REPO}@v9", pretrained=True)
    assert f"hf-hub:{REPO}@v9" in _one_line(e)


def test_corrupt_cached_file_is_refused(offline_cache: Path, tmp_path: Path):
    snap = _fill_cache(offline_cache, REPO, ck.save_checkpoint(_tiny(), tmp_path / "c"), "d" * 40)
    blob = (snap / ck.WEIGHTS_NAME).resolve()
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF  # same size, different bytes: only the sha256 in config.json can tell
    blob.write_bytes(bytes(data))
    with pytest.raises(zoo.CheckpointError) as e:
        zoo.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert "corrupt" in _one_line(e) and f"hf-hub:{REPO}" in str(e.value)


@pytest.mark.parametrize("name", ["hf-hub:no-slash", "hf-hub:a/b/c", "hf-hub:org/name@"])
def test_malformed_names(name: str):
    with pytest.raises(zoo.CheckpointError, match="hf-hub:org/name"):
        zoo.create_model(name, pretrained=True)


def test_architecture_kwargs_are_refused_for_hub_names(offline_cache: Path):
    with pytest.raises(zoo.UserError, match="drop num_blocks, width"):
        zoo.create_model(f"hf-hub:{REPO}", num_blocks=2, width=0.5)


# -- push, then pull through the real huggingface_hub download code ------------------------------------------
def test_push_pull_round_trip(fake_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake, api = fake_hub
    model = _tiny()
    meta = {"dataset": "digits", "image_size": 16, "metrics": {"test_accuracy": 91.25, "val_accuracy": 93.5}}
    info = zoo.push_to_hub(model, REPO, metadata=meta, dtype=torch.float16)
    assert info.oid == fake.repos[REPO]["refs"]["main"]
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    files = fake.repos[REPO]["commits"][info.oid]
    assert sorted(files) == ["README.md", ck.CONFIG_NAME, ck.WEIGHTS_NAME]
    card = files["README.md"].decode()
    assert "91.25" in card and "digits at 16 px" in card and f'create_model("hf-hub:{REPO}"' in card

    x = torch.randn(2, 3, 16, 16)
    pulled = zoo.create_model(f"hf-hub:{REPO}", pretrained=True)  # online: downloads into $HF_HOME/hub
    assert (tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "refs" / "main").read_text() == info.oid
    with torch.no_grad():
        torch.testing.assert_close(pulled(x), model(x), rtol=1e-2, atol=1e-2)  # float16 weights
    assert pulled.checkpoint_meta["metrics"] == meta["metrics"]

    zoo.push_to_hub(_tiny(1), REPO, revision="v2")  # another branch; main stays
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # from now on the cache alone answers
    again = zoo.create_model(f"hf-hub:{REPO}", pretrained=True)
    assert again.checkpoint_meta["hf_hub"]["commit"] == info.oid
    with pytest.raises(zoo.CheckpointError, match="not in the local cache"):
        zoo.create_model(f"hf-hub:{REPO}@v2", pretrained=True)  # pushed, but never pulled online
    with pytest.raises(zoo.CheckpointError, match="HF_HUB_OFFLINE is set; cannot push") as e:
        zoo.push_to_hub(model, REPO)
    _one_line(e)


def test_hub_errors_are_one_line(fake_hub, monkeypatch: pytest.MonkeyPatch):
    fake, _ = fake_hub
    fake.commit("deinforeg/not-a-checkpoint", {"README.md": b"hello"})
    zoo.push_to_hub(_tiny(), REPO)
    cases = {
        "hf-hub:deinforeg/missing": "no such model repo",
        f"hf-hub:{REPO}@nope": "has no revision 'nope'",
        "hf-hub:deinforeg/not-a-checkpoint": "has no config.json",
    }
    for name, expect in cases.items():
        with pytest.raises(zoo.CheckpointError) as e:
            zoo.create_model(name, pretrained=True)
        assert expect in _one_line(e), name
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network, not offline mode
    monkeypatch.setattr(hf_http.time, "sleep", lambda s: None)  # huggingface_hub retries 5 times with backoff
    with pytest.raises(zoo.CheckpointError) as e:
        zoo.create_model("hf-hub:deinforeg/never-pulled", pretrained=True)
    assert "cannot reach the Hugging Face Hub" in _one_line(e)


def test_manifest_hf_source_is_sha256_checked(fake_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    fake, _ = fake_hub
    folder = ck.save_checkpoint(_tiny(), tmp_path / "ckpt")
    files = {f"sub/{n}": (folder / n).read_bytes() for n in (ck.CONFIG_NAME, ck.WEIGHTS_NAME)}
    fake.commit(REPO, files)
    good = {n: ck.sha256_file(folder / n) for n in (ck.CONFIG_NAME, ck.WEIGHTS_NAME)}
    manifest = tmp_path / "manifest.json"
    entries = {
        "paper_vgg.hub_digits": {"source": f"hf://{REPO}/sub", "sha256": good, "task": "cls"},
        "paper_vgg.bad_digits": {"source": f"hf://{REPO}/sub", "sha256": {**good, ck.WEIGHTS_NAME: "0" * 64}},
    }
    manifest.write_text(json.dumps(entries))
    monkeypatch.setenv(hub.MANIFEST_ENV, str(manifest))
    monkeypatch.setenv(hub.CACHE_ENV, str(tmp_path / "zoo-cache"))
    assert zoo.create_model("paper_vgg.hub_digits", pretrained=True).num_blocks == 4
    with pytest.raises(zoo.CheckpointError, match="sha256 mismatch"):
        zoo.create_model("paper_vgg.bad_digits", pretrained=True)


# -- the model card and the publish command -------------------------------------------------------------------
def test_model_card_of_a_published_checkpoint_names_its_bp_twin():
    config = ck.read_config(PRETRAINED / "resnet18.deinforeg_digits")
    twin = find_bp_twin(config, PRETRAINED / "manifest.json")
    bp = hub.read_manifest(PRETRAINED / "manifest.json")["resnet18.bp_digits"]
    assert twin == BPTwin("resnet18.bp_digits", "test_accuracy", bp["metrics"]["test_accuracy"])
    card = model_card(config, "org/r18", twin)
    rows = dict(
        line.strip("|").split(" | ", 1) for line in card.splitlines() if line.startswith("| ") and " | " in line
    )
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["method"] == "`deinforeg`" and rows["model"].startswith("`resnet18` (timm, 4 blocks, 10 classes")
    assert rows["dataset"] == "digits at 32 px"
    assert (
        rows["test accuracy"]
        == f"{config['metrics']['test_accuracy']:.2f} (exit: block 4 of 4, chosen on the validation split)"
    )
    assert rows["BP twin (test accuracy)"] == f"{bp['metrics']['test_accuracy']:.2f} (`resnet18.bp_digits`)"
    assert rows["trained at commit"] == f"`{config['commit']}`" and config["config_hash"] in rows["recipe"]
    assert find_bp_twin(ck.read_config(PRETRAINED / "resnet18.bp_digits"), PRETRAINED / "manifest.json") is None


def test_publish_cli_pushes_to_hub(fake_hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    fake, _ = fake_hub
    torch.manual_seed(0)
    m = zoo.create_model("paper_vgg", method="greedy", width=0.125, img_size=16)
    src = ck.save_checkpoint(m, tmp_path / "run" / "checkpoint", metadata={"dataset": "digits", "image_size": 16})
    manifest = tmp_path / "zoo" / "manifest.json"
    argv = [str(src), "--name", "paper_vgg.tiny_digits", "--manifest", str(manifest), "--hub", REPO]
    assert publish_cli.main(argv) == 0
    entry = json.loads(manifest.read_text())["paper_vgg.tiny_digits"]
    card = fake.repos[REPO]["commits"][fake.repos[REPO]["refs"]["main"]]["README.md"].decode()
    assert f"{entry['metrics']['test_accuracy']:.2f} (exit: block {entry['exit_block']} of 4" in card
    assert "Published with `python -m benchmarks.publish" in card
    pulled = zoo.create_model(f"hf-hub:{REPO}", pretrained=True, num_classes=10)
    assert pulled.checkpoint_meta["metrics"] == entry["metrics"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert publish_cli.main([*argv[:-1], "not-a-repo-id"]) == 2
    assert publish_cli.main(argv) == 2  # offline now: refused before publishing anything
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("python -m benchmarks.publish: error:") for line in err)
