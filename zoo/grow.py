"""Grow a decoupled model: append blocks with their local heads, freeze blocks, re-apply a recorded growth.

`grow(model, blocks, keep=None, freeze=())` changes `model` in place and returns it. `keep=n` first drops every block
after the n-th (a curriculum that starts from the first stages of an architecture). Each entry of `blocks` is a plain
dict describing new blocks; each new block gets a fresh local head built like the model's own (same method,
projector and `head_kwargs` as its config):
- `{"kind": "conv", "width": 128, "stride": 2, "depth": 1}`: a generic stage, `depth` × (3×3 conv + BN + ReLU),
  the first conv with `stride`; it reads a (C, H, W) feature map of any width.
- `{"kind": "stages", "stages": [2, 3], "name": "resnet34", "kwargs": {}}`: blocks 2 and 3 (0-based, with their
  heads) of `zoo.create_model(name, **kwargs)` built for this model's task, method, classes, input size and head
  settings: the next stages of a larger model of the same family. Without `name`, the blocks come from a fresh copy
  of the model's own parent architecture (its remaining stages after `keep`).
A new block must accept what the block before it outputs: otherwise a `GrowError` names both shapes. Growing needs a
decoupled method: under `bp` only the last block has a head, which the new blocks would take over.

Segmentation: new blocks go between the encoder and the SMP decoder, which stays the last block and reads the new
last encoder block in place of the old one (its other skip features are unchanged). An SMP decoder is built for
fixed feature shapes, so the new last block must output what the old last encoder block did (a refinement stage:
stride 1, same width); a deeper stage gives a `GrowError` that says so.

`freeze(model, blocks)` stops training blocks (`Block.freeze`: no gradients, eval mode kept, no optimizer state, no
loss). Progressive depth is `model.set_active(n)`. After any of these, `refresh_optimizers(trainer)` rebuilds a
`zoo.train.Trainer`'s optimizers for the blocks that now train (they are indexed by `model.trained_blocks()`).

The record, `model.growth` (None for a model as created; JSON-serialisable), is what a checkpoint must save next to
`model.config` (which stays the parent's) so that `regrow(zoo.create_model(**parent), growth)` rebuilds the
architecture before its weights are loaded:
    {"version": 1,
     "parent": {...},        # the config of the model before any growth (zoo.create_model(**parent) builds it)
     "keep": 2 | None,       # parent blocks kept (None: all)
     "added": [spec, ...],   # one spec per added block, defaults filled in, e.g. {"kind": "conv", "width": 64,
                             #   "stride": 2, "depth": 1} or {"kind": "stages", "name": None, "stages": [2],
                             #   "kwargs": {}}; for segmentation inserted before the decoder
     "frozen": [0, 1],       # indices of the frozen blocks in the grown model
     "active": 3 | None}     # model.num_active if set_active limited it, else None
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from ._build import build_architecture, rebuild_kwargs
from .adapters._stages import eval_mode
from .decoupled import Block, DecoupledModel
from .errors import UserError
from .heads import DENSE_HEADS, LOCAL_METHODS, LocalHead, dense_head
from .train import build_optimizers

__all__ = ["GrowError", "KINDS", "freeze", "grow", "refresh_optimizers", "regrow"]

KINDS = ("conv", "stages")
_SPEC_KEYS = {"conv": {"kind", "width", "stride", "depth"}, "stages": {"kind", "stages", "name", "kwargs"}}
# config keys that would read external weights when the parent is rebuilt (as zoo.checkpoints skips them)


class GrowError(UserError):
    """A model cannot be grown, frozen or regrown as asked; the message says why."""


# -- helpers -----------------------------------------------------------------------------------------------------
def _plain(obj: Any) -> Any:
    """`obj` as JSON would give it back (tuples become lists), so records compare equal after a round trip."""
    try:
        return json.loads(json.dumps(obj))
    except TypeError as e:
        raise GrowError(f"the growth record must be JSON-serialisable: {e}") from None


def _normalise(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One spec per new block, with defaults filled in; a malformed spec raises GrowError."""
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise GrowError(f"a block spec is a dict with 'kind' in {', '.join(KINDS)}, got {spec!r}")
    kind = spec["kind"]
    extra = set(spec) - _SPEC_KEYS[kind]
    if extra:
        raise GrowError(f"unknown keys {sorted(extra)} in a {kind!r} spec; valid keys: {sorted(_SPEC_KEYS[kind])}")
    if kind == "conv":
        width, stride, depth = spec.get("width"), spec.get("stride", 2), spec.get("depth", 1)
        if not all(isinstance(v, int) and v >= 1 for v in (width, stride, depth)):
            raise GrowError(f"a conv spec needs positive integers width, stride, depth; got {spec!r}")
        return [{"kind": "conv", "width": width, "stride": stride, "depth": depth}]
    stages = spec.get("stages")
    stages = [stages] if isinstance(stages, int) else stages
    if not stages or not all(isinstance(i, int) and i >= 0 for i in stages):
        raise GrowError(f"a stages spec needs 'stages', a list of block indices of its source model; got {spec!r}")
    name, kwargs = spec.get("name"), dict(spec.get("kwargs") or {})
    return [{"kind": "stages", "name": name, "stages": [i], "kwargs": kwargs} for i in stages]


