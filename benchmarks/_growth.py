"""Growth in the harness: the progressive schedule (`--grow-at`, `--freeze-overtaken`) as a training callback, and
extension of a checkpoint (`--init-from`, `--add-blocks`); `benchmarks.grow` compares both with all-at-once training.

Schedule: with K blocks and `--grow-at E1,...,Em` (m ≤ K-1, strictly increasing, each in 1..epochs-1), the first
K-m blocks train from epoch 0 and block K-m+j joins at epoch Ej (so m = K-1 starts from block 1 alone). With
`--freeze-overtaken`, when a block joins every block before it is frozen (it then only runs forward). The layout is a
function of the epoch only, so a resumed run restores it before loading the trainer state.

`--add-blocks` syntax, comma-separated or repeated:
    conv:WIDTH[:STRIDE[:DEPTH]]   a generic conv stage (stride 2, depth 1 by default), e.g. conv:64:2
    stages:[NAME:]I[+J...]        stages I, J of zoo model NAME (default: the parent's own architecture),
                                  e.g. stages:resnet34:3 or stages:2+3
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import zoo
from zoo.checkpoints import load_checkpoint, read_config, sha256_file
from zoo.errors import CheckpointError, UserError
from zoo.grow import freeze, grow, refresh_optimizers, regrow
from zoo.heads import LOCAL_METHODS
from zoo.train import Callback, Trainer

from .build import build_model

if TYPE_CHECKING:
    from .settings import RunConfig

__all__ = [
    "GrowthCallback",
    "layout",
    "make_model",
    "parent_checkpoint",
    "parse_block_specs",
    "preflight",
]

_SYNTAX = "conv:WIDTH[:STRIDE[:DEPTH]] or stages:[NAME:]I[+J...]"


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in text.split("+")]
    except ValueError:
        raise UserError(f"--add-blocks {what!r}: expected {_SYNTAX}") from None


def parse_block_specs(items: list[str]) -> list[dict[str, Any]]:
    """`--add-blocks` entries (see the module docstring) as `zoo.grow.grow` block specs."""
    specs = []
    for item in items:
        parts = item.strip().split(":")
        if parts[0] == "conv" and 2 <= len(parts) <= 4:
            nums = _ints("+".join(parts[1:]), item)
            if min(nums) < 1:
                raise UserError(f"--add-blocks {item!r}: width, stride and depth must be positive")
            nums += [2, 1][len(nums) - 1 :]  # stride 2, depth 1 unless given
            specs.append({"kind": "conv", "width": nums[0], "stride": nums[1], "depth": nums[2]})
        elif parts[0] == "stages" and len(parts) in (2, 3):
            stages = _ints(parts[-1], item)
            if min(stages) < 0:
                raise UserError(f"--add-blocks {item!r}: stage indices start at 0")
            specs.append({"kind": "stages", "name": parts[1] if len(parts) == 3 else None, "stages": stages})
        else:
            raise UserError(f"--add-blocks {item!r} is not valid; expected {_SYNTAX}")
    return specs


# -- the parent checkpoint ---------------------------------------------------------------------------------------
def parent_checkpoint(source: str) -> tuple[Path, dict[str, Any]]:
    """The folder and config of `--init-from`: a checkpoint folder, or a pretrained zoo name (pulled)."""
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            return path, read_config(path)
        except CheckpointError as e:
            raise UserError(f"--init-from {source}: {e}") from None
    from zoo.hub import get_pretrained_entry, pull

    try:
        get_pretrained_entry(source)
    except CheckpointError as e:
        raise UserError(f"--init-from {source!r} is neither a checkpoint folder nor a pretrained name: {e}") from None
    folder = pull(source)
    return folder, read_config(folder)


def _extended(cfg: RunConfig, scratch: bool) -> tuple[zoo.DecoupledModel, dict[str, Any]]:
    """The parent of `--init-from` grown by `--add-blocks`: its blocks loaded and frozen, or (`scratch`) the same
    architecture as created, every block to be trained from scratch (the all-at-once baseline)."""
    folder, config = parent_checkpoint(cfg.options.init_from)
    specs = parse_block_specs(cfg.options.add_blocks or [])
    if scratch:
        model = zoo.build_from_config(config["model"])
        if config.get("growth"):
            regrow(model, {**config["growth"], "frozen": [], "active": None})
    else:
        model = load_checkpoint(folder)
    n_old = model.num_blocks
    grow(model, specs)
    if not scratch:  # the parent's blocks; for seg its SMP decoder stays last, the new blocks go before it
        seg = model.task == "seg"
        freeze(model, [*range(n_old - 1), model.num_blocks - 1] if seg else list(range(n_old)))
    sha = sha256_file(folder / "model.safetensors")
    source = {"source": cfg.options.init_from, "weights_sha256": sha, "architecture": config.get("architecture")}
    meta = {"grown_from": source, "added_blocks": specs, "trained_blocks": [k + 1 for k in model.trained_blocks()]}
    return model, meta


def make_model(cfg: RunConfig, name: str, method: str, variant: str = "") -> tuple[zoo.DecoupledModel, dict]:
    """The model a run trains and the metadata its checkpoint records. Variants: "" or "progressive" or
    "all_at_once" (as created), "extended" (the parent checkpoint grown, its blocks frozen), "scratch" (the
    extended architecture as created)."""
    if variant in ("extended", "scratch"):
        return _extended(cfg, scratch=variant == "scratch")
    model = build_model(cfg, name, method)
    return model, {}


def preflight(cfg: RunConfig) -> None:
    """Checks that need the model: enough blocks for `--grow-at`, `--add-blocks` shapes that fit the parent."""
    if cfg.options.init_from:
        _extended(cfg, scratch=False)
    grow_at = cfg.options.grow_at
    if grow_at:
        for name in cfg.model:
            for method in cfg.methods:
                n = build_model(cfg, name, method).num_blocks
                if len(grow_at) > n - 1:
                    raise UserError(
                        f"--grow-at gives {len(grow_at)} epochs, but {name} has {n} blocks: at most {n - 1} "
                        "can join after the first"
                    )


# -- the schedule ------------------------------------------------------------------------------------------------
def layout(grow_at: list[int] | None, freeze_overtaken: bool, num_blocks: int, epoch: int) -> tuple[int, list[int]]:
    """(blocks active, blocks frozen by the schedule) during `epoch` (0-based)."""
    if not grow_at:
        return num_blocks, []
    first = num_blocks - len(grow_at)
    active = first + sum(1 for e in grow_at if e <= epoch)
    return active, list(range(active - 1)) if freeze_overtaken and active > first else []


class GrowthCallback(Callback):
    """Applies the schedule at epoch boundaries (`set_active`, `freeze`, `refresh_optimizers`) and counts
    block-steps: a step of k trained (active, unfrozen) blocks counts k. Each epoch record gets `active`,
    `frozen` (1-based block numbers) and `block_steps` (that epoch's)."""

    def __init__(self, grow_at: list[int] | None = None, freeze_overtaken: bool = False):
        self.grow_at, self.freeze_overtaken = list(grow_at or []), freeze_overtaken
        self.count = 0

    def apply(self, trainer: Trainer, epoch: int) -> None:
        """Set the model's layout for `epoch`; rebuild the optimizers if it changed."""
        if not self.grow_at:
            return
        model = trainer.model
        active, frozen = layout(self.grow_at, self.freeze_overtaken, model.num_blocks, epoch)
        want = set(frozen)
        have = {k for k, b in enumerate(model.blocks) if b.frozen}
        if active == model.num_active and want == have:
            return
        model.set_active(active)
        freeze(model, sorted(have - want), frozen=False)
        freeze(model, sorted(want - have))
        refresh_optimizers(trainer)

    def _trained(self, trainer: Trainer) -> int:
        return sum(1 for k in trainer.model.trained_blocks() if trainer.model.blocks[k].head is not None)

    def on_train_start(self, trainer: Trainer) -> None:
        self.apply(trainer, trainer.epoch)
        self.count = trainer.epoch_step * self._trained(trainer)  # resumed mid-epoch: the layout held all along

    def on_step(self, trainer: Trainer, out: dict[str, Any]) -> None:
        self.count += len(out["losses"])

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        model = trainer.model
        record.update(active=model.num_active, frozen=[k + 1 for k, b in enumerate(model.blocks) if b.frozen])
        record["block_steps"] = self.count
        self.count = 0
        self.apply(trainer, trainer.epoch)  # the layout of the next epoch, before the checkpoint is saved


def check_method(methods: list[str]) -> None:
    bad = [m for m in methods if m not in LOCAL_METHODS]
    if bad:
        raise UserError(
            f"growing needs a decoupled method ({', '.join(LOCAL_METHODS)}); {', '.join(bad)} has no local heads"
        )
