"""The zoo's hub side: the manifest of published checkpoints, the local cache, and verified pulls.

Published checkpoints are listed in `zoo/pretrained/manifest.json` (override with $DEINFOREG_MANIFEST): each
`arch.tag` maps to a source (a path relative to the manifest, `file://`, `http(s)://`, or `hf://owner/repo`), the
sha256 of every file, and the recorded metrics. Pulls are copied into the cache ($DEINFOREG_CACHE, default
~/.cache/deinforeg-zoo) and verified file by file; a file whose hash does not match is removed and refused. This
module moves folders; reading them is `zoo.checkpoints`.

The Hugging Face Hub side follows timm's convention: `hf-hub:org/name[@revision]` names a repo holding one checkpoint
folder, pulled with `huggingface_hub` into its own cache ($HF_HOME/hub or $HF_HUB_CACHE), read from that cache alone
under $HF_HUB_OFFLINE=1. The environment is read at each call, not at import, so a process may set it late. Every
failure of the Hub or its cache (no such repo, revision or file, offline miss, no network) becomes one CheckpointError
line: a user gets what to do, never an HTTP stack trace.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ._files import CONFIG_NAME, WEIGHTS_NAME, sha256_file, staged
from .errors import CheckpointError

__all__ = [
    "HF_HUB_PREFIX",
    "HubRef",
    "CACHE_ENV",
    "DEFAULT_MANIFEST",
    "MANIFEST_ENV",
    "cache_dir",
    "fetch_url_folder",
    "get_pretrained_entry",
    "hf_download",
    "hf_offline",
    "is_hf_hub",
    "is_url",
    "list_pretrained",
    "manifest_path",
    "parse_hf_hub",
    "pull",
    "pull_hf_hub",
    "read_manifest",
    "upload_folder",
]

CACHE_ENV = "DEINFOREG_CACHE"
MANIFEST_ENV = "DEINFOREG_MANIFEST"
DEFAULT_MANIFEST = Path(__file__).parent / "pretrained" / "manifest.json"
_HTTP_TIMEOUT = 60.0


def is_url(s: str) -> bool:
    return s.startswith(("http://", "https://", "file://", "hf://"))


def cache_dir() -> Path:
    """Where pulled checkpoints live: $DEINFOREG_CACHE or ~/.cache/deinforeg-zoo."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "deinforeg-zoo").expanduser()


def manifest_path() -> Path:
    return Path(os.environ.get(MANIFEST_ENV) or DEFAULT_MANIFEST).expanduser()


def read_manifest(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's entries ({} if the file does not exist)."""
    p = Path(path) if path is not None else manifest_path()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"manifest {p} is corrupt: {e}") from None
    return {k: v for k, v in data.items() if not k.startswith("_")}


def list_pretrained(task: str | None = None) -> list[str]:
    """`arch.tag` names of the manifest, optionally of one task."""
    return sorted(n for n, e in read_manifest().items() if task is None or e.get("task") == task)


def get_pretrained_entry(name: str) -> tuple[str, dict[str, Any]]:
    """(full name, manifest entry) for `arch.tag`, or for a bare `arch` its default tag (flagged or first)."""
    manifest = read_manifest()
    if name in manifest:
        return name, manifest[name]
    if "." not in name:
        matches = [n for n in manifest if n.split(".", 1)[0] == name]
        if matches:
            default = [n for n in matches if manifest[n].get("default")]
            pick = (default or matches)[0]
            return pick, manifest[pick]
    available = ", ".join(sorted(manifest)) or "none (the manifest is empty)"
    raise CheckpointError(f"unknown pretrained tag {name!r}; available: {available}")


def _source_of(entry: dict[str, Any], manifest_file: Path) -> str:
    src = str(entry.get("source", ""))
    if not src:
        raise CheckpointError("manifest entry has no 'source'")
    if is_url(src) or Path(src).is_absolute():
        return src
    return str((manifest_file.parent / src).resolve())


def _copy_to(src: str, name: str, dest: Path) -> None:
    """Fetch file `name` of source folder `src` into `dest` (a temporary path)."""
    if src.startswith(("http://", "https://")):
        _download(src.rstrip("/") + "/" + urllib.parse.quote(name), dest)
    elif src.startswith("hf://"):
        _hf_download(src[len("hf://") :], name, dest)
    else:
        folder = Path(urllib.parse.unquote(urllib.parse.urlparse(src).path)) if src.startswith("file://") else Path(src)
        f = folder / name
        if not f.is_file():
            raise CheckpointError(f"source {folder} has no {name}")
        shutil.copyfile(f, dest)


