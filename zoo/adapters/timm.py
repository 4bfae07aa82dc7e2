"""Adapter: a timm classifier becomes a DecoupledModel, cut at its natural stages.

CNNs (ResNet/ResNeXt/ResNet-D, RegNet, ConvNeXt, EfficientNet, MobileNetV3, ...) are cut where timm's own
`feature_info` says a stage ends: one forward of `forward_features` is traced module by module, checked to be a plain
chain, and split after each feature module with reduction ≥ 4 (the stem is no block of its own: it joins block 1;
anything after the last stage, e.g. EfficientNet's `conv_head`/`bn2`, joins the last block). ViT/DeiT are cut by
transformer depth: block 1 holds the embedding (`patch_embed → _pos_embed → patch_drop → norm_pre`) and the first
transformer blocks. Under `bp` the last block's head runs timm's own `forward_head` (after the final `norm` for
ViTs), so the stacked blocks compute exactly what the timm model computes. `export` gives a plain timm model back.

The same trace covers most of timm's other families: a parameter-free layout change between modules (LeViT's
map-to-tokens) is replayed (`_stages.Layout`); an opening that is no chain of module calls (a ViT-like's class token
and position embedding: BEiT, Hiera) becomes the first block's `Prefix`; a feature point inside a block whose
forward branches (Xception) moves to the end of that block; isotropic models (one reduction throughout) are cut by
depth into 4 blocks by default, like ViTs. PiT, XCiT and CoaT-Lite, whose stages pass more than one tensor, have
their own stage cuts (`_timm_tokens`). `FAMILIES` lists the timm model modules verified one model each by
`tests/test_timm_families.py`; models of other modules are tried by the same rules and refused with the reason
(HRNet: parallel multi-resolution branches).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d

from ..decoupled import BUILD_KEYS, MODEL_KEYS, DecoupledModel, build_decoupled, merge_units
from ..errors import UserError, check_kwargs
from ..heads import GlobalPool, LocalHead
from ._stages import (
    NotSequentialError,
    Prefix,
    ancestors,
    chain_calls,
    check_close,
    eval_mode,
    leaf_modules,
    make_unit,
    trace,
)
from ._timm_tokens import TOKEN_CUTS

__all__ = ["CNN_MODULES", "CUTS", "FAMILIES", "VIT_MODULES", "create", "export", "list_supported"]

# the families the adapter was first built on (SMP's `tu-` encoders use the CNN ones)
CNN_MODULES = ("resnet", "regnet", "convnext", "efficientnet", "mobilenetv3")
VIT_MODULES = ("vision_transformer", "deit")
VIT_DEFAULT_BLOCKS = 4
# timm model modules (families) whose smallest model converts, checked by tests/test_timm_families.py; a model of
# another module is tried by the same rules and refused with the reason
FAMILIES = tuple(
    """
    beit byoanet byobnet coat convmixer convnext cpubone csatv2 cspnet cspnext davit deit densenet dla dpn edgenext
    efficientformer efficientformer_v2 efficientnet efficientvit_mit efficientvit_msra fasternet fastvit focalnet
    gcvit ghostnet hardcorenas hgnet hiera hieradet_sam2 iformer inception_next inception_resnet_v2 inception_v3
    inception_v4 lcnetv2 levit lowformer mambaout maxxvit metaformer mlp_mixer mobilenetv3 mobilevit naflexvit
    nextvit nfnet pit pvt_v2 rdnet regnet repghost repvit res2net resnest resnet resnetv2 rexnet senet sequencer
    shvit sknet starnet swiftformer swin_transformer swin_transformer_v2 swin_transformer_v2_cr tiny_vit tresnet vgg
    vision_transformer vision_transformer_hybrid vision_transformer_relpos vision_transformer_sam vitamin vovnet
    xception xception_aligned xcit
    """.split()
)
# the units `num_blocks` merges: a CNN's stages, or every module inside its stages (a ResNet's residual blocks);
# a ViT's units are its transformer blocks either way
CUTS = ("stage", "block")

# config keys that describe the data the model expects; recorded for users, ignored when rebuilding
_INFO_KEYS = ("adapter", "timm_name", "input_size", "mean", "std", "interpolation", "crop_pct")
_MODEL_KEYS = MODEL_KEYS
_BUILD_KEYS = BUILD_KEYS
# head modules kept by `export` for a decoupled model: they pool and reshape but do not transform features
_POOL_TYPES = (SelectAdaptivePool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


class _Owned(nn.Module):
    """Runs methods of the original timm model (`steps`) on modules and parameters this block owns.

    Keeps timm's own code path (e.g. ViT's `_pos_embed`, `forward_head`) while the weights live in one block. The
    timm model is held in a list so it is not registered: its other modules belong to other blocks.
    """

    def __init__(
        self,
        owner: nn.Module,
        steps: Sequence[str],
        modules: dict[str, nn.Module],
        params: dict[str, nn.Parameter] | None = None,
    ):
        super().__init__()
        self.parts = nn.ModuleDict({n.replace(".", "_"): m for n, m in modules.items()})
        for n, p in (params or {}).items():
            self.register_parameter(n, p)
        self.steps = tuple(steps)
        self._owner = [owner]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owner = self._owner[0]
        owner.training = self.training  # timm reads the root flag (e.g. head dropout); sync just that flag
        for s in self.steps:
            x = getattr(owner, s)(x)
        return x


@dataclass
class _Cut:
    units: list[nn.Module]  # smallest blocks, in order
    shapes: list[tuple[int, ...]]  # each unit's output shape without the batch dim
    head: nn.Module  # timm's head under bp
    head_names: list[str]  # the timm modules the head runs
    pool: nn.Module | None  # how local heads pool token outputs (None: spatial mean)
    default_blocks: int | None = None  # units are transformer blocks: merge them into this many by default


# -- names -------------------------------------------------------------------------------------------------------
def _module_of(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def list_supported(pattern: str | None = None) -> list[str]:
    """timm classifiers in the supported families (`fnmatch` wildcards, e.g. `resnet*`). A family converts as a whole
    as a rule; a variant built differently (CoaT's non-Lite models) is refused when created, with the reason."""
    names = timm.list_models(pattern or "", module=list(FAMILIES))
    return sorted(set(names))


def _check_name(name: str) -> None:
    if timm.models.is_model(name):
        return
    from .._registry import registered_names

    close = difflib.get_close_matches(name, registered_names() + timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise UserError(f"unknown model {name!r}: not a zoo model nor a timm architecture{hint}")


# -- cutting -----------------------------------------------------------------------------------------------------
def _dummy(img_size: int, in_chans: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)  # never touch the global RNG
    return torch.randn(1, in_chans, img_size, img_size, generator=g)


def _head_modules(model: nn.Module, feats: torch.Tensor, candidates: list[tuple[str, nn.Module]]):
    calls, _ = trace(model.forward_head, candidates, feats)
    seen: dict[str, nn.Module] = {}
    for c in calls:
        seen.setdefault(c.name, c.module)
    return seen


def _unsupported(name: str, why: str) -> ValueError:
    return ValueError(
        f"timm model {name!r} cannot be cut into blocks: {why}. {len(FAMILIES)} timm families are supported "
        f"({', '.join(FAMILIES[:8])}, ...): zoo.list_models() lists their models"
    )


def _cut_cnn(model: nn.Module, x: torch.Tensor, name: str, per_block: bool = False) -> _Cut:
    info = getattr(model, "feature_info", None)
    if not info:
        raise _unsupported(name, "it has no feature_info to say where its stages end")
    feat_names = [f["module"] for f in info]
    reductions = [f["reduction"] for f in info]
    # the stem (reduction 2) has no loss of its own: it joins the first real stage
    stages = [n for n, r in zip(feat_names, reductions) if r >= 4] or feat_names
    try:
        return _chain_cut(model, x, name, feat_names, stages, per_block)
    except NotSequentialError as exact:
        # a feature point inside a block whose forward branches (Xception's act3 before the shortcut adds): cut
        # after the enclosing module instead, one level up at a time, as long as the coarser modules form a chain
        for depth in range(max(len(n.split(".")) for n in stages) - 1, 0, -1):
            try:
                return _chain_cut(model, x, name, _snap(feat_names, depth), _snap(stages, depth), per_block)
            except NotSequentialError:
                continue
        raise exact


def _snap(names: list[str], depth: int) -> list[str]:
    """Each dotted name cut to its first `depth` parts (`blocks.1.stack.act3` → `blocks.1`), duplicates dropped."""
    return list(dict.fromkeys(".".join(n.split(".")[:depth]) for n in names))


def _split_prefix(model: nn.Module, calls: list, x: torch.Tensor, stages: list[str]) -> tuple[Prefix | None, list]:
    """(opening, chain): the calls from the first one on whose outputs feed each other; whatever forward_features
    does before it (modules and the model's own parameters: class token, position embedding) becomes a Prefix.
    The opening may hold no stage: a model whose stages do not chain stays refused, with the reason."""
    try:
        chain = chain_calls(calls, x)
        if not model._parameters:
            return None, chain
        whole = NotSequentialError("it has parameters outside its modules, used between stages")
    except NotSequentialError as e:
        whole = e
    first_stage = min(
        (i for i, c in enumerate(calls) if any(c.name == n or c.name.startswith(n + ".") for n in stages)),
        default=len(calls) - 1,
    )
    for i in range(1, min(first_stage, len(calls) - 1) + 1):
        try:
            chain = chain_calls(calls[i:], calls[i].input)
        except NotSequentialError as e:
            if i + e.at > whole.at:  # report where the chain that got furthest breaks
                whole = NotSequentialError(str(e), i + e.at)
            continue
        mods = {c.name: c.module for c in calls[:i]}
        prefix = Prefix(model, "forward_features", calls[i].module, mods, dict(model._parameters))
        prefix.names = list(mods)
        return prefix, chain
    raise whole


def _learning_ends(chain: list, ends: list[int]) -> list[int]:
    """Cut points such that every unit has weights: a stage without any (VGG's last max-pool, whose classifier MLP
    is timm's head) joins the unit before it, or the one after it if it comes first."""
    has = lambda a, b: any(p.requires_grad for c in chain[a : b + 1] for p in c.module.parameters())  # noqa: E731
    out: list[int] = []
    for e in ends:
        start = out[-1] + 1 if out else 0
        if has(start, e) or not out:
            out.append(e)
        else:
            out[-1] = e  # merge into the previous unit
    if len(out) > 1 and not has(0, out[0]):
        out.pop(0)  # a first unit without weights joins the second
    return out


def _chain_cut(
    model: nn.Module, x: torch.Tensor, name: str, feat_names: list[str], stages: list[str], per_block: bool
) -> _Cut:
    # cut="block": open each stage module and cut after every module in it (a ResNet's residual blocks)
    leaves = leaf_modules(model, ancestors(feat_names) | (set(stages) if per_block else set()))
    calls, out = trace(model.forward_features, leaves, x)
    prefix, chain = _split_prefix(model, calls, x, stages)
    order = [c.name for c in chain]
    cuts = [n for s in stages for n in order if n == s or n.startswith(s + ".")] if per_block else stages
    missing = [n for n in stages if not any(c == n or c.startswith(n + ".") for c in order)]
    if missing:
        raise NotSequentialError(f"feature modules {missing} are not on the chain of its forward pass")
    ends = sorted(order.index(n) for n in cuts)
    ends[-1] = len(chain) - 1  # what follows the last stage (conv_head, final norm) joins the last block
    ends = _learning_ends(chain, ends)
    units, shapes, start = [], [], 0
    h = x
    for e in ends:
        unit = make_unit(chain[start : e + 1])
        if prefix is not None and start == 0:
            unit = nn.Sequential(OrderedDict(prefix=prefix, **dict(unit.named_children())))
        with torch.no_grad():
            h = unit(h)
        units.append(unit)
        shapes.append(tuple(h.shape[1:]))
        start = e + 1
    check_close(h, out)
    if len(units) < 2:
        raise NotSequentialError(f"timm's feature_info gives one stage ({', '.join(stages)}): nothing to cut between")
    taken = set(order) | (set(prefix.names) if prefix is not None else set())
    head_mods = _head_modules(model, out, [(n, m) for n, m in leaves if n not in taken])
    head = _Owned(model, ("forward_head",), head_mods)
    # token outputs (LeViT's stages): local heads average the tokens; a CNN has no prefix (class) tokens
    pool = GlobalPool("avg", getattr(model, "num_prefix_tokens", 0)) if any(len(s) == 2 for s in shapes) else None
    # an isotropic model (every feature at one reduction: ViT-likes, ConvMixer, MLP-Mixer) is cut by depth like a ViT
    isotropic = len({f["reduction"] for f in model.feature_info}) == 1 and len(units) > VIT_DEFAULT_BLOCKS
    return _Cut(units, shapes, head, list(head_mods), pool, VIT_DEFAULT_BLOCKS if isotropic else None)


def _cut_vit(model: nn.Module, x: torch.Tensor, name: str) -> _Cut:
    children = list(model.named_children())
    calls, out = trace(model.forward_features, children, x)
    called = [c.name for c in calls]
    if "blocks" not in called or "norm" not in called:
        raise _unsupported(name, "its forward_features does not run `blocks` then `norm`")
    before = dict(children[: [n for n, _ in children].index("blocks")])
    embed = _Owned(model, ("patch_embed", "_pos_embed", "patch_drop", "norm_pre"), before, dict(model._parameters))
    blocks = list(model.blocks)
    units: list[nn.Module] = [nn.Sequential(OrderedDict(embed=embed, blocks_0=blocks[0]))]
    units += [nn.Sequential(OrderedDict({f"blocks_{i}": b})) for i, b in enumerate(blocks) if i > 0]
    shapes, h = [], x
    with torch.no_grad():
        for unit in units:
            h = unit(h)
            shapes.append(tuple(h.shape[1:]))
        normed = model.norm(h)
    check_close(normed, out)
    rest = [(n, m) for n, m in children if n not in before and n != "blocks"]
    head_mods = {"norm": model.norm, **_head_modules(model, out, rest)}
    head = _Owned(model, ("norm", "forward_head"), head_mods)
    if getattr(model, "global_pool", "token") == "token":
        pool = GlobalPool("token")
    else:
        pool = GlobalPool("avg", getattr(model, "num_prefix_tokens", 1))
    return _Cut(units, shapes, head, list(head_mods), pool, VIT_DEFAULT_BLOCKS)


def _cut_tokens(model: nn.Module, x: torch.Tensor, name: str) -> _Cut:
    """PiT, XCiT, CoaT-Lite: stage units from `_timm_tokens`, checked against timm's forward on the logits."""
    try:
        units, head, pool = TOKEN_CUTS[_module_of(name)](model, x)
    except ValueError as e:
        raise _unsupported(name, str(e)) from None
    shapes, h = [], x
    with torch.no_grad():
        for unit in units:
            h = unit(h)
            shapes.append(tuple(h.shape[1:]))
        calls, got = trace(head, list(head.parts.items()), h)
        check_close(got, model(x))
    called = {c.name for c in calls}
    for n in [n for n in head.parts if n not in called]:
        del head.parts[n]  # e.g. CoaT's unused aggregate: no parameters that nothing trains
    by_depth = _module_of(name) == "xcit"  # one unit per transformer block, merged like a ViT's
    return _Cut(units, shapes, head, list(head.parts), pool, VIT_DEFAULT_BLOCKS if by_depth else None)


def _is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm"))


def _cut(model: nn.Module, img_size: int, name: str, cut: str = "stage") -> _Cut:
    if cut not in CUTS:
        raise UserError(f"unknown cut {cut!r}; valid choices: {', '.join(CUTS)}")
    x = _dummy(img_size, getattr(model, "in_chans", 3) or 3)
    try:
        with eval_mode(model):
            if _module_of(name) in TOKEN_CUTS:
                return _cut_tokens(model, x, name)
            return _cut_vit(model, x, name) if _is_vit(model) else _cut_cnn(model, x, name, cut == "block")
    except NotSequentialError as e:
        raise _unsupported(name, str(e)) from None


# -- building ----------------------------------------------------------------------------------------------------
def _new_timm(name: str, num_classes: int, img_size: int | None, timm_kwargs: dict[str, Any]) -> nn.Module:
    kw = dict(pretrained=False, num_classes=num_classes, **timm_kwargs)
    sized = dict(kw, img_size=img_size) if img_size is not None else kw
    try:  # ViTs size their position embedding by img_size; CNNs take any size and have no such argument
        return timm.create_model(name, **sized)
    except TypeError:
        # what the model takes is read from its class's signature, never from the message
        explicit, passes_on = _timm_keywords(name, num_classes)
        if img_size is not None and "img_size" not in explicit:
            sized = kw  # only img_size may have been refused: try again without it
        elif not passes_on and set(timm_kwargs) <= explicit:
            raise  # every keyword is the model's: the TypeError came from inside its constructor, a bug
    extra = [k for k in timm_kwargs if k not in explicit]
    if not passes_on:
        own = ("num_blocks", "projector", "pretrained_backbone", "img_size", "cut", "block_units")
        check_kwargs(timm_kwargs, [*own, *MODEL_KEYS, *BUILD_KEYS, *explicit], f"timm model {name!r}")
        return timm.create_model(name, **sized)
    try:  # the class passes **kwargs on (RegNet to its config): its signature cannot name every keyword it takes
        return timm.create_model(name, **sized)
    except TypeError:
        if not extra:
            raise
        with torch.device("meta"):  # without the keywords its signature does not name: a TypeError here is a bug
            timm.create_model(name, **{k: v for k, v in sized.items() if k not in extra})
        takes = ", ".join(sorted(explicit))
        raise UserError(
            f"timm model {name!r} takes no keyword {', '.join(extra)}; its constructor names {takes} and passes "
            "other keywords on, which refused these"
        ) from None


def _timm_keywords(name: str, num_classes: int) -> tuple[set[str], bool]:
    """The keywords timm model `name`'s class names in its signature, and whether it also takes **kwargs; the class
    is found by building the model on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        cls = type(timm.create_model(name, pretrained=False, num_classes=num_classes))
    params = list(inspect.signature(cls.__init__).parameters.values())
    passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD}
    return named - {p.name for p in params if p.kind is inspect.Parameter.VAR_POSITIONAL}, passes_on


def _load_backbone(model: nn.Module, path: str) -> None:
    """Initialise from a local timm checkpoint; a classifier of another size is left at its fresh init."""
    state = timm.models.load_state_dict(path)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    own = model.state_dict()
    if filter_fn is not None and any(k in own and own[k].shape != v.shape for k, v in state.items()):
        state = filter_fn(state, model)  # e.g. resamples a ViT position embedding to this img_size
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    is_head = lambda k: any(k.startswith(h + ".") for h in heads)  # noqa: E731
    state = {k: v for k, v in state.items() if not (is_head(k) and k in own and own[k].shape != v.shape)}
    missing, _ = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not is_head(k)]
    if missing:
        raise UserError(f"checkpoint {path} does not fit {type(model).__name__}: missing {missing[:5]}")


def _data_info(model: nn.Module) -> dict[str, Any]:
    try:
        cfg = timm.data.resolve_data_config({}, model=model)
    except Exception:  # a model without pretrained_cfg: nothing to record
        return {}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in _INFO_KEYS}


def create(
    name: str,
    method: str = "deinforeg",
    num_classes: int = 1000,
    num_blocks: int | None = None,
    projector: str = "pool",
    pretrained_backbone: str | None = None,
    img_size: int | None = None,
    cut: str = "stage",
    block_units: Sequence[int] | None = None,
    **kw: Any,
) -> DecoupledModel:
    """Cut timm classifier `name` into blocks trained by `method` (see the module docstring for the rules).

    `num_blocks` merges adjacent stages (default: every stage of a CNN, 4 for ViTs); `pretrained_backbone` is a
    local timm checkpoint file; `img_size` sizes a ViT and the dummy forward that measures block outputs.
    `cut="block"` makes every residual block (every module of a CNN stage) a unit instead of every stage, so blocks
    (and pipeline stages) can end inside a stage; `block_units` gives the units per block instead of `num_blocks`
    (e.g. what zoo.pipeline.partition.choose_cuts picked).
    Other keyword arguments go to `DecoupledModel` (`exit_policy`, ...), `build_decoupled` (`head_kwargs`,
    `ignore_index`) or `timm.create_model` (`drop_path_rate`, ...).
    """
    _check_name(name)
    for k in _INFO_KEYS:
        kw.pop(k, None)
    kw.pop("task", None)
    kw.pop("arch", None)
    model_kw = {k: kw.pop(k) for k in _MODEL_KEYS if k in kw}
    build_kw = {k: kw.pop(k) for k in _BUILD_KEYS if k in kw}
    timm_kw = kw  # whatever is left is the timm model's business
    model = _new_timm(name, num_classes, img_size, timm_kw)
    if pretrained_backbone:
        _load_backbone(model, pretrained_backbone)
    size = img_size or int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    cut_kind = cut
    cut = _cut(model, size, name, cut_kind)
    if num_blocks is None and block_units is None and cut.default_blocks:
        num_blocks = min(cut.default_blocks, len(cut.units))
    bodies, ends = merge_units(cut.units, num_blocks, block_units)
    config = {
        "name": name,
        "task": "cls",
        "method": method,
        "num_classes": num_classes,
        "num_blocks": len(bodies),
        "img_size": size,
        "projector": projector,
        **({"cut": cut_kind} if cut_kind != "stage" else {}),
        **({"block_units": [int(b) for b in block_units]} if block_units is not None else {}),
        **model_kw,
        **build_kw,
        **timm_kw,
        "adapter": "timm",
        "timm_name": name,
        **_data_info(model),
    }
    return build_decoupled(
        bodies,
        [cut.shapes[e] for e in ends],
        cut.head,
        method,
        "cls",
        num_classes,
        projector=projector,
        pool=cut.pool,
        config=config,
        **build_kw,
        **model_kw,
    )


# -- export ------------------------------------------------------------------------------------------------------
def _rebuild(config: dict[str, Any]) -> tuple[nn.Module, list[nn.Module], _Cut]:
    """A fresh timm model from `config`, with its blocks cut exactly as the decoupled model's were."""
    skip = set(_INFO_KEYS + _MODEL_KEYS + _BUILD_KEYS) | {"name", "task", "method", "num_classes", "num_blocks"}
    skip |= {"img_size", "projector", "arch", "cut", "block_units"}
    timm_kw = {k: v for k, v in config.items() if k not in skip}
    name = config["timm_name"]
    img_size = config["img_size"]
    model = _new_timm(name, config["num_classes"], img_size, timm_kw)
    cut = _cut(model, img_size, name, config.get("cut", "stage"))
    bodies, _ = merge_units(cut.units, config["num_blocks"], config.get("block_units"))
    return model, bodies, cut


def _swap_head(model: nn.Module, head_names: list[str], new_fc: nn.Module) -> None:
    """Make timm's `forward_head` compute `new_fc(pool(h))`: the classifier is swapped, feature transforms dropped."""
    fc = model.pretrained_cfg.get("classifier")
    if not isinstance(fc, str):
        raise NotImplementedError(f"export of a decoupled model with several classifiers ({fc}) is not supported")

    def visit(name: str, module: nn.Module) -> None:
        if name == fc:
            model.set_submodule(name, new_fc)
        elif isinstance(module, _POOL_TYPES):
            return
        elif fc.startswith(name + ".") or (module._modules and not module._parameters):
            for n, child in module.named_children():
                visit(f"{name}.{n}", child)
        else:  # a norm, conv or activation on features that decoupled training never trained
            model.set_submodule(name, nn.Identity())

    for n in head_names:
        visit(n, model.get_submodule(n))


def export(model: DecoupledModel) -> nn.Module:
    """A plain timm model carrying `model`'s weights, in eval mode.

    Under bp it is the original architecture. For a decoupled method the last block's local head replaces timm's
    classifier (`Sequential(projector MLP, classifier)` after timm's own pooling; norms and convs of the head that
    decoupled training never used are dropped), so the outputs equal `model`'s. Exits before the last block are
    not supported yet.
    """
    config = model.config
    if config.get("adapter") != "timm":
        raise UserError("export needs a model built by the timm adapter")
    growth = model.growth
    if growth is not None and (growth["added"] or growth["keep"] is not None):
        raise NotImplementedError("a grown model (zoo.grow) has blocks timm's architecture does not have")
    if model.exit_policy == "adaptive" or model.exit_block != model.num_blocks - 1:
        raise NotImplementedError("export supports the last block's exit only")
    timm_model, bodies, cut = _rebuild(config)
    for body, block in zip(bodies, model.blocks, strict=True):
        body.load_state_dict(block.body.state_dict())
    head = model.blocks[-1].head
    if model.method == "bp":
        cut.head.load_state_dict(head.module.state_dict())
    else:
        assert isinstance(head, LocalHead)
        if head.projector.kind != "pool":
            raise NotImplementedError("export needs the pooling projector (timm pools before its classifier)")
        fc = nn.Sequential(copy.deepcopy(head.projector.mlp), copy.deepcopy(head.classifier))
        _swap_head(timm_model, cut.head_names, fc)
    timm_model.eval()
    x = _dummy(config["img_size"], getattr(timm_model, "in_chans", 3) or 3).repeat(2, 1, 1, 1)
    with eval_mode(model), torch.no_grad():
        expect = model(x)
        try:
            got = timm_model(x)
        except RuntimeError:
            got = None
    if (
        got is None
        or got.shape != expect.shape
        or not torch.allclose(got, expect, rtol=1e-4, atol=1e-4, equal_nan=True)
    ):
        raise NotImplementedError(
            f"{config['timm_name']}: timm's head does not pool the way the local head does (e.g. attention "
            "pooling); export of a decoupled model is unsupported for it"
        )
    return timm_model
