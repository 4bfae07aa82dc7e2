"""Adapter: a timm classifier becomes a DecoupledModel, cut at its natural stages.

CNNs (ResNet/ResNeXt/ResNet-D, RegNet, ConvNeXt, EfficientNet, MobileNetV3, ...) are cut where timm's own
`feature_info` says a stage ends: one forward of `forward_features` is traced module by module, checked to be a plain
chain, and split after each feature module with reduction ≥ 4 (the stem is no block of its own: it joins block 1;
anything after the last stage, e.g. EfficientNet's `conv_head`/`bn2`, joins the last block). ViT/DeiT are cut by
transformer depth: block 1 holds the embedding (`patch_embed → _pos_embed → patch_drop → norm_pre`) and the first
transformer blocks. Under `bp` the last block's head runs timm's own `forward_head` (after the final `norm` for
ViTs), so the stacked blocks compute exactly what the timm model computes. `export` gives a plain timm model back.
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
from ._stages import NotSequentialError, ancestors, chain_calls, check_close, eval_mode, leaf_modules, make_unit, trace

__all__ = ["CNN_MODULES", "CUTS", "VIT_MODULES", "create", "export", "list_supported"]

# timm model modules (one per family) whose models follow the rules above; other timm models are tried by the same
# rules and fail with a clear error if their forward pass is not a chain of stages.
CNN_MODULES = ("resnet", "regnet", "convnext", "efficientnet", "mobilenetv3")
VIT_MODULES = ("vision_transformer", "deit")
VIT_DEFAULT_BLOCKS = 4
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


# -- names -------------------------------------------------------------------------------------------------------
def _module_of(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def list_supported(pattern: str | None = None) -> list[str]:
    """timm classifiers in the supported families (`fnmatch` wildcards, e.g. `resnet*`)."""
    names = timm.list_models(pattern or "", module=list(CNN_MODULES + VIT_MODULES))
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
    fams = ", ".join(f"{m} ({', '.join(timm.list_models(module=m)[:2])}, ...)" for m in CNN_MODULES + VIT_MODULES)
    return ValueError(f"timm model {name!r} cannot be cut into blocks: {why}. Supported families: {fams}")


def _cut_cnn(model: nn.Module, x: torch.Tensor, name: str, per_block: bool = False) -> _Cut:
    info = getattr(model, "feature_info", None)
    if not info:
        raise _unsupported(name, "it has no feature_info to say where its stages end")
    if len(model._parameters) > 0:
        raise _unsupported(name, "it has parameters outside its modules, used between stages")
    feat_names = [f["module"] for f in info]
    reductions = [f["reduction"] for f in info]
    # the stem (reduction 2) has no loss of its own: it joins the first real stage
    stages = [n for n, r in zip(feat_names, reductions) if r >= 4] or feat_names
    # cut="block": open each stage module and cut after every module in it (a ResNet's residual blocks)
    leaves = leaf_modules(model, ancestors(feat_names) | (set(stages) if per_block else set()))
    calls, out = trace(model.forward_features, leaves, x)
    chain = chain_calls(calls, x)
    order = [c.name for c in chain]
    cuts = [n for s in stages for n in order if n == s or n.startswith(s + ".")] if per_block else stages
    missing = [n for n in stages if not any(c == n or c.startswith(n + ".") for c in order)]
    if missing:
        raise _unsupported(name, f"feature modules {missing} are not on the chain of its forward pass")
    ends = sorted(order.index(n) for n in cuts)
    ends[-1] = len(chain) - 1  # what follows the last stage (conv_head, final norm) joins the last block
    units, shapes, start = [], [], 0
    h = x
    for e in ends:
        unit = make_unit(chain[start : e + 1])
        with torch.no_grad():
            h = unit(h)
        units.append(unit)
        shapes.append(tuple(h.shape[1:]))
        start = e + 1
    check_close(h, out)
    head_mods = _head_modules(model, out, [(n, m) for n, m in leaves if n not in set(order)])
    head = _Owned(model, ("forward_head",), head_mods)
    return _Cut(units, shapes, head, list(head_mods), None)


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
    return _Cut(units, shapes, head, list(head_mods), pool)


def _is_vit(model: nn.Module) -> bool:
    return all(hasattr(model, a) for a in ("patch_embed", "_pos_embed", "blocks", "norm"))


def _cut(model: nn.Module, img_size: int, name: str, cut: str = "stage") -> _Cut:
    if cut not in CUTS:
        raise UserError(f"unknown cut {cut!r}; valid choices: {', '.join(CUTS)}")
    x = _dummy(img_size, getattr(model, "in_chans", 3) or 3)
    try:
        with eval_mode(model):
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
        takes = _timm_keywords(name, num_classes)  # read from the model class's signature, never from the message
        if takes is None or (set(timm_kwargs) <= takes and (img_size is None or "img_size" in takes)):
            raise  # every keyword is the model's: the TypeError came from inside its constructor, a bug
    if set(timm_kwargs) <= takes:
        return timm.create_model(name, **kw)  # only img_size was not the model's
    own = ("num_blocks", "projector", "pretrained_backbone", "img_size", "cut", "block_units")
    check_kwargs(timm_kwargs, [*own, *MODEL_KEYS, *BUILD_KEYS, *takes], f"timm model {name!r}")
    raise AssertionError("unreachable: check_kwargs raised")


def _timm_keywords(name: str, num_classes: int) -> set[str] | None:
    """The keywords timm model `name`'s class takes (None: it takes any, **kwargs), from its signature; the class is
    found by building the model on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        cls = type(timm.create_model(name, pretrained=False, num_classes=num_classes))
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "self"}


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
    if num_blocks is None and block_units is None and _is_vit(model):
        num_blocks = min(VIT_DEFAULT_BLOCKS, len(cut.units))
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