def _download(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT) as r, open(dest, "wb") as f:
            expect = r.headers.get("Content-Length")
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as e:  # URLError, HTTPError, timeouts
        raise CheckpointError(f"cannot download {url}: {e}") from None
    if expect is not None and dest.stat().st_size != int(expect):
        raise CheckpointError(f"download of {url} is truncated: {dest.stat().st_size} of {expect} bytes")


def _hf_download(spec: str, name: str, dest: Path) -> None:
    """`hf://owner/repo[/subfolder][@revision]` → file `name` of that folder on the Hugging Face Hub."""
    spec, _, revision = spec.partition("@")
    parts = spec.strip("/").split("/")
    ref = HubRef("/".join(parts[:2]), revision or None)
    shutil.copyfile(hf_download(ref, name, subfolder="/".join(parts[2:]) or None), dest)


def _verified(folder: Path, hashes: dict[str, str]) -> list[str]:
    """Names of the files in `folder` that are missing or whose sha256 differs from `hashes`."""
    return [n for n, h in hashes.items() if not (folder / n).is_file() or sha256_file(folder / n) != h]


def pull(name: str) -> Path:
    """The verified local folder of pretrained checkpoint `name` (fetched into the cache on first use)."""
    full, entry = get_pretrained_entry(name)
    hashes: dict[str, str] = dict(entry.get("sha256") or {})
    if CONFIG_NAME not in hashes or WEIGHTS_NAME not in hashes:
        raise CheckpointError(f"manifest entry {full!r} lacks the sha256 of {CONFIG_NAME} and {WEIGHTS_NAME}")
    key = hashlib.sha256("".join(hashes[k] for k in sorted(hashes)).encode()).hexdigest()[:16]
    folder = cache_dir() / full / key
    if folder.is_dir():
        if not _verified(folder, hashes):
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # a damaged cache entry: fetch it again
    src = _source_of(entry, manifest_path())
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged(folder) as tmp:
        for fname in hashes:
            _copy_to(src, fname, tmp / fname)
        bad = _verified(tmp, hashes)
        if bad:
            raise CheckpointError(
                f"sha256 mismatch for {full}: {', '.join(bad)} from {src} does not match the manifest; "
                "refused, and the download was removed from the cache"
            )
    return folder


def fetch_url_folder(url: str) -> Path:
    """Copy the checkpoint folder at `url` into the cache (keyed by URL); its weights are checked against config."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    folder = cache_dir() / "urls" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged(folder) as tmp:
        for fname in (CONFIG_NAME, WEIGHTS_NAME):
            _copy_to(url, fname, tmp / fname)
    return folder


# -- the Hugging Face Hub ----------------------------------------------------------------------------------------
HF_HUB_PREFIX = "hf-hub:"


class HubRef(NamedTuple):
    """A Hub repo and an optional revision (branch, tag or commit sha); printed back in the `hf-hub:` form."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return HF_HUB_PREFIX + self.repo_id + (f"@{self.revision}" if self.revision else "")


def is_hf_hub(name: str) -> bool:
    return isinstance(name, str) and name.startswith(HF_HUB_PREFIX)


def parse_hf_hub(name: str) -> HubRef:
    """`hf-hub:org/name[@revision]` → HubRef (timm's spelling); a malformed name is a CheckpointError."""
    body = name[len(HF_HUB_PREFIX) :] if is_hf_hub(name) else name
    repo, at, revision = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision):
        raise CheckpointError(f"a Hub checkpoint is named hf-hub:org/name[@revision], got {name!r}")
    return HubRef(repo, revision or None)


