"""Dataset registry and factory: `create_dataset`, `list_datasets`, `get_dataset_info`, `create_loader`."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import embedded, real
from ._base import DatasetError, DatasetInfo, FileSegDataset, TensorClsDataset, TensorSegDataset, _Base
from .noise import (
    NOISE_KINDS,
    check_noise_rate,
    check_region_noise_rate,
    corrupt_labels,
    corrupt_masks,
    find_regions,
    flip_counts,
    plan_region_noise,
)
from .transforms import build_cls_transform, build_seg_transform

__all__ = [
    "add_label_noise",
    "create_dataset",
    "list_datasets",
    "get_dataset_info",
    "create_loader",
    "register_dataset",
]

SPLITS = ("train", "val", "test")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    build: Callable[..., _Base]  # (info, split, root, download, train_aug, seed, **kw) -> dataset without noise
    embedded: bool


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(
    info: DatasetInfo, embedded: bool = False
) -> Callable[[Callable[..., _Base]], Callable[..., _Base]]:
    """Decorator adding a builder to the registry under `info.name`."""

    def wrap(fn: Callable[..., _Base]) -> Callable[..., _Base]:
        _REGISTRY[info.name] = _Entry(info, fn, embedded)
        return fn

    return wrap


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "tinyimagenet": "tiny-imagenet", "pet": "oxford-pet"}.get(
        key, key
    )
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise DatasetError(f"unknown dataset {name!r}.{hint} Available: {', '.join(list_datasets())}")
    return key


def list_datasets(pattern: str | None = None, task: str | None = None, embedded: bool | None = None) -> list[str]:
    """Registered dataset names, optionally filtered by wildcard `pattern`, `task` ("cls"/"seg") or `embedded`."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if task:
        names = [n for n in names if _REGISTRY[n].info.task == task]
    if embedded is not None:
        names = [n for n in names if _REGISTRY[n].embedded == embedded]
    return names


def get_dataset_info(name: str) -> DatasetInfo:
    """Static metadata of a dataset (task, classes, default image size, mean/std); loads no data."""
    return _REGISTRY[_canonical(name)].info


def check_noise(name: str, rate: float, kind: str = "symmetric") -> None:
    """A DatasetError unless `kind` is a noise kind and `rate` a rate it can reach on dataset `name` (its task and
    classes: pair noise stays below 0.5, symmetric below (C-1)/C; segmentation counts object classes). Loads no
    data, so a harness checks a whole sweep before anything trains."""
    info = get_dataset_info(name)
    if kind not in NOISE_KINDS:
        raise DatasetError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    if not rate:
        return
    check = check_noise_rate if info.task == "cls" else check_region_noise_rate
    try:
        check(rate, info.num_classes, kind)
    except ValueError as e:
        raise DatasetError(str(e)) from None


def _unknown_options(build: Callable[..., Any], kwargs: dict[str, Any]) -> list[str]:
    """The keywords `build` does not take (none when it takes **kwargs), read from its signature."""
    params = inspect.signature(build).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return []
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return sorted(set(kwargs) - names)


def create_dataset(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    image_size: int | None = None,
    seed: int = 0,
    noise_rate: float = 0.0,
    noise_kind: str = "symmetric",
    noise_seed: int = 0,
    train_aug: bool = False,
    limit: int | None = None,
    **kwargs: Any,
) -> Dataset:
    """Build one split of a dataset; items are `(image [3, S, S] normalised, target)`.

    `root` (default $DEINFOREG_DATA_ROOT or ./data) is only read for real datasets. `seed` drives procedural
    generation (shapes); split membership never depends on it. `train_aug` applies only to the train split.
    `limit` keeps only that many images of the split: a procedural dataset generates only those, any other keeps a
    fixed subset (the same for every seed). Label noise (`noise_rate` > 0, train split only, recorded in
    `dataset.noise_audit`) is drawn after that, over exactly the images kept: `round(rate·limit)` labels flip.
    Keyword arguments set to None are dropped, so CLI defaults never override a dataset's own.
    """
    entry = _REGISTRY[_canonical(name)]
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if noise_rate and split != "train":
        raise DatasetError(
            f"create_dataset applies label noise to the train split only, got {split!r} (noisy validation labels: "
            f"datasets.add_label_noise on the val split; the test split stays clean)"
        )
    info = entry.info if image_size is None else replace(entry.info, image_size=int(image_size))
    check_noise(info.name, noise_rate, noise_kind)  # before any data is read
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive number of images, got {limit!r}")
    if limit is not None and info.procedural:
        kwargs["size"] = limit
    unknown = _unknown_options(entry.build, kwargs)
    if unknown:  # from the builder's signature: a TypeError raised inside a builder stays a bug with its traceback
        raise DatasetError(f"dataset {info.name!r} does not accept these options: {unknown}")
    ds = entry.build(info, split, real.resolve_root(root), bool(download), bool(train_aug), int(seed), **kwargs)
    ds.embedded = entry.embedded
    if limit is not None and not info.procedural and limit < len(ds):
        keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(12345))[:limit].sort().values
        ds.take(keep.tolist())
    if noise_rate:
        _apply_noise(ds, float(noise_rate), noise_kind, int(noise_seed))
    return ds