def _dummy(model: DecoupledModel) -> torch.Tensor:
    cfg = model.config
    size = cfg.get("img_size")
    if not size:
        raise GrowError("the model's config has no img_size: cannot measure its block outputs")
    chans = int(cfg.get("in_channels", cfg.get("in_chans", 3)) or 3)
    g = torch.Generator().manual_seed(0)  # never touch the global RNG
    p = next(model.parameters())
    return torch.randn(1, chans, int(size), int(size), generator=g).to(p.device, p.dtype)


def _shapes(model: DecoupledModel, blocks: Sequence[Block]) -> list[tuple[int, ...]]:
    """Input shape, then each encoder block's output shape (no batch dim), from one eval forward."""
    feats = [_dummy(model)]
    with eval_mode(model), torch.no_grad():
        for b in blocks:
            feats.append(b(feats))
    return [tuple(f.shape[1:]) for f in feats]


def _encoder(model: DecoupledModel) -> list[Block]:
    """The blocks new ones follow: all of them, or all but the SMP decoder for segmentation."""
    blocks = list(model.blocks)
    return blocks[:-1] if model.task == "seg" else blocks


def _head(model: DecoupledModel, shape: tuple[int, ...]) -> nn.Module:
    cfg, kw = model.config, dict(model.config.get("head_kwargs") or {})
    if model.task == "cls":
        return LocalHead(model.method, shape, model.num_classes, projector=cfg.get("projector", "pool"), **kw)
    old = next((b.head for b in model.blocks if isinstance(b.head, tuple(DENSE_HEADS.values()))), None)
    ignore = old.ignore_index if old is not None else cfg.get("ignore_index", 255)
    return dense_head(model.method, shape[0], model.num_classes, ignore_index=ignore, **kw)  # the model's head


def _conv_block(model: DecoupledModel, spec: dict[str, Any], shape: tuple[int, ...], k: int):
    """A generic conv stage reading `shape` (the output of block k) with its head, and its output shape."""
    if len(shape) != 3:
        raise GrowError(f"a conv stage needs a (C, H, W) feature map; block {k} outputs {shape}")
    layers: list[nn.Module] = []
    chans = shape[0]
    for i in range(spec["depth"]):
        stride = spec["stride"] if i == 0 else 1
        layers += [nn.Conv2d(chans, spec["width"], 3, stride, 1, bias=False), nn.BatchNorm2d(spec["width"])]
        layers.append(nn.ReLU(inplace=True))
        chans = spec["width"]
    body = nn.Sequential(*layers)
    with torch.no_grad():
        out = tuple(body.eval()(torch.zeros(1, *shape)).shape[1:])
    return Block(body.train(), _head(model, out)), out


def _source(model: DecoupledModel, parent: dict[str, Any], name: str | None, kwargs: dict[str, Any]):
    """The model whose blocks a stages spec takes: the parent architecture, or `name` built to fit this model."""
    if name is None:
        return build_architecture(**{**rebuild_kwargs(parent), **kwargs})
    keys = ("img_size", "projector", "head_kwargs", "in_channels", "arch", "ignore_index")
    kw = {k: parent[k] for k in keys if k in parent}
    if model.task == "seg":
        kw.pop("projector", None)
    kw.update(task=model.task, method=model.method, num_classes=model.num_classes, **kwargs)
    try:
        return build_architecture(name, **kw)
    except (TypeError, ValueError) as e:
        raise GrowError(f"cannot build {name!r} to take stages from: {e}") from None


