"""The zoo's hub side: the manifest of published checkpoints, the local cache, and verified pulls.

Published checkpoints are listed in `zoo/pretrained/manifest.json` (override with $DEINFOREG_MANIFEST): each
`arch.tag` maps to a source (a path relative to the manifest, `file://`, `http(s)://`, or `hf://owner/repo`), the
sha256 of every file, and the recorded metrics. Pulls are copied into the cache ($DEINFOREG_CACHE, default
~/.cache/deinforeg-zoo) and verified file by file; a file whose hash does not match is removed and refused. This
module moves folders; reading them is `zoo.checkpoints`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ._files import CONFIG_NAME, WEIGHTS_NAME, sha256_file, staged
from .errors import CheckpointError

__all__ = [
    "CACHE_ENV",
    "DEFAULT_MANIFEST",
    "MANIFEST_ENV",
    "cache_dir",
    "fetch_url_folder",
    "get_pretrained_entry",
    "is_url",
    "list_pretrained",
    "manifest_path",
    "pull",
    "read_manifest",
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
    """`hf://owner/repo[/subfolder][@revision]` → the file from the Hugging Face Hub (needs huggingface_hub)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError("hf:// sources need the huggingface_hub package") from None
    spec, _, revision = spec.partition("@")
    parts = spec.strip("/").split("/")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        local = hf_hub_download(repo, name, subfolder=sub, revision=revision or None)
    except Exception as e:  # offline, missing repo or file
        raise CheckpointError(f"cannot download {name} from Hugging Face Hub repo {repo}: {e}") from None
    shutil.copyfile(local, dest)


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
