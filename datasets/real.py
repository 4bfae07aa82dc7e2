"""Real datasets read from a local root (`--data-root`), downloaded only when asked (`--download`).

Expected layouts under the root (the layouts of the official archives):
- cifar10:       cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}   (python pickles)
- cifar100:      cifar-100-python/{train, test, meta}
- tiny-imagenet: tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG,
                 val/val_annotations.txt}
- oxford-pet:    oxford-iiit-pet/{images/*.jpg, annotations/trimaps/*.png, annotations/{trainval,test}.txt}
- voc:           VOCdevkit/VOC2012/{JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/*.txt}

Splits. None of these ship a labelled validation split we may select on, so `val` is carved from the official
training split with a fixed seed (10%, stratified by class for classification) and `test` is the official held-out
split: the test batch for CIFAR, the labelled `val` folder for Tiny-ImageNet (its test labels are not public),
`test` for Oxford-IIIT Pet and `val` for VOC 2012 (its test labels are not public).

CIFAR pickles and Tiny-ImageNet folders are read by the code below (torchvision's CIFAR class insists on the
archive checksums, which a small local copy cannot match); VOC goes through torchvision's `VOCSegmentation`;
downloads use torchvision's downloaders. Every file is checked before reading, so a missing or incomplete copy
raises one `DatasetError` naming the expected path and files and how to get them.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ._base import DatasetError, DatasetInfo, FileClsDataset, FileSegDataset, TensorClsDataset, carve_split
from .transforms import build_cls_transform, build_seg_transform

__all__ = [
    "DATA_ROOT_ENV",
    "VAL_FRACTION",
    "resolve_root",
    "build_cifar",
    "build_tiny_imagenet",
    "build_pet",
    "build_voc",
]

DATA_ROOT_ENV = "DEINFOREG_DATA_ROOT"
VAL_FRACTION = 0.1

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (163 MB)",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (161 MB)",
    },
}
_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """`root`, else $DEINFOREG_DATA_ROOT, else ./data."""
    return Path(root if root is not None else os.environ.get(DATA_ROOT_ENV, "data")).expanduser()


def _fail(title: str, base: Path, expected: str, missing: list[str], how: str) -> DatasetError:
    shown = ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
    return DatasetError(
        f"{title} not found or incomplete at {base}\n  expected: {expected}\n  missing: {shown}\n  to get it: {how}"
    )


def _check(title: str, base: Path, required: list[str], expected: str, how: str) -> None:
    missing = [r for r in required if not (base / r).exists()]
    if not base.is_dir():
        missing = [f"the folder {base.name}/ itself"]
    if missing:
        raise _fail(title, base, expected, missing, how)


def _download(title: str, fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as e:  # network, checksum, disk: all end the same way for the user
        raise DatasetError(f"downloading {title} failed: {type(e).__name__}: {e}") from e


def _split_indices(split: str, n: int, labels: np.ndarray | None, val_fraction: float) -> np.ndarray:
    kept, carved = carve_split(n, val_fraction, labels)
    return kept if split == "train" else carved


# ------------------------------------------------------------------------------------------------ CIFAR


def _read_pickle(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")  # the archives were written by Python 2
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def build_cifar(
    info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, val_fraction: float = VAL_FRACTION
) -> TensorClsDataset:
    """CIFAR-10/100 held in memory as uint8 (150 MB for the training set)."""
    spec = _CIFAR[info.name]
    base = root / spec["folder"]
    if download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if info.name == "cifar10" else torchvision.datasets.CIFAR100
        _download(info.name, lambda: cls(str(root), train=True, download=True))
    files = spec["test"] if split == "test" else spec["train"]
    _check(
        info.name,
        base,
        [*spec["train"], *spec["test"], spec["meta"]],
        f"{base}/{{{', '.join([*spec['train'], *spec['test'], spec['meta']])}}} (the python version pickles)",
        f"pass --download, or extract {spec['url']} into {root}",
    )
    images, labels = [], []
    for name in files:
        try:
            d = _read_pickle(base / name)
            images.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.extend(int(v) for v in d[spec["labels"]])
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise DatasetError(f"{base / name} is not a readable CIFAR batch ({e}); re-extract {spec['url']}") from e
    x, y = torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)
    if split != "test":
        idx = torch.from_numpy(_split_indices(split, len(y), y.numpy(), val_fraction))
        x, y = x[idx], y[idx]
    names = _read_pickle(base / spec["meta"]).get(spec["names"]) if info.class_names is None else None
    if names is not None:
        info = replace(info, class_names=tuple(names))
    transform = build_cls_transform(info, train_aug and split == "train", native_size=32, aug="crop_flip")
    return TensorClsDataset(x, y, info, split, transform)


# ---------------------------------------------------------------------------------------- Tiny-ImageNet


def build_tiny_imagenet(
    info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, val_fraction: float = VAL_FRACTION
) -> FileClsDataset:
    """Tiny-ImageNet-200 from its folder layout; labels index the sorted wnids (ImageFolder's convention)."""
    base = root / "tiny-imagenet-200"
    if download and not (base / "wnids.txt").exists():
        from torchvision.datasets.utils import download_and_extract_archive

        _download(info.name, lambda: download_and_extract_archive(_TINY_URL, str(root), md5=_TINY_MD5))
    expected = f"{base}/{{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt}}"
    how = f"pass --download, or unzip {_TINY_URL} (237 MB) into {root}"
    _check("tiny-imagenet", base, ["wnids.txt", "train", "val/images", "val/val_annotations.txt"], expected, how)
    wnids = sorted(w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip())
    index = {w: k for k, w in enumerate(wnids)}
    paths: list[str] = []
    labels: list[int] = []
    if split == "test":
        for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1] in index:
                paths.append(str(base / "val" / "images" / parts[0]))
                labels.append(index[parts[1]])
    else:
        empty = []
        for w in wnids:
            files = sorted((base / "train" / w / "images").glob("*.JPEG"))
            if not files:
                empty.append(f"train/{w}/images/*.JPEG")
            paths.extend(str(f) for f in files)
            labels.extend([index[w]] * len(files))
        if empty:
            raise _fail("tiny-imagenet", base, expected, empty, how)
        idx = _split_indices(split, len(labels), np.asarray(labels), val_fraction)
        paths, labels = [paths[i] for i in idx], [labels[i] for i in idx]
    missing = [os.path.relpath(p, base) for p in paths if not os.path.exists(p)]
    if missing or not paths:
        raise _fail("tiny-imagenet", base, expected, missing or ["any image of this split"], how)
    if info.class_names is None and (base / "words.txt").exists():
        words = dict(ln.split("\t", 1) for ln in (base / "words.txt").read_text().splitlines() if "\t" in ln)
        info = replace(info, class_names=tuple(words.get(w, w).strip() for w in wnids))
    transform = build_cls_transform(info, train_aug and split == "train", native_size=64, aug="crop_flip")
    return FileClsDataset(paths, torch.tensor(labels, dtype=torch.long), info, split, transform)