def _env_true(key: str) -> bool:
    return os.environ.get(key, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hf_offline() -> bool:
    """$HF_HUB_OFFLINE as it is now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def _hf_cache_dir() -> str | None:
    """$HF_HUB_CACHE, else $HF_HOME/hub, as they are now; None leaves huggingface_hub's import-time default."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return None


def _hf_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def _hf_errors(ref: HubRef, what: str) -> Iterator[None]:
    """Turn each way a Hub call can fail into one CheckpointError line naming `ref` and what to do."""
    try:
        from huggingface_hub import errors
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of timm
        raise CheckpointError("Hugging Face Hub checkpoints need the huggingface_hub package") from None
    import httpx

    try:
        yield
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{ref}: the repo has no revision {ref.revision!r} (a branch, tag or commit)") from None
    except errors.RepositoryNotFoundError:  # also gated or private repos without a token
        raise CheckpointError(
            f"{ref}: no such model repo on the Hugging Face Hub (or it is private: log in with `hf auth login`)"
        ) from None
    except errors.LocalEntryNotFoundError:
        where = _hf_cache_dir() or "the Hugging Face cache"
        if hf_offline():
            raise CheckpointError(
                f"{ref}: {what} is not in the local cache ({where}) and HF_HUB_OFFLINE is set; "
                "pull it once online, or unset HF_HUB_OFFLINE"
            ) from None
        raise CheckpointError(f"{ref}: cannot reach the Hugging Face Hub and {what} is not cached in {where}") from None
    except errors.EntryNotFoundError:
        raise CheckpointError(f"{ref}: the repo has no {what}; it is not a DeInfoReg Zoo checkpoint folder") from None
    except errors.HFValidationError as e:
        raise CheckpointError(f"{ref}: not a valid Hub repo id or revision: {_first_line(e)}") from None
    except (errors.HfHubHTTPError, errors.OfflineModeIsEnabled, httpx.HTTPError, OSError) as e:
        raise CheckpointError(f"{ref}: Hugging Face Hub error on {what}: {_first_line(e)}") from None


def hf_download(ref: HubRef, filename: str, subfolder: str | None = None) -> Path:
    """Local path of `filename` in Hub repo `ref`, downloaded into the Hugging Face cache if not there yet."""
    from huggingface_hub import hf_hub_download

    with _hf_errors(ref, filename):
        return Path(
            hf_hub_download(
                ref.repo_id, filename, subfolder=subfolder, revision=ref.revision, cache_dir=_hf_cache_dir(),
                local_files_only=hf_offline(), endpoint=_hf_endpoint(), library_name="deinforeg-zoo",
            )
        )  # fmt: skip


def _commit_of(cached: Path) -> str | None:
    """The commit sha of a file in the Hub cache (`.../snapshots/<sha>/file`), None if it is elsewhere."""
    parts = cached.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def pull_hf_hub(name: str | HubRef, config_only: bool = False) -> tuple[Path, HubRef]:
    """(folder holding config.json [+ model.safetensors], the ref pinned to its commit) for `hf-hub:org/name[@rev]`.

    The weights are fetched at the commit config.json came from, so a push landing between the two downloads cannot
    pair one commit's config with another's weights.
    """
    ref = name if isinstance(name, HubRef) else parse_hf_hub(name)
    config = hf_download(ref, CONFIG_NAME)
    pinned = HubRef(ref.repo_id, _commit_of(config) or ref.revision)
    if not config_only:
        weights = hf_download(pinned, WEIGHTS_NAME)
        if weights.parent != config.parent:  # pragma: no cover - huggingface_hub keeps one folder per commit
            raise CheckpointError(f"{ref}: {CONFIG_NAME} and {WEIGHTS_NAME} came from different snapshots")
    return config.parent, pinned


def _hf_api(token: str | None = None) -> Any:
    """The HfApi pushes go through (tests replace this to push into a local folder)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=_hf_endpoint(), token=token)


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    commit_message: str = "Add DeInfoReg Zoo checkpoint",
    private: bool | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> Any:
    """Create Hub model repo `repo_id` if needed and commit every file of `folder` to it; returns the CommitInfo."""
    ref = parse_hf_hub(repo_id)
    ref = HubRef(ref.repo_id, revision)
    if hf_offline():
        raise CheckpointError(f"{ref}: HF_HUB_OFFLINE is set; cannot push to the Hugging Face Hub")
    api = _hf_api(token)
    with _hf_errors(ref, "the upload"):
        api.create_repo(ref.repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and not create_pr:
            api.create_branch(ref.repo_id, branch=revision, repo_type="model", exist_ok=True)
        return api.upload_folder(
            repo_id=ref.repo_id, folder_path=str(folder), repo_type="model", revision=revision,
            commit_message=commit_message, create_pr=create_pr,
        )  # fmt: skip