def add_label_noise(ds: _Base, rate: float, kind: str = "symmetric", seed: int = 0) -> _Base:
    """Corrupt a built train or val split in place (the draw is the split's own: val labels get streams
    independent of the training draw of the same seed); returns it. Exactly round(rate·N) labels (cls) or object
    regions (seg) change, over the images the split holds (after `limit`), audited in `ds.noise_audit` like the
    training noise. The noisy-validation protocol: `add_label_noise(create_dataset(name, "val", ...), rate, kind,
    seed)` with the training run's rate, kind and noise seed. The test split is never corrupted."""
    if ds.split not in ("train", "val"):
        raise DatasetError(f"label noise applies to the train and val splits only; the {ds.split} split stays clean")
    if ds.noise_audit is not None:
        raise DatasetError(f"the {ds.split} split of {ds.info.name} already has label noise: {ds.noise_audit['kind']}")
    if kind not in NOISE_KINDS:
        raise DatasetError(f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)}")
    check = check_noise_rate if ds.info.task == "cls" else check_region_noise_rate
    try:
        check(rate, ds.info.num_classes, kind)
        _apply_noise(ds, float(rate), kind, int(seed))
    except ValueError as e:
        raise DatasetError(str(e)) from None
    return ds


def _apply_noise(ds: _Base, rate: float, kind: str, seed: int) -> None:
    draw = ds.split  # train or val: each split draws from its own streams (datasets.noise, "Draws")
    audit: dict[str, Any] = {"dataset": ds.info.name, "split": ds.split, "kind": kind, "rate": rate, "seed": seed}
    audit["draw"] = draw
    ign = ds.info.ignore_index
    if hasattr(ds, "clean_targets"):  # classification, in memory or from files
        ds.targets, flipped = corrupt_labels(ds.clean_targets, ds.info.num_classes, rate, kind, seed, draw)
        idx = torch.nonzero(flipped).flatten().tolist()
        audit.update(num_samples=len(flipped), num_flipped=len(idx), flipped_indices=idx)
        clean = torch.as_tensor(ds.clean_targets).reshape(-1).tolist()
        noisy = torch.as_tensor(ds.targets).reshape(-1).tolist()
        audit.update(flip_counts([(clean[i], noisy[i]) for i in idx], ds.info.num_classes))
    elif isinstance(ds, TensorSegDataset):
        ds.masks, plan = corrupt_masks(ds.clean_masks, ds.info.num_classes, rate, seed, ign, 0, kind, draw)
        ds.masks = ds.masks.to(ds.clean_masks.dtype)
        _seg_audit(audit, plan, sum(len(find_regions(m, ign)[1]) for m in ds.clean_masks), ds.info.num_classes)
    elif isinstance(ds, FileSegDataset):
        # one pass over the masks to count regions; the plan is replayed per item in __getitem__
        classes = [find_regions(ds.load_mask(i), ign)[1] for i in range(len(ds))]
        plan = plan_region_noise(classes, ds.info.num_classes, rate, kind, seed, 0, draw)
        for i, r, old, new in plan:
            ds.relabel_plan.setdefault(i, []).append((r, old, new))
        _seg_audit(audit, plan, sum(map(len, classes)), ds.info.num_classes)
    else:  # pragma: no cover - every registered builder returns one of the above
        raise TypeError(f"cannot apply noise to {type(ds).__name__}")
    ds.noise_audit = audit