# ---------------------------------------------------------------------------------------- segmentation


# Module-level loaders bound with functools.partial (not lambdas) so datasets pickle into spawned workers.
def _load_rgb(paths: list[str], i: int) -> Image.Image:
    with Image.open(paths[i]) as im:
        return im.convert("RGB")


def _load_png(paths: list[str], lut: np.ndarray | None, i: int) -> np.ndarray:
    with Image.open(paths[i]) as im:
        m = np.array(im)  # palette PNGs keep their indices: the class ids
    return m if lut is None else lut[m]


def _seg_dataset(
    info: DatasetInfo, split: str, images: list[str], masks: list[str], train_aug: bool, lut: np.ndarray | None
) -> FileSegDataset:
    transform = build_seg_transform(info, train_aug and split == "train", flips="h")
    return FileSegDataset(
        functools.partial(_load_rgb, images),
        functools.partial(_load_png, masks, lut),
        len(images),
        info,
        split,
        transform,
    )


# trimap: 1 = pet, 2 = background, 3 = the uncertain border, which we ignore
_PET_LUT = np.full(256, 255, dtype=np.uint8)
_PET_LUT[1], _PET_LUT[2] = 1, 0


def build_pet(
    info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, val_fraction: float = VAL_FRACTION
) -> FileSegDataset:
    """Oxford-IIIT Pet foreground segmentation: 0 background, 1 pet, trimap border -> ignore_index."""
    base = root / "oxford-iiit-pet"
    if download:
        import torchvision

        _download(info.name, lambda: torchvision.datasets.OxfordIIITPet(str(root), download=True))
    expected = (
        f"{base}/{{images/<id>.jpg, annotations/trimaps/<id>.png, annotations/trainval.txt, annotations/test.txt}}"
    )
    how = (
        "pass --download, or extract images.tar.gz and annotations.tar.gz from "
        f"https://www.robots.ox.ac.uk/~vgg/data/pets/ into {base}"
    )
    official = "test" if split == "test" else "trainval"
    _check("oxford-pet", base, ["images", "annotations/trimaps", f"annotations/{official}.txt"], expected, how)
    ids = [ln.split()[0] for ln in (base / "annotations" / f"{official}.txt").read_text().splitlines() if ln.strip()]
    if split != "test":
        ids = [ids[i] for i in _split_indices(split, len(ids), None, val_fraction)]
    images = [str(base / "images" / f"{i}.jpg") for i in ids]
    masks = [str(base / "annotations" / "trimaps" / f"{i}.png") for i in ids]
    _check_listed(info.name, base, images + masks, expected, how)
    return _seg_dataset(info, split, images, masks, train_aug, _PET_LUT)


def _check_listed(title: str, base: Path, files: list[str], expected: str, how: str) -> None:
    missing = [os.path.relpath(p, base) for p in files if not os.path.exists(p)]
    if missing or not files:
        raise _fail(title, base, expected, missing or ["any sample of this split"], how)


def build_voc(
    info: DatasetInfo, split: str, root: Path, download: bool, train_aug: bool, val_fraction: float = VAL_FRACTION
) -> FileSegDataset:
    """Pascal VOC 2012 semantic segmentation, 21 classes, 255 = void (object borders)."""
    import torchvision

    base = root / "VOCdevkit" / "VOC2012"
    official = "val" if split == "test" else "train"
    if download and not base.is_dir():  # torchvision would fetch the 2 GB archive again if it was deleted
        voc = torchvision.datasets.VOCSegmentation
        _download(info.name, lambda: voc(str(root), year="2012", image_set=official, download=True))
    expected = f"{base}/{{JPEGImages/<id>.jpg, SegmentationClass/<id>.png, ImageSets/Segmentation/{{train,val}}.txt}}"
    how = (
        "pass --download, or extract VOCtrainval_11-May-2012.tar (2 GB, http://host.robots.ox.ac.uk/pascal/VOC/) "
        f"into {root}"
    )
    required = ["JPEGImages", "SegmentationClass", f"ImageSets/Segmentation/{official}.txt"]
    _check("voc", base, required, expected, how)
    tv = torchvision.datasets.VOCSegmentation(str(root), year="2012", image_set=official)
    images, masks = list(tv.images), list(tv.masks)
    if split != "test":
        idx = _split_indices(split, len(images), None, val_fraction)
        images, masks = [images[i] for i in idx], [masks[i] for i in idx]
    _check_listed(info.name, base, images + masks, expected, how)
    return _seg_dataset(info, split, images, masks, train_aug, None)
