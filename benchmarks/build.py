"""One build path: every bench turns the same `RunConfig` into the objects `zoo` takes, here and only here.

Names are resolved once: the dataset (through the repository's `datasets`), the model (`zoo.create_model`), the
training data order. `zoo` receives a model, a batch source and a class count; it never sees a dataset name. A
user mistake found while building (unknown dataset, missing files, a size or rate the data cannot take) becomes a
`zoo.errors.UserError` here, so the CLI prints one line and exits with code 2.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

import datasets
import zoo
from zoo.errors import UserError

if TYPE_CHECKING:
    from .settings import RunConfig

__all__ = [
    "EpochBatches",
    "batch_pool",
    "build_datasets",
    "build_model",
    "dataset_info",
    "eval_loader",
    "model_builder",
    "preflight",
    "user_errors",
]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Report the data's user-fixable errors (`datasets.DatasetError`) as the one user-error type."""
    try:
        yield
    except datasets.DatasetError as e:
        raise UserError(str(e)) from None


def dataset_info(name: str) -> datasets.DatasetInfo:
    with user_errors():
        return datasets.get_dataset_info(name)


def build_datasets(cfg: RunConfig, seed: int, noise_rate: float) -> tuple[Any, Any, Any, dict | None]:
    """Train (noisy), validation and test splits, limited to train_size / eval_size images.

    The limit is applied by the dataset before it draws label noise, so the noise rate holds over exactly the images
    trained on; the subset is the same for every seed and method. Validation labels are clean unless the run asks
    for the noisy-validation protocol (`--val-noise`: no trusted labels exist): then the validation split gets the
    training noise's kind and rate, drawn from the validation split's own streams with the same seed, and audited in
    `val.noise_audit`. The test split is always clean.
    """
    common = dict(root=cfg.data_root, image_size=cfg.img_size, seed=0)
    with user_errors():
        train = datasets.create_dataset(
            cfg.dataset, "train", noise_rate=noise_rate, noise_kind=cfg.opt("noise_kind"), noise_seed=seed,
            train_aug=cfg.train_aug, limit=cfg.train_size, **common,
        )  # fmt: skip
        val = datasets.create_dataset(cfg.dataset, "val", limit=cfg.eval_size, **common)
        if cfg.opt("val_noise") and noise_rate > 0:
            datasets.add_label_noise(val, noise_rate, cfg.opt("noise_kind"), seed)
        test = datasets.create_dataset(cfg.dataset, "test", limit=cfg.eval_size, **common)
    return train, val, test, train.noise_audit


def _model_kwargs(cfg: RunConfig) -> dict[str, Any]:
    info = dataset_info(cfg.dataset)
    kw = dict(cfg.model_kwargs)
    kw.setdefault("img_size", cfg.img_size or info.image_size)
    return dict(task=cfg.task, num_classes=info.num_classes, num_blocks=cfg.num_blocks, arch=cfg.arch, **kw)


def build_model(cfg: RunConfig, name: str, method: str) -> zoo.DecoupledModel:
    """The model `name` trained by `method`, sized for the run's data."""
    return zoo.create_model(name, method=method, **_model_kwargs(cfg))


def model_builder(cfg: RunConfig, name: str) -> Callable[..., zoo.DecoupledModel]:
    """A picklable `builder(method=...)` for processes that build their own copy (the pipeline's stages)."""
    return functools.partial(zoo.create_model, name, **_model_kwargs(cfg))


def preflight(cfg: RunConfig) -> None:
    """Build every model of the run once, before anything is written: an unknown keyword or a size the model cannot
    take stops the run with its one-line error instead of after a run folder exists (a few seconds at most)."""
    for name in cfg.model:
        for method in dict.fromkeys([cfg.methods[0], "bp"]):
            build_model(cfg, name, method)


def _num_workers(ds: Any) -> int:
    return 0 if getattr(ds, "embedded", False) else min(4, os.cpu_count() or 1)


def eval_loader(ds: Any, batch_size: int) -> DataLoader:
    return datasets.create_loader(ds, batch_size, shuffle=False, num_workers=_num_workers(ds))


class EpochBatches:
    """The batch source `zoo.train.Trainer.fit` takes: `source(epoch, start)` yields that epoch's batches from
    batch `start` on. The order is a function of (seed, epoch) only, so a run resumed mid-epoch replays exactly the
    batches it had not seen. Full batches only."""

    def __init__(self, ds: Any, batch_size: int, seed: int):
        self.ds, self.seed = ds, seed
        self.batch_size = min(batch_size, len(ds))

    def order(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.ds), generator=g).tolist()
        bs = self.batch_size
        return [perm[i : i + bs] for i in range(0, len(perm) - bs + 1, bs)]

    def __len__(self) -> int:
        return len(self.ds) // self.batch_size

    def __call__(self, epoch: int, start: int = 0) -> DataLoader:
        return DataLoader(
            self.ds,
            batch_sampler=self.order(epoch)[start:],
            num_workers=_num_workers(self.ds),
            generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch),
            pin_memory=torch.cuda.is_available(),
        )


def batch_pool(cfg: RunConfig, num_batches: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`num_batches` real training batches held in memory (throughput benches cycle them: loading is not what they
    measure); the same for every method and process with the same seed."""
    train, _, _, _ = build_datasets(cfg, seed, 0.0)
    if len(train) < cfg.batch_size:
        raise UserError(
            f"--batch-size {cfg.batch_size} is larger than the {len(train)} training images of {cfg.dataset}"
        )
    source = EpochBatches(train, cfg.batch_size, seed)
    pool: list[tuple[torch.Tensor, torch.Tensor]] = []
    epoch = 0
    while len(pool) < num_batches:
        for x, y in source(epoch):
            pool.append((x, y))
            if len(pool) == num_batches:
                break
        epoch += 1
    return pool
