"""Adapter: a segmentation-models-pytorch (SMP) network becomes a DecoupledModel.

SMP's stage contract: the encoder returns a list of features (the input itself first, then one map per stage;
`tu-` encoders of transformer-style timm models insert an empty 0-channel stride-2 map). One forward of the encoder
is traced module by module; each feature is matched to the module that produced it, the modules are checked to form a
plain chain, and the chain is cut after each feature's producer: one *unit* per encoder stage, plus the decoder and
segmentation head as the last unit, trained by the task loss (cross-entropy, optionally + Dice).

Units are grouped into blocks as timm models' are (`num_blocks=K` in equal contiguous groups, later ones larger, or
`block_units=[..]`; K from 2 to stages + 1). The
decoder reads every stage's feature, so a block of several stages hands on all of them (`zoo.decoupled.Features`,
each detached at the block boundary) and its local head reads the deepest; the last block holds the decoder and the
deepest stages (InfoPro's cut, K = 2 on a ResNet: stem, layer1, layer2 | layer3, layer4, decoder). Encoder blocks get
a dense local head chosen by `head` (zoo.heads.dense_head; its options may be given flat, `head="decoding",
recon=0.1`, or as `head_kwargs`).

Defaults: K = 2 with the decoding head (DEFAULT_NUM_BLOCKS, DEFAULT_HEAD), chosen on validation in a design screen
(leaderboards/explore/seg_sweep: shapes, Unet-resnet18, 1 seed, 450 steps; DeInfoReg 60.49 validation mIoU at
K = 2 decoding against 43.11 for the first layout and 56.84 for BP). The first layout, one block per stage plus the
decoder with pointwise heads, is `num_blocks=stages + 1, head="pointwise"`. Every model's config records the head
it was built with; a saved config without one predates the switch and rebuilds with `pointwise`
(`LEGACY_HEAD`, applied by zoo._build.rebuild_kwargs), and every saved config records its `num_blocks`.
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

from ..decoupled import BUILD_KEYS, MODEL_KEYS, DecoupledModel, Features, build_decoupled, merge_units
from ..errors import UserError, check_kwargs
from ..heads import DENSE_HEADS, dense_head_options
from ..tasks import TASK_DEFAULTS
from ._stages import NotSequentialError, ancestors, chain_calls, check_close, eval_mode, leaf_modules, make_unit, trace
from .timm import CNN_MODULES

__all__ = ["ARCHS", "NATIVE_ENCODERS", "SegDecoder", "StageGroup", "create", "export", "list_supported"]

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
DEFAULT_NUM_BLOCKS = 2  # InfoPro's cut: encoder blocks up to the middle | the deepest stages + decoder
DEFAULT_HEAD = "decoding"  # encoder blocks' dense local head when `head` is not given
LEGACY_HEAD = "pointwise"  # the head of a saved config that records none (saved before DEFAULT_HEAD was decoding)

_INFO_KEYS = ("adapter", "encoder_name", "input_size", "mean", "std")
_MODEL_KEYS = MODEL_KEYS
_BUILD_KEYS = BUILD_KEYS


class StageGroup(nn.Module):
    """Consecutive encoder stages as one block body: returns every stage's feature (`Features`, shallowest first),
    as the decoder reads each of them."""

    def __init__(self, stages: list[nn.Module]):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.num_outputs = len(stages)

    def forward(self, h: torch.Tensor) -> Features:
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return Features(out)


class SegDecoder(nn.Module):
    """The last block: runs its own encoder `stages` (the deepest ones, if any) on the deepest feature so far,
    rebuilds SMP's feature list from `[x, h_1, ..., h_k]` and runs decoder + segmentation head.

    `slots[i]` says where feature i comes from: `("input", 1)`, `("block", k)` (h_k, a tensor), `("block", k, j)`
    (member j of h_k, a `Features`), `("own", j)` (this block's stage j) or `("dummy", reduction)` (an empty
    0-channel map, as SMP's timm-universal encoder inserts for transformer-style models).
    """

    def __init__(
        self,
        decoder: nn.Module,
        segmentation_head: nn.Module,
        slots: list[tuple],
        stages: list[nn.Module] | None = None,
    ):
        super().__init__()
        self.decoder = decoder
        self.segmentation_head = segmentation_head
        self.stages = nn.ModuleList(stages or [])  # empty: no parameters, the natural layout's keys unchanged
        self.slots = [tuple(s) for s in slots]

    def forward(self, feats: list[torch.Tensor | Features]) -> torch.Tensor:
        x = feats[0]
        b, _, h, w = x.shape
        own, t = [], feats[-1]
        for stage in self.stages:
            t = stage(t[-1] if isinstance(t, Features) else t)
            own.append(t)
        features = []
        for kind, *v in self.slots:
            if kind == "input":
                features.append(x)
            elif kind == "dummy":
                features.append(x.new_empty(b, 0, h // v[0], w // v[0]))
            elif kind == "own":
                features.append(own[v[0]])
            else:
                f = feats[v[0]]
                features.append(f[v[1]] if len(v) > 1 else f)
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


# -- grouping ----------------------------------------------------------------------------------------------------
def _sizes(stages: int, num_blocks: Any, block_units: Any, name: str, arch: str) -> list[int]:
    """Units per block (the decoder is the last unit): natural, `num_blocks` equal groups, or `block_units`."""
    n = stages + 1
    what = f"{name} with {arch} has {stages} encoder stages + the decoder = {n} units"
    if block_units is not None:
        try:
            sizes = [int(u) for u in block_units]
        except (TypeError, ValueError):
            sizes = []
        if len(sizes) < 2 or sum(sizes) != n or min(sizes) < 1 or num_blocks not in (None, len(sizes)):
            raise UserError(
                f"block_units={block_units} is not possible: {what}; give 2 to {n} blocks of at least one unit "
                f"each, summing to {n}" + (f" (and num_blocks={num_blocks} of them)" if num_blocks is not None else "")
            )
        return sizes
    if num_blocks is None:
        num_blocks = DEFAULT_NUM_BLOCKS
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or not 2 <= num_blocks <= n:
        raise UserError(
            f"num_blocks={num_blocks} is not possible: {what}; num_blocks runs from 2 (an encoder block and the "
            f"decoder block) to {n} (one block per stage)"
        )
    _, ends = merge_units([nn.Identity()] * n, num_blocks)
    return [e - s for s, e in zip([-1, *ends], ends)]


def _group(units, shapes, slots, sizes: list[int], decoder: nn.Module, segmentation_head: nn.Module):
    """Encoder block bodies (a stage, or a StageGroup), their deepest output shapes, and the decoder block's body
    holding the remaining stages, with the decoder's slots re-pointed at where each stage's feature now lives."""
    bodies, out_shapes, where, start = [], [], {}, 0
    for g, size in enumerate(sizes[:-1]):
        if size == 1:
            bodies.append(units[start])
            where[start] = ("block", g + 1)
        else:
            bodies.append(StageGroup(units[start : start + size]))
            where.update({start + j: ("block", g + 1, j) for j in range(size)})
        out_shapes.append(shapes[start + size - 1])
        start += size
    where.update({i: ("own", i - start) for i in range(start, len(units))})
    regrouped = [where[v - 1] if kind == "block" else (kind, v) for kind, v in slots]
    return bodies, out_shapes, SegDecoder(decoder, segmentation_head, regrouped, units[start:])


def _head_kwargs(head_kwargs: dict[str, Any] | None, flat: dict[str, Any], in_channels: int) -> dict[str, Any]:
    """`head_kwargs` with the flat head options (`head=decoding,recon=0.1` from --model-kwargs) merged in, checked
    against the chosen head whatever the method (bp builds no head, but the same flags must mean the same model)."""
    hk = {**(head_kwargs or {}), **flat}
    head = hk.setdefault("head", DEFAULT_HEAD)  # recorded in the config, see LEGACY_HEAD
    if head not in DENSE_HEADS:
        raise UserError(f"unknown dense head {head!r}; valid choices: {', '.join(DENSE_HEADS)}")
    check_kwargs(hk, dense_head_options(head), f"the {head} dense head")
    if head == "decoding" and float(hk.get("recon", 0.0)) > 0:
        hk.setdefault("image_channels", in_channels)
    return hk


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
    own = ("num_blocks", "block_units", "in_channels", "dice", "img_size", *MODEL_KEYS, *BUILD_KEYS)
    own += tuple(dense_head_options())
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
    block_units: list[int] | None = None,
    **kw: Any,
) -> DecoupledModel:
    """Cut SMP `arch` with encoder `name` into blocks of encoder stages + a decoder block trained by `method`.

    `num_blocks` (2 to stages + 1; None: DEFAULT_NUM_BLOCKS = 2) or `block_units` (units per block, the decoder
    counting as the last unit) group the stages, see the module docstring. `img_size` is the dummy forward's size
    (default 64). Dense head options (`head`, default DEFAULT_HEAD = "decoding"; `recon`, `width`, ... see
    zoo.heads.dense_head_options) may be given flat or in `head_kwargs`. The first layout is
    `num_blocks=stages + 1, head="pointwise"`. Other keyword arguments go to `DecoupledModel` (`exit_policy`, ...),
    `build_decoupled` (`ignore_index`) or `smp.create_model` (`encoder_depth`, `decoder_channels`, ...).
    """
    arch = arch.lower()
    _check_name(name, arch)
    for k in _INFO_KEYS + ("task", "projector"):
        kw.pop(k, None)
    model_kw = {k: kw.pop(k) for k in _MODEL_KEYS if k in kw}
    build_kw = {k: kw.pop(k) for k in _BUILD_KEYS if k in kw}
    flat_head = {k: kw.pop(k) for k in dense_head_options() if k in kw}
    build_kw["head_kwargs"] = _head_kwargs(build_kw.get("head_kwargs"), flat_head, in_channels)
    smp_kw = kw
    _check_smp_kwargs(arch, name, smp_kw)
    size = img_size or DEFAULT_IMG_SIZE
    _check_size(size, smp_kw.get("encoder_depth", 5), name, arch)
    net = _new_smp(arch, name, num_classes, in_channels, smp_kw)
    units, shapes, slots = _cut(net.encoder, size, in_channels, name)
    sizes = _sizes(len(units), num_blocks, block_units, name, arch)
    bodies, out_shapes, decoder = _group(units, shapes, slots, sizes, net.decoder, net.segmentation_head)
    config = {
        "name": name,
        "task": "seg",
        "arch": arch,
        "method": method,
        "num_classes": num_classes,
        "num_blocks": len(sizes),
        **({"block_units": sizes} if block_units is not None else {}),
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
        bodies,
        out_shapes,
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
    skip |= {"block_units"}
    smp_kw = {k: v for k, v in config.items() if k not in skip}
    name, in_channels = config["encoder_name"], config["in_channels"]
    net = _new_smp(config["arch"], name, config["num_classes"], in_channels, smp_kw)
    units, shapes, slots = _cut(net.encoder, config["img_size"], in_channels, name)
    sizes = _sizes(len(units), config.get("num_blocks"), config.get("block_units"), name, config["arch"])
    bodies, _, decoder = _group(units, shapes, slots, sizes, net.decoder, net.segmentation_head)
    for body, block in zip([*bodies, decoder], model.blocks, strict=True):
        body.load_state_dict(block.body.state_dict())
    return net.eval()
