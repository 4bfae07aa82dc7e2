"""Publish a checkpoint into the zoo: copy (optionally in float16), re-measure, hash, and add its manifest entry.

    python -m zoo.publish RUN_DIR/.../checkpoint --name resnet18.deinforeg_digits --half
    python -m zoo.publish --train --name paper_vgg.bp_digits --model paper_vgg --method bp --dataset digits \
        --epochs 6 --img-size 16 --model-kwargs '{"width": 0.25}' --half

The validation metric is measured on the published weights (after the cast), through `model(x)` with the
checkpoint's exit policy, so the manifest records what a user pulling the checkpoint gets. `--train` is a fallback
that trains with `zoo.train.Trainer` when a harness checkpoint is not at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from .checkpoints import (
    _DEFAULT_MANIFEST,
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_checkpoint,
    read_config,
    save_checkpoint,
    sha256_file,
)
from .decoupled import DecoupledModel
from .metrics import ConfusionMatrix, metric_name

__all__ = ["evaluate", "publish", "train", "main"]

# config fields save_checkpoint derives from the model and the file it writes: never carried over from the source
_DERIVED = (
    "format", "format_version", "model", "architecture", "task", "method", "num_blocks", "num_classes", "best_block",
    "exit_policy", "input_size", "weights_dtype", "weights_bytes", "weights_sha256", "torch_version", "step", "epoch",
)  # fmt: skip


def _datasets():
    """The repository's `datasets` package (not Hugging Face's): importable when run from the repo root."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    import datasets

    if not hasattr(datasets, "create_loader"):
        raise CheckpointError("`datasets` resolves to another package; run from the DeInfoReg Zoo repository root")
    return datasets


def _data_spec(config: dict[str, Any]) -> tuple[str, int | None]:
    """(dataset name, image size) recorded in a checkpoint's config."""
    ds = config.get("dataset")
    if isinstance(ds, dict):
        ds = ds.get("name")
    if not ds:
        raise CheckpointError("the checkpoint records no 'dataset': pass --dataset")
    size = config.get("image_size") or (config.get("input_size") or [None])[-1]
    return str(ds), (int(size) if size else None)


@torch.no_grad()
def evaluate(model: DecoupledModel, dataset: str, image_size: int | None, split: str = "val", batch_size: int = 64):
    """Metric of `model(x)` on a dataset split: (name, value in percent) — accuracy for cls, mIoU for seg."""
    data = _datasets()
    ds = data.create_dataset(dataset, split, image_size=image_size)
    model.eval()
    mat = ConfusionMatrix.for_task(model.task, model.num_classes)
    device = next(model.parameters()).device
    for x, y in data.create_loader(ds, batch_size):
        mat.update(model(x.to(device)), y.to(device))
    return metric_name(model.task), mat.score(model.task)


