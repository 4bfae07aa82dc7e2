"""Publish a checkpoint into the zoo: copy (optionally in float16), measure, hash, and add its manifest entry.

The library takes the evaluation data as loaders (`splits={"val": loader, "test": loader}`); it never reads a
dataset by name. The command line that resolves the checkpoint's dataset and hands the loaders over is the
harness's: `python -m benchmarks.publish RUN_DIR/.../checkpoint --name resnet18.deinforeg_digits --half`.
Metrics are measured on the published weights (after the cast), through `model(x)` with the checkpoint's exit
policy, so the manifest records what a user pulling the checkpoint gets: validation and test metric, the exit
(`exit_policy`, `exit_block`) and, for a harness checkpoint, the `config_hash` of its recipe (its leaderboard rows
carry the same hash).

`push_to_hub` puts a model or a checkpoint folder on the Hugging Face Hub in the same layout, plus a model card
(README.md) saying what a reader needs before trusting the weights: method, model, dataset, recipe, the test metric and
the exit that produced it, the commit that trained it, and the BP twin's figure when the manifest has one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch

from . import hub
from ._files import CONFIG_NAME, WEIGHTS_NAME, sha256_file
from .checkpoints import load_checkpoint, read_config, save_checkpoint
from .decoupled import DecoupledModel
from .errors import CheckpointError
from .hub import DEFAULT_MANIFEST
from .metrics import ConfusionMatrix, metric_name

__all__ = ["BPTwin", "evaluate", "find_bp_twin", "model_card", "publish", "push_to_hub"]

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


# -- the Hugging Face Hub ----------------------------------------------------------------------------------------
class BPTwin(NamedTuple):
    """The plain-backprop checkpoint trained with the same recipe: the figure a decoupled one is judged against."""

    name: str
    metric: str  # e.g. test_accuracy
    value: float


def find_bp_twin(config: Mapping[str, Any], manifest: str | os.PathLike | None = None) -> BPTwin | None:
    """The manifest's bp entry with the same recipe (`config_hash`, which leaves the method out), architecture and
    dataset as checkpoint `config`, with its test metric; None when there is none (or `config` is bp itself)."""
    key = config.get("config_hash")
    if not key or config.get("method") == "bp":
        return None
    for name, e in sorted(hub.read_manifest(manifest).items()):
        same = (e.get("config_hash"), e.get("architecture"), e.get("dataset"))
        if e.get("method") == "bp" and same == (key, config.get("architecture"), _dataset_name(config)):
            test = {k: v for k, v in (e.get("metrics") or {}).items() if k.startswith("test_")}
            if test:
                metric = sorted(test)[0]
                return BPTwin(name, metric, float(test[metric]))
    return None


def _dataset_name(config: Mapping[str, Any]) -> str | None:
    ds = config.get("dataset")
    return ds.get("name") if isinstance(ds, dict) else ds


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def model_card(config: Mapping[str, Any], repo_id: str, bp_twin: BPTwin | None = None) -> str:
    """README.md for Hub repo `repo_id` holding checkpoint `config` (Hub metadata header, then a table)."""
    task, method, arch = config.get("task", "cls"), config.get("method"), config.get("architecture")
    mcfg = config.get("model", {})
    metrics = dict(config.get("metrics") or {})
    ds = _dataset_name(config)
    missing = "not recorded"
    adapter = {"timm": "timm", "smp": "segmentation-models-pytorch"}.get(mcfg.get("adapter"), mcfg.get("adapter"))
    kind = "image-segmentation" if task == "seg" else "image-classification"
    tags = ["deinforeg-zoo", "decoupled-learning", f"method-{method}", kind, *([adapter] if adapter else [])]
    exit_block = _exit_block(config)
    exit_text = {
        "best": f"block {exit_block} of {config.get('num_blocks')}, chosen on the validation split",
        "last": f"the last block ({config.get('num_blocks')})",
    }.get(config.get("exit_policy"), "adaptive (per sample, by confidence)")
    size = config.get("image_size") or (config.get("input_size") or [None])[-1]
    data = missing if not ds else f"{ds}" + (f" at {size} px" if size else "")
    if ds and config.get("noise_rate"):
        data += f", {float(config['noise_rate']):.0%} {config.get('noise_kind', 'symmetric')} label noise"
    recipe = config.get("recipe")
    recipe_line = missing
    if recipe or config.get("config_hash"):
        bits = [f"`config_hash` {config['config_hash']}" if config.get("config_hash") else ""]
        if config.get("budget"):
            bits.append(f"budget {config['budget']}")
        if isinstance(recipe, dict):
            bits.append(
                ", ".join(f"{k} {recipe[k]}" for k in ("epochs", "batch_size", "optimizer", "lr") if k in recipe)
            )
        recipe_line = "; ".join(b for b in bits if b)
    rows = [
        ("method", f"`{method}`"),
        ("model", f"`{arch}` ({adapter or 'zoo'}, {config.get('num_blocks')} blocks, "
                  f"{config.get('num_classes')} classes)"),
        ("dataset", data),
        ("recipe", recipe_line),
    ]  # fmt: skip
    tests = sorted(k for k in metrics if k.startswith("test_"))
    for k in tests:
        rows.append((k.replace("_", " "), f"{_fmt(metrics[k])} (exit: {exit_text})"))
    if not tests:
        rows.append(("test metric", f"{missing} (exit: {exit_text})"))
    for k in sorted(k for k in metrics if k.startswith("val_")):
        rows.append((k.replace("_", " ").replace("val ", "validation "), _fmt(metrics[k])))
    if bp_twin is not None:
        rows.append((f"BP twin ({bp_twin.metric.replace('_', ' ')})", f"{_fmt(bp_twin.value)} (`{bp_twin.name}`)"))
    rows.append(("trained at commit", f"`{config['commit']}`" if config.get("commit") else missing))
    lines = ["---", "library_name: deinforeg-zoo", "tags:", *[f"- {t}" for t in tags], "---", "",
             f"# {repo_id}", "",
             f"A decoupled `{arch}` trained block by block with `{method}` (DeInfoReg Zoo checkpoint: "
             "`config.json` + `model.safetensors`).", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
             "```python", "import zoo", f'model = zoo.create_model("hf-hub:{repo_id}", pretrained=True)',
             "plain = zoo.export(model)  # the plain timm / SMP model, without the local heads", "```"]  # fmt: skip
    if isinstance(recipe, dict):
        lines += ["", "<details><summary>Full recipe</summary>", "", "```json",
                  json.dumps(recipe, indent=2, sort_keys=True), "```", "", "</details>"]  # fmt: skip
    if config.get("publish_command"):
        lines += ["", f"Published with `{config['publish_command']}`."]
    return "\n".join(lines) + "\n"


def push_to_hub(
    model: DecoupledModel | str | os.PathLike,
    repo_id: str,
    *,
    metadata: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    bp_twin: BPTwin | None = None,
    manifest: str | os.PathLike | None = None,
    revision: str | None = None,
    commit_message: str = "Add DeInfoReg Zoo checkpoint",
    private: bool | None = None,
    create_pr: bool = False,
    token: str | None = None,
) -> Any:
    """Upload `model` (or checkpoint folder) to Hub repo `repo_id` as config.json + model.safetensors + README.md.

    A model is saved afresh with `metadata` (dataset, metrics, ...) and `dtype`; a folder is pushed as it is, less
    any training state. `bp_twin` None looks the twin up in the manifest. Returns huggingface_hub's CommitInfo;
    `zoo.create_model(f"hf-hub:{repo_id}", pretrained=True)` reads it back.
    """
    ref = hub.parse_hf_hub(repo_id)
    with tempfile.TemporaryDirectory(prefix="deinforeg-push-") as tmp:
        folder = Path(tmp) / "checkpoint"
        if isinstance(model, DecoupledModel):
            save_checkpoint(model, folder, metadata=dict(metadata or {}), dtype=dtype)
        else:
            if metadata or dtype is not None:
                raise CheckpointError("metadata and dtype apply to a model; a checkpoint folder is pushed as it is")
            src = Path(model).expanduser()
            read_config(src)  # a clear error for a folder that is not a checkpoint
            folder.mkdir()
            for n in (CONFIG_NAME, WEIGHTS_NAME):
                if not (src / n).is_file():
                    raise CheckpointError(f"{src} has no {n}")
                shutil.copyfile(src / n, folder / n)
        config = read_config(folder)
        twin = bp_twin if bp_twin is not None else find_bp_twin(config, manifest)
        (folder / "README.md").write_text(model_card(config, ref.repo_id, twin))
        return hub.upload_folder(
            folder, ref.repo_id, revision=revision, commit_message=commit_message, private=private,
            create_pr=create_pr, token=token,
        )  # fmt: skip
