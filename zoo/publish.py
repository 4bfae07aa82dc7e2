"""Publish a checkpoint into the zoo: copy (optionally in float16), measure, hash, and add its manifest entry.

The library takes the evaluation data as loaders (`splits={"val": loader, "test": loader}`); it never reads a
dataset by name. The command line that resolves the checkpoint's dataset and hands the loaders over is the
harness's: `python -m benchmarks.publish RUN_DIR/.../checkpoint --name resnet18.deinforeg_digits --half`.
Metrics are measured on the published weights (after the cast), through `model(x)` with the checkpoint's exit
policy, so the manifest records what a user pulling the checkpoint gets: validation and test metric, the exit
(`exit_policy`, `exit_block`) and, for a harness checkpoint, the `config_hash` of its recipe (its leaderboard rows
carry the same hash).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ._files import CONFIG_NAME, WEIGHTS_NAME, sha256_file
from .checkpoints import load_checkpoint, read_config, save_checkpoint
from .decoupled import DecoupledModel
from .errors import CheckpointError
from .hub import DEFAULT_MANIFEST
from .metrics import ConfusionMatrix, metric_name

__all__ = ["evaluate", "publish"]

# config fields save_checkpoint derives from the model and the file it writes: never carried over from the source
_DERIVED = (
    "format", "format_version", "model", "architecture", "task", "method", "num_blocks", "num_classes", "best_block",
    "exit_policy", "input_size", "weights_dtype", "weights_bytes", "weights_sha256", "torch_version", "step", "epoch",
)  # fmt: skip


def data_spec(config: Mapping[str, Any]) -> tuple[str, int | None]:
    """(dataset name, image size) recorded in a checkpoint's config."""
    ds = config.get("dataset")
    if isinstance(ds, dict):
        ds = ds.get("name")
    if not ds:
        raise CheckpointError("the checkpoint records no 'dataset': name the dataset to measure on")
    size = config.get("image_size") or (config.get("input_size") or [None])[-1]
    return str(ds), (int(size) if size else None)


@torch.no_grad()
def evaluate(model: DecoupledModel, loader: Iterable) -> tuple[str, float]:
    """Metric of `model(x)` over `loader`: (name, value in percent), accuracy for cls, mIoU for seg."""
    model.eval()
    mat = ConfusionMatrix.for_task(model.task, model.num_classes)
    device = next(model.parameters()).device
    for x, y in loader:
        mat.update(model(x.to(device)), y.to(device))
    return metric_name(model.task), mat.score(model.task)


def _exit_block(config: Mapping[str, Any]) -> int | None:
    """The block (1-based) whose head `model(x)` predicts with: the one chosen on validation for `best`, the last
    for `last`; None for `adaptive` (it depends on the input)."""
    policy = config.get("exit_policy")
    if policy == "best":
        return int(config["best_block"]) + 1
    return int(config["num_blocks"]) if policy == "last" else None


def _write_manifest_entry(manifest: Path, name: str, entry: dict[str, Any]) -> None:
    data = json.loads(manifest.read_text()) if manifest.is_file() else {}
    data[name] = entry
    tmp = manifest.with_name(f".{manifest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest)


def publish(
    src: str | os.PathLike,
    name: str,
    splits: Mapping[str, Iterable],
    *,
    half: bool = False,
    manifest: str | os.PathLike | None = None,
    metadata: Mapping[str, Any] | None = None,
    description: str | None = None,
    command: str | None = None,
    default: bool = False,
    exit_policy: str | None = None,
) -> dict[str, Any]:
    """Copy checkpoint `src` to `<manifest folder>/<name>/`, measure it on each of `splits` (name → loader), add the
    manifest entry. `metadata` (dataset, image size, mean/std, ...) is recorded in the published config.

    `exit_policy` None keeps `last` for bp and uses `best` (the block chosen on validation) for decoupled methods.
    """
    if "." not in name:
        raise CheckpointError(f"a published name is arch.tag (e.g. resnet18.deinforeg_digits), got {name!r}")
    manifest = Path(manifest) if manifest is not None else DEFAULT_MANIFEST
    manifest.parent.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(src)
    meta = dict(model.checkpoint_meta)
    dest = manifest.parent / name
    dtype = torch.float16 if half else None
    if exit_policy is not None:
        model.exit_policy = exit_policy
    elif model.method != "bp":
        model.exit_policy = "best"  # the block chosen on the validation split during training
    keep = {k: v for k, v in meta.items() if k not in _DERIVED and k != "metrics"}
    keep.update(metadata or {}, published_name=name)
    if meta.get("metrics"):
        keep["run_metrics"] = meta["metrics"]  # what the training run recorded (its own splits and subsets)
    save_checkpoint(model, dest, metadata=keep, dtype=dtype)
    # measure what a user pulling the checkpoint gets: the published (possibly float16) weights, loaded back
    published = load_checkpoint(dest)
    metrics = {}
    for split, loader in splits.items():
        metric, value = evaluate(published, loader)
        metrics[f"{split}_{metric}"] = round(value, 4)
    keep["metrics"] = metrics
    if command:
        keep["publish_command"] = command
    save_checkpoint(model, dest, metadata=keep, dtype=dtype)  # the float16 round trip is exact: same weights
    config = read_config(dest)
    entry = {
        "source": name,
        "architecture": config["architecture"],
        "task": config["task"],
        "method": config["method"],
        "dataset": keep.get("dataset"),
        "image_size": keep.get("image_size"),
        "num_classes": config["num_classes"],
        "metrics": metrics,
        "sha256": {n: sha256_file(dest / n) for n in (CONFIG_NAME, WEIGHTS_NAME)},
        "size_bytes": sum((dest / n).stat().st_size for n in (CONFIG_NAME, WEIGHTS_NAME)),
        "weights_dtype": config["weights_dtype"],
        "exit_policy": config["exit_policy"],
        "best_block": config["best_block"],
        "exit_block": _exit_block(config),
        "description": description
        or f"{config['architecture']} trained with {config['method']} on {keep.get('dataset')}",
    }
    for k in ("growth", "config_hash", "budget"):  # config_hash: the recipe of the leaderboard rows the run made
        if k in keep:
            entry[k] = keep[k]
    if default:
        entry["default"] = True
    _write_manifest_entry(manifest, name, entry)
    return entry