def _stage_blocks(model, specs, parent, k0, shape) -> list[tuple[Block, tuple[int, ...]]]:
    """The blocks of consecutive stages specs, each checked to accept the previous output shape."""
    sources: dict[str, tuple[DecoupledModel, list[tuple[int, ...]]]] = {}
    out = []
    for j, spec in enumerate(specs):
        key = json.dumps([spec["name"], spec["kwargs"]], sort_keys=True)
        if key not in sources:
            src = _source(model, parent, spec["name"], spec["kwargs"])
            sources[key] = (src, _shapes(src, _encoder(src)))
        src, shapes = sources[key]
        i, what = spec["stages"][0], spec["name"] or parent.get("name", "the parent model")
        if i >= len(_encoder(src)):
            raise GrowError(f"{what} has no stage {i}: its stages are 0 to {len(_encoder(src)) - 1}")
        if shapes[i] != shape:
            raise GrowError(
                f"shape mismatch: block {k0 + j - 1} outputs {shape}, but stage {i} of {what} expects {shapes[i]}"
            )
        shape = shapes[i + 1]
        out.append((src.blocks[i], shape))
    return out


def _check_decoder(model: DecoupledModel, old_shape: tuple[int, ...], new_shape: tuple[int, ...]) -> list:
    """The SMP decoder's skip slots, once checked that it can read `new_shape` where it read `old_shape`."""
    decoder = model.blocks[-1]
    slots = getattr(decoder.body, "slots", None)
    arch = model.config.get("arch", "segmentation")
    if not decoder.takes_skips or slots is None:
        raise GrowError("the last block is not an SMP decoder built by zoo's SMP adapter: cannot re-attach it")
    if new_shape != old_shape:
        raise GrowError(
            f"cannot re-attach the {arch} decoder: it reads the last encoder block's output of shape {old_shape}, "
            f"the grown encoder ends in {new_shape}; an SMP decoder is built for fixed feature shapes, so the last "
            f"new block must keep {old_shape} (e.g. a conv stage of width {old_shape[0]} and stride 1)"
        )
    return slots


def _check_indices(blocks: Sequence[int], n: int) -> None:
    for k in blocks:
        if not isinstance(k, int) or not -n <= k < n:
            raise GrowError(f"block {k} does not exist: this model has blocks 0 to {n - 1}")


def _set_frozen(model: DecoupledModel, blocks: Sequence[int], frozen: bool) -> DecoupledModel:
    _check_indices(blocks, model.num_blocks)
    for k in blocks:
        model.blocks[k].freeze(frozen)
    return model


def _record(model: DecoupledModel, n_before: int, keep: int | None, added: list[dict[str, Any]]) -> None:
    """Fold this growth (`n_before` encoder blocks, then `keep`, then `added`) into `model`'s record."""
    rec = copy.deepcopy(model._growth) or {"version": 1, "parent": _plain(model.config), "keep": None, "added": []}
    if keep is not None:
        n_parent = n_before - len(rec["added"])  # parent blocks still there before this keep
        if keep <= n_parent:
            rec["keep"], rec["added"] = keep, []
        else:
            rec["added"] = rec["added"][: keep - n_parent]
    rec["added"] += added
    model._growth = _plain(rec)


# -- public ------------------------------------------------------------------------------------------------------
def freeze(model: DecoupledModel, blocks: Sequence[int], frozen: bool = True) -> DecoupledModel:
    """Freeze (`frozen=False`: unfreeze) `blocks` of `model` (indices, negative from the end); returns `model`."""
    return _set_frozen(model, blocks, frozen)