def _write_manifest_entry(manifest: Path, name: str, entry: dict[str, Any]) -> None:
    data = json.loads(manifest.read_text()) if manifest.is_file() else {}
    data[name] = entry
    tmp = manifest.with_name(f".{manifest.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest)


def publish(
    src: str | os.PathLike,
    name: str,
    *,
    half: bool = False,
    manifest: str | os.PathLike | None = None,
    dataset: str | None = None,
    image_size: int | None = None,
    description: str | None = None,
    command: str | None = None,
    default: bool = False,
    exit_policy: str | None = None,
) -> dict[str, Any]:
    """Copy checkpoint `src` to `<manifest folder>/<name>/`, re-measure its val metric, add the manifest entry.

    `exit_policy` None keeps `last` for bp and uses `best` (the block chosen on validation) for decoupled methods.
    """
    if "." not in name:
        raise CheckpointError(f"a published name is arch.tag (e.g. resnet18.deinforeg_digits), got {name!r}")
    manifest = Path(manifest) if manifest is not None else _DEFAULT_MANIFEST
    manifest.parent.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(src)
    meta = dict(model.checkpoint_meta)
    ds, size = _data_spec({**meta, **({"dataset": dataset} if dataset else {})})
    size = image_size or size
    dest = manifest.parent / name
    dtype = torch.float16 if half else None
    if exit_policy is not None:
        model.exit_policy = exit_policy
    elif model.method != "bp":
        model.exit_policy = "best"  # the block chosen on the validation split during training
    info = _datasets().get_dataset_info(ds)
    keep = {k: v for k, v in meta.items() if k not in _DERIVED and k != "metrics"}
    keep.update(dataset=ds, image_size=size, published_name=name, mean=list(info.mean), std=list(info.std))
    if meta.get("metrics"):
        keep["run_metrics"] = meta["metrics"]  # what the training run recorded (its own splits and subsets)
    save_checkpoint(model, dest, metadata=keep, dtype=dtype)
    # measure what a user pulling the checkpoint gets: the published (possibly float16) weights, loaded back
    metric, value = evaluate(load_checkpoint(dest), ds, size)
    keep["metrics"] = {f"val_{metric}": round(value, 4)}
    if command:
        keep["publish_command"] = command
    save_checkpoint(model, dest, metadata=keep, dtype=dtype)  # the float16 round trip is exact: same weights
    config = read_config(dest)
    entry = {
        "source": name,
        "architecture": config["architecture"],
        "task": config["task"],
        "method": config["method"],
        "dataset": ds,
        "image_size": size,
        "num_classes": config["num_classes"],
        "metrics": {f"val_{metric}": round(value, 4)},
        "sha256": {n: sha256_file(dest / n) for n in (CONFIG_NAME, WEIGHTS_NAME)},
        "size_bytes": sum((dest / n).stat().st_size for n in (CONFIG_NAME, WEIGHTS_NAME)),
        "weights_dtype": config["weights_dtype"],
        "exit_policy": config["exit_policy"],
        "best_block": config["best_block"],
        "description": description or f"{config['architecture']} trained with {config['method']} on {ds}",
    }
    if default:
        entry["default"] = True
    _write_manifest_entry(manifest, name, entry)
    return entry


def train(
    model_name: str,
    method: str,
    dataset: str,
    out: str | os.PathLike,
    *,
    task: str = "cls",
    arch: str | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 2e-3,
    image_size: int | None = None,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    log=print,
) -> Path:
    """Train with `zoo.train.Trainer` on a dataset's train split, pick the exit on val, save a checkpoint at `out`."""
    from ._factory import create_model
    from .train import TrainConfig, Trainer, seed_everything

    data = _datasets()
    seed_everything(seed)
    train_ds = data.create_dataset(dataset, "train", image_size=image_size)
    val_ds = data.create_dataset(dataset, "val", image_size=image_size)
    info = data.get_dataset_info(dataset)
    size = image_size or info.image_size
    model = create_model(
        model_name, task=task, method=method, num_classes=info.num_classes, arch=arch, img_size=size,
        **(model_kwargs or {}),
    )  # fmt: skip
    train_dl = data.create_loader(train_ds, batch_size, shuffle=True, seed=seed, drop_last=True)
    val_dl = data.create_loader(val_ds, 128)
    trainer = Trainer(model, TrainConfig(lr=lr), total_steps=epochs * len(train_dl))
    t0 = time.perf_counter()
    trainer.fit(train_dl, val_dl, epochs, log=log)
    if method != "bp":
        model.exit_policy = "best"
    val = trainer.evaluate(val_dl, adaptive=False)
    meta = {
        "dataset": dataset,
        "image_size": size,
        "mean": list(info.mean),
        "std": list(info.std),
        "noise": {"rate": 0.0, "kind": None},
        "seed": seed,
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "adamw", "trainer": "zoo.train"},
        "train_seconds": round(time.perf_counter() - t0, 1),
        "metrics": {f"val_{val.metric_name}_per_block": val.per_block},
    }
    return save_checkpoint(model, out, metadata=meta, trainer_state=trainer.state_dict())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m zoo.publish", description=__doc__.split("\n")[0])
    p.add_argument("src", nargs="?", help="checkpoint folder written by the harness (omit with --train)")
    p.add_argument("--name", required=True, help="arch.tag under which to publish (e.g. resnet18.deinforeg_digits)")
    p.add_argument("--half", action="store_true", help="store float16 weights (loaded back as float32)")
    p.add_argument("--manifest", default=None, help=f"manifest to update (default {_DEFAULT_MANIFEST})")
    p.add_argument("--dataset", default=None, help="dataset to measure on (default: the checkpoint's)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the checkpoint's)")
    p.add_argument("--description", default=None)
    p.add_argument("--default", action="store_true", help="the tag a bare `arch` with pretrained=True resolves to")
    p.add_argument("--exit", choices=("last", "best"), default=None, help="exit policy (default: best unless bp)")
    t = p.add_argument_group("--train: train with zoo.train.Trainer first")
    t.add_argument("--train", action="store_true")
    t.add_argument("--model", help="create_model name (a timm model, paper_vgg, or an SMP encoder with --task seg)")
    t.add_argument("--method", default="deinforeg")
    t.add_argument("--task", default="cls")
    t.add_argument("--arch", default=None, help="SMP architecture for --task seg")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--model-kwargs", default="{}", help="JSON dict for create_model, e.g. '{\"width\": 0.25}'")
    args = p.parse_args(argv)
    command = "python -m zoo.publish " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if args.train:
            if not args.model or not args.dataset:
                p.error("--train needs --model and --dataset")
            tmp = Path(tempfile.mkdtemp(prefix="zoo-publish-"))
            try:
                src = train(
                    args.model, args.method, args.dataset, tmp / "checkpoint", task=args.task, arch=args.arch,
                    epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                    seed=args.seed, model_kwargs=json.loads(args.model_kwargs),
                )  # fmt: skip
                entry = publish(src, args.name, half=args.half, manifest=args.manifest, dataset=args.dataset,
                                image_size=args.image_size, description=args.description, command=command,
                                default=args.default, exit_policy=args.exit)  # fmt: skip
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            if not args.src:
                p.error("give a checkpoint folder, or --train")
            entry = publish(args.src, args.name, half=args.half, manifest=args.manifest, dataset=args.dataset,
                            image_size=args.image_size, description=args.description, command=command,
                            default=args.default, exit_policy=args.exit)  # fmt: skip
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({args.name: entry}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
