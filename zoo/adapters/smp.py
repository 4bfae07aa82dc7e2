"""Adapter: a segmentation-models-pytorch (SMP) network becomes a DecoupledModel.

SMP's stage contract: the encoder returns a list of features (the input itself first, then one map per stage;
`tu-` encoders of transformer-style timm models insert an empty 0-channel stride-2 map). One forward of the encoder
is traced module by module; each feature is matched to the module that produced it, the modules are checked to form a
plain chain, and the chain is cut after each feature's producer. Every encoder stage becomes a block with a dense
local head; the decoder and segmentation head form the last block, which reads every block's (detached) output,
rebuilds SMP's feature list and is trained by the task loss (cross-entropy, optionally + Dice).

The decoder needs each stage's feature as a separate tensor, so encoder stages cannot be merged: a segmentation
model has one block per encoder stage plus the decoder block. Change the number of blocks with SMP's
`encoder_depth` (and `decoder_channels` of matching length for Unet-like decoders).
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn

from ..decoupled import BUILD_KEYS, MODEL_KEYS, DecoupledModel, build_decoupled
from ..errors import UserError, check_kwargs
from ..tasks import TASK_DEFAULTS
from ._stages import NotSequentialError, ancestors, chain_calls, check_close, eval_mode, leaf_modules, make_unit, trace
from .timm import CNN_MODULES

__all__ = ["ARCHS", "NATIVE_ENCODERS", "create", "export", "list_supported"]

# SMP architectures whose decoder reads the encoder's feature list (the rule above); names as `smp.create_model`
ARCHS = ("unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus", "pan", "upernet")
# SMP's own encoder classes whose forward is a chain of stages (checked by the adapter's split-equals-whole tests)
NATIVE_ENCODERS = (
    "ResNetEncoder",
    "SENetEncoder",
    "EfficientNetEncoder",
    "MobileNetV2Encoder",
    "MobileOne",
    "DenseNetEncoder",
    "VGGEncoder",
    "XceptionEncoder",
    "InceptionV4Encoder",
    "InceptionResNetV2Encoder",
)
DEFAULT_IMG_SIZE = 64  # size of the dummy forward that measures stage outputs; a multiple of 32

_INFO_KEYS = ("adapter", "encoder_name", "input_size", "mean", "std")
_MODEL_KEYS = MODEL_KEYS
_BUILD_KEYS = BUILD_KEYS


class SegDecoder(nn.Module):
    """The last block: rebuilds SMP's feature list from `[x, h_1, ..., h_k]`, runs decoder + segmentation head.

    `slots[i]` says where feature i comes from: `("input", 1)`, `("block", k)` (h_k) or `("dummy", reduction)` (an
    empty 0-channel map, as SMP's timm-universal encoder inserts for transformer-style models).
    """

    def __init__(self, decoder: nn.Module, segmentation_head: nn.Module, slots: list[tuple[str, int]]):
        super().__init__()
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.slots = [tuple(s) for s in slots]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[0]
        b, _, h, w = x.shape
        features = []
        for kind, v in self.slots:
            if kind == "input":
                features.append(x)
            elif kind == "dummy":
                features.append(x.new_empty(b, 0, h // v, w // v))
            else:
                features.append(feats[v])
        return self.segmentation_head(self.decoder(features))


# -- names -------------------------------------------------------------------------------------------------------
def _native_names() -> list[str]:
    enc = smp.encoders.encoders
    return [n for n in enc if enc[n]["encoder"].__name__ in NATIVE_ENCODERS and not n.startswith("timm-")]


def list_supported(pattern: str | None = None) -> list[str]:
    """SMP encoder names the adapter supports: SMP's own chain-shaped encoders and `tu-` + timm CNN families."""
    names = _native_names() + ["tu-" + n for n in timm.list_models(module=list(CNN_MODULES))]
    return sorted(n for n in set(names) if pattern is None or fnmatch.fnmatch(n, pattern))


def _check_name(name: str, arch: str) -> None:
    if arch.lower() not in ARCHS:
        raise UserError(f"unknown or unsupported SMP architecture {arch!r}; supported: {', '.join(ARCHS)}")
    if name.startswith("tu-") and timm.models.is_model(name[3:]):
        return
    if name in smp.encoders.encoders:
        return
    candidates = list(smp.encoders.encoders) + list_supported()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UserError(f"unknown segmentation encoder {name!r}: not an SMP encoder nor `tu-` + a timm model{hint}")


def _unsupported(name: str, why: str) -> ValueError:
    native = ", ".join(_native_names()[:6])
    return ValueError(
        f"SMP encoder {name!r} cannot be cut into blocks: {why}. Supported: {native}, ... and `tu-` + timm models of "
        f"the families {', '.join(CNN_MODULES)} (see zoo.list_models(task='seg'))"
    )


# -- cutting -----------------------------------------------------------------------------------------------------
def _cut(encoder: nn.Module, img_size: int, in_channels: int, name: str):
    """Blocks (one per encoder stage), their output shapes and the decoder's feature slots."""
    g = torch.Generator().manual_seed(0)  # never touch the global RNG
    x = torch.randn(1, in_channels, img_size, img_size, generator=g)
    try:
        with eval_mode(encoder):
            return _cut_traced(encoder, x)
    except NotSequentialError as e:
        raise _unsupported(name, str(e)) from None


def _cut_traced(encoder: nn.Module, x: torch.Tensor):
    everything = list(encoder.named_modules())[1:]
    calls, feats = trace(encoder, everything, x)
    # each feature's producer: the outermost module whose output *is* the feature tensor
    producers: list[str] = []
    for i, f in enumerate(feats):
        if f is x or f.shape[1] == 0:
            continue
        names = [c.name for c in calls if c.output is f]
        if not names:
            raise NotSequentialError(f"feature {i} is not the output of a module (computed in the encoder's forward)")
        depth = min(n.count(".") for n in names)
        producers += [n for n in names if n.count(".") == depth]
    leaves = leaf_modules(encoder, ancestors(producers))
    leaf_names = {n for n, _ in leaves}
    chain = [c for c in calls if c.name in leaf_names]
    last_feat = max(i for i, c in enumerate(chain) if c.name in producers)
    chain = chain_calls(chain[: last_feat + 1], x)  # modules after the last feature do not feed the decoder
    slots: list[tuple[str, int]] = []
    units, shapes, start = [], [], 0
    h = x
    for f in feats:
        if f is x:
            slots.append(("input", 1))
            continue
        if f.shape[1] == 0:
            slots.append(("dummy", x.shape[-1] // f.shape[-1]))
            continue
        end = max(i for i, c in enumerate(chain) if c.output is f)
        if end < start:
            raise NotSequentialError("its features do not come out in the order of its stages")
        unit = make_unit(chain[start : end + 1])
        with torch.no_grad():
            h = unit(h)
        check_close(h, f)
        units.append(unit)
        shapes.append(tuple(h.shape[1:]))
        slots.append(("block", len(units)))
        start = end + 1
    return units, shapes, slots


# -- building ----------------------------------------------------------------------------------------------------
def _new_smp(arch: str, name: str, num_classes: int, in_channels: int, smp_kw: dict[str, Any]) -> nn.Module:
    kw = {"encoder_weights": None, **smp_kw}  # never download weights unless asked to
    model = smp.create_model(arch, encoder_name=name, in_channels=in_channels, classes=num_classes, **kw)
    if getattr(model, "classification_head", None) is not None:
        raise UserError("aux_params is not supported: every encoder block already has its own classifier")
    return model


def _check_smp_kwargs(arch: str, name: str, smp_kw: dict[str, Any]) -> None:
    """SMP hands keywords its architecture does not name to the encoder, and its own encoders ignore them: an
    unknown keyword would be dropped silently. Only `tu-` (timm) encoders take extra ones (timm checks them)."""
    if name.startswith("tu-"):
        return
    cls = {c.__name__.lower(): c for c in vars(smp).values() if isinstance(c, type) and issubclass(c, nn.Module)}[arch]
    takes = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    takes = [p for p in takes if p not in ("encoder_name", "classes", "in_channels")]
    own = ("num_blocks", "in_channels", "dice", "img_size", *MODEL_KEYS, *BUILD_KEYS)
    check_kwargs(smp_kw, [*own, *takes], f"SMP {arch} on {name}")


def _check_size(size: int, depth: int, name: str, arch: str) -> None:
    """The encoder halves the input `depth` times and the decoder doubles it back: the side must divide 2^depth."""
    step = 2**depth
    if not isinstance(size, int) or size < step or size % step:
        lower, upper = max(step, (int(size) // step) * step), (int(size) // step + 1) * step
        raise UserError(
            f"img_size={size} is not possible for SMP {arch} on {name}: the side must be a positive multiple of "
            f"{step} (2^encoder_depth), e.g. {lower}" + (f" or {upper}" if upper != lower else "")
        )


def _data_info(name: str) -> dict[str, Any]:
    if not name.startswith("tu-"):
        return {}  # SMP's own encoders keep their preprocessing on the hub; nothing to read offline
    cfg = timm.models.get_pretrained_cfg(name[3:])
    if cfg is None:
        return {}
    return {"input_size": list(cfg.input_size), "mean": list(cfg.mean), "std": list(cfg.std)}


def create(
    name: str,
    arch: str = TASK_DEFAULTS["seg"]["arch"],
    method: str = "deinforeg",
    num_classes: int = 21,
    num_blocks: int | None = None,
    in_channels: int = 3,
    dice: bool = False,
    img_size: int | None = None,
    **kw: Any,
) -> DecoupledModel:
    """Cut SMP `arch` with encoder `name` into encoder-stage blocks + a decoder block trained by `method`.

    `num_blocks` can only be the natural count (encoder stages + 1, see the module docstring). `img_size` is the
    dummy forward's size (default 64). Other keyword arguments go to `DecoupledModel` (`exit_policy`, ...),
    `build_decoupled` (`head_kwargs`, `ignore_index`) or `smp.create_model` (`encoder_depth`, `decoder_channels`,
    `encoder_weights`, ...).
    """
    arch = arch.lower()
    _check_name(name, arch)
    for k in _INFO_KEYS + ("task", "projector"):
        kw.pop(k, None)
    model_kw = {k: kw.pop(k) for k in _MODEL_KEYS if k in kw}
    build_kw = {k: kw.pop(k) for k in _BUILD_KEYS if k in kw}
    smp_kw = kw
    _check_smp_kwargs(arch, name, smp_kw)
    size = img_size or DEFAULT_IMG_SIZE
    _check_size(size, smp_kw.get("encoder_depth", 5), name, arch)
    net = _new_smp(arch, name, num_classes, in_channels, smp_kw)
    units, shapes, slots = _cut(net.encoder, size, in_channels, name)
    if num_blocks is not None and num_blocks != len(units) + 1:
        raise UserError(
            f"num_blocks={num_blocks} is not possible: {name} with {arch} has {len(units)} encoder stages, each a "
            f"block because the decoder reads every stage, plus the decoder block: num_blocks must be "
            f"{len(units) + 1} (change encoder_depth to change it)"
        )
    decoder = SegDecoder(net.decoder, net.segmentation_head, slots)
    config = {
        "name": name,
        "task": "seg",
        "arch": arch,
        "method": method,
        "num_classes": num_classes,
        "num_blocks": len(units) + 1,
        "in_channels": in_channels,
        "dice": dice,
        "img_size": size,
        **model_kw,
        **build_kw,
        **smp_kw,
        "adapter": "smp",
        "encoder_name": name,
        **_data_info(name),
    }
    return build_decoupled(
        units,
        shapes,
        nn.Identity(),
        method,
        "seg",
        num_classes,
        decoder=decoder,
        dice=dice,
        config=config,
        **build_kw,
        **model_kw,
    )


# -- export ------------------------------------------------------------------------------------------------------
def export(model: DecoupledModel) -> nn.Module:
    """A plain SMP model carrying `model`'s encoder and decoder weights, in eval mode (outputs equal `model`'s)."""
    config = model.config
    if config.get("adapter") != "smp":
        raise UserError("export needs a model built by the SMP adapter")
    growth = model.growth
    if growth is not None and growth["added"]:
        raise NotImplementedError("a grown model (zoo.grow) has encoder blocks SMP's architecture does not have")
    if model.exit_policy == "adaptive" or model.exit_block != model.num_blocks - 1:
        raise NotImplementedError("export supports the decoder's exit only")
    skip = set(_INFO_KEYS + _MODEL_KEYS + _BUILD_KEYS)
    skip |= {"name", "task", "arch", "method", "num_classes", "num_blocks", "in_channels", "dice", "img_size"}
    smp_kw = {k: v for k, v in config.items() if k not in skip}
    name, in_channels = config["encoder_name"], config["in_channels"]
    net = _new_smp(config["arch"], name, config["num_classes"], in_channels, smp_kw)
    units, _, slots = _cut(net.encoder, config["img_size"], in_channels, name)
    decoder = SegDecoder(net.decoder, net.segmentation_head, slots)
    for body, block in zip([*units, decoder], model.blocks, strict=True):
        body.load_state_dict(block.body.state_dict())
    return net.eval()