def grow(
    model: DecoupledModel,
    blocks: Sequence[dict[str, Any]] = (),
    *,
    keep: int | None = None,
    freeze: Sequence[int] = (),
) -> DecoupledModel:
    """Append the blocks `blocks` describe (see the module docstring) to `model`, in place; returns `model`.

    `keep=n` first keeps only the first n blocks (classification). `freeze` lists blocks of the grown model to
    freeze. The chosen exit falls back to the last block (`best_block` is reset); `model.growth` records it all.
    """
    if model.method not in LOCAL_METHODS:
        raise GrowError(
            f"grow needs a decoupled method ({', '.join(LOCAL_METHODS)}): under {model.method!r} only the last "
            "block has a head, and new blocks would take over its end-to-end loss"
        )
    specs = [s for spec in blocks for s in _normalise(spec)]
    seg = model.task == "seg"
    if keep is not None:
        if seg:
            raise GrowError("keep is for classification: an SMP decoder reads every encoder stage")
        if not 1 <= keep <= model.num_blocks:
            raise GrowError(f"keep={keep} is not possible: this model has {model.num_blocks} blocks")
    parent = (model._growth or {}).get("parent") or _plain(model.config)
    n_before = len(_encoder(model))
    kept = list(model.blocks)[: keep or model.num_blocks]
    enc = kept[:-1] if seg else kept
    shapes = _shapes(model, enc)
    shape, k = shapes[-1], len(enc)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    new: list[Block] = []
    i = 0
    while i < len(specs):
        if specs[i]["kind"] == "conv":
            block, shape = _conv_block(model, specs[i], shape, k + i - 1)
            new.append(block.to(device, dtype))
            i += 1
            continue
        run = specs[i:]
        run = run[: next((j for j, s in enumerate(run) if s["kind"] != "stages"), len(run))]
        taken = _stage_blocks(model, run, parent, k + i, shape)
        new += [block.to(device, dtype) for block, _ in taken]
        shape = taken[-1][1]
        i += len(run)
    _check_indices(freeze, len(kept) + len(new))  # before anything changes
    if seg and new:  # the decoder's deepest skip moves from the old last encoder block to the new one
        old, deepest = _check_decoder(model, shapes[-1], shape), ("block", len(enc))
        model.blocks[-1].body.slots = [("block", len(enc) + len(new)) if s == deepest else s for s in old]
    model.blocks = nn.ModuleList([*enc, *new, *kept[len(enc) :]])
    _record(model, n_before, keep, specs)
    model.best_block.fill_(model.num_blocks - 1)
    _set_frozen(model, freeze, True)
    return model


def regrow(base: DecoupledModel | None, growth: dict[str, Any]) -> DecoupledModel:
    """Re-apply the record `growth` (a `model.growth`) to `base`, a model as created from `growth["parent"]`
    (None: build it with `zoo.create_model`). Gives the grown architecture, frozen and active as recorded;
    load the weights afterwards."""
    if not isinstance(growth, dict) or growth.get("version") != 1:
        raise GrowError("not a growth record of version 1 (see zoo.grow's module docstring)")
    if base is None:
        base = build_architecture(**rebuild_kwargs(growth["parent"]))
    if base.growth is not None:
        raise GrowError("regrow needs a model as created: this one was already grown, frozen or set_active")
    if _plain(rebuild_kwargs(base.config)) != _plain(rebuild_kwargs(growth["parent"])):
        raise GrowError("the base model's config is not the growth record's parent")
    if growth["keep"] is not None or growth["added"]:
        grow(base, growth["added"], keep=growth["keep"])
    freeze(base, growth["frozen"])
    base.set_active(growth["active"])
    return base


def refresh_optimizers(trainer: Any) -> None:
    """Rebuild a `zoo.train.Trainer`'s optimizers after `grow`, `freeze` or `set_active` changed which blocks train.

    Blocks that keep training keep their optimizer state, new ones start fresh, frozen or inactive ones lose theirs;
    every learning rate continues the trainer's schedule at its current step. Reads `trainer.model`, `cfg`,
    `total_steps`, `step`, `optimizers` and `schedulers`."""
    old = {id(p): state for o in trainer.optimizers for p, state in o.state.items()}
    optims, scheds = build_optimizers(trainer.model, trainer.cfg, trainer.total_steps)
    for o, s in zip(optims, scheds):
        for group in o.param_groups:
            for p in group["params"]:
                if id(p) in old:
                    o.state[p] = old[id(p)]
        s.last_epoch = trainer.step
        for group, base, lam in zip(o.param_groups, s.base_lrs, s.lr_lambdas):
            group["lr"] = base * lam(trainer.step)
        s._last_lr = [group["lr"] for group in o.param_groups]
    trainer.optimizers, trainer.schedulers = optims, scheds