def _seg_audit(
    audit: dict[str, Any], plan: list[tuple[int, int, int, int]], num_regions: int, num_classes: int
) -> None:
    audit.update(
        num_regions=num_regions,
        num_flipped=len(plan),
        flipped_indices=sorted({p[0] for p in plan}),
        relabelled=[list(p) for p in plan],
        **flip_counts([(p[2], p[3]) for p in plan], num_classes),  # regions, by their true class
    )


# ------------------------------------------------------------------------------------------------ loaders


def _seed_worker(worker_id: int) -> None:
    # DataLoader already seeds torch per worker from its generator; numpy and random follow from that seed.
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def create_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """DataLoader with a seeded shuffle order and seeded workers.

    `num_workers=None` picks 0 for embedded in-memory sets (worker start-up costs more than indexing a tensor)
    and min(4, CPU count) otherwise. For a fixed `seed` and worker count, order and augmentations repeat exactly.
    """
    if num_workers is None:
        num_workers = 0 if getattr(dataset, "embedded", False) else min(4, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=torch.Generator().manual_seed(int(seed)),
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


# ----------------------------------------------------------------------------------------------- registry

_DIGITS_MEAN, _DIGITS_STD = (0.3052,) * 3, (0.3240,) * 3  # measured on the 32x32 train split
_SHAPES_MEAN, _SHAPES_STD = (0.4965, 0.4997, 0.5019), (0.2557, 0.2558, 0.2558)  # measured on the train split


@register_dataset(
    DatasetInfo("digits", "cls", 10, 32, 3, _DIGITS_MEAN, _DIGITS_STD, -100, tuple(str(d) for d in range(10))),
    embedded=True,
)
def _digits(info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, seed: int) -> _Base:
    x, y = embedded.load_digits_split(split, info.image_size)
    transform = build_cls_transform(info, train_aug and split == "train", native_size=info.image_size, aug="affine")
    return TensorClsDataset(x, y, info, split, transform)


@register_dataset(
    DatasetInfo("shapes", "seg", 4, 64, 3, _SHAPES_MEAN, _SHAPES_STD, 255, embedded.SHAPES_CLASSES, procedural=True),
    embedded=True,
)
def _shapes(
    info: DatasetInfo,
    split: str,
    root: Path,
    download: bool,
    train_aug: bool,
    seed: int,
    size: int | None = None,
    noise_std: float = 0.08,
    overlap: bool = False,
) -> _Base:
    x, m = embedded.generate_shapes(split, size, info.image_size, seed, noise_std, overlap)
    transform = build_seg_transform(info, train_aug and split == "train", flips="hv")
    return TensorSegDataset(x, m, info, split, transform)


_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@register_dataset(DatasetInfo("cifar10", "cls", 10, 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                              -100, _CIFAR10_NAMES))  # fmt: skip
def _cifar10(info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, seed: int, **kw: Any) -> _Base:
    return real.build_cifar(info, split, root, download, train_aug, **kw)


@register_dataset(DatasetInfo("cifar100", "cls", 100, 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)))
def _cifar100(
    info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, seed: int, **kw: Any
) -> _Base:
    return real.build_cifar(info, split, root, download, train_aug, **kw)


@register_dataset(DatasetInfo("tiny-imagenet", "cls", 200, 64, 3, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)))
def _tiny(info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, seed: int, **kw: Any) -> _Base:
    return real.build_tiny_imagenet(info, split, root, download, train_aug, **kw)


@register_dataset(DatasetInfo("oxford-pet", "seg", 2, 256, 3, IMAGENET_MEAN, IMAGENET_STD, 255, ("background", "pet")))
def _pet(info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, seed: int, **kw: Any) -> _Base:
    return real.build_pet(info, split, root, download, train_aug, **kw)


@register_dataset(DatasetInfo("voc", "seg", 21, 256, 3, IMAGENET_MEAN, IMAGENET_STD, 255, real.VOC_CLASSES))
def _voc(info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, seed: int, **kw: Any) -> _Base:
    return real.build_voc(info, split, root, download, train_aug, **kw)
