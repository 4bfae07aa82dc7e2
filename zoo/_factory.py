"""`create_model` and `list_models`: one entry to every model the zoo can build.

Classification names are timm architectures or the zoo's own registered models; segmentation names are SMP
encoders with `arch` the SMP architecture. A `name.tag` form selects pretrained decoupled weights (timm's
`resnet50.a1_in1k` convention), and `hf-hub:org/name[@revision]` a checkpoint folder on the Hugging Face Hub
(timm's spelling). Keyword arguments left as None are dropped so each model's defaults apply.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from . import checkpoints, hub
from ._build import build_architecture, list_architectures
from .decoupled import DecoupledModel
from .errors import UserError
from .heads import check_method
from .tasks import check_task

__all__ = ["create_model", "list_models", "parse_model_kwargs", "split_tag"]


def parse_model_kwargs(items: Any) -> dict[str, Any]:
    """`width=0.25,projector=flatten` (or a list of such items, or a mapping) → dict of extra `create_model`
    arguments, values read as YAML scalars (numbers, bools). A malformed item raises ValueError."""
    if items is None:
        return {}
    if isinstance(items, dict):
        return dict(items)
    import yaml

    if isinstance(items, str):
        items = [s for s in items.split(",") if s.strip()]
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            raise UserError(f"--model-kwargs expects key=value pairs, got {item!r}")
        out[key.strip()] = yaml.safe_load(value.strip())
    return out


def split_tag(name: str) -> tuple[str, str | None]:
    """`resnet18.deinforeg_digits` → (`resnet18`, `deinforeg_digits`)."""
    base, _, tag = name.partition(".")
    return base, (tag or None)


def create_model(
    name: str,
    task: str = "cls",
    method: str = "deinforeg",
    num_classes: int | None = None,
    num_blocks: int | None = None,
    arch: str | None = None,
    pretrained: bool = False,
    **kwargs: Any,
) -> DecoupledModel:
    """Build a DecoupledModel. See the module docstring for how `name`, `task` and `arch` are read."""
    check_task(task)
    check_method(method)
    if hub.is_hf_hub(name):  # the checkpoint's config fixes task, method and architecture
        fixed = sorted(k for k, v in {"num_blocks": num_blocks, "arch": arch, **kwargs}.items() if v is not None)
        if fixed:
            raise UserError(f"{name}: the checkpoint's config.json fixes the architecture; drop {', '.join(fixed)}")
        return checkpoints.load_hf_hub(name, num_classes=num_classes, pretrained=pretrained)
    base, tag = split_tag(name)
    if pretrained or tag is not None:
        return checkpoints.load_pretrained(name, num_classes=num_classes)
    return build_architecture(base, task, method, num_classes, num_blocks, arch, **kwargs)


def list_models(pattern: str | None = None, task: str | None = None, pretrained: bool = False) -> list[str]:
    """Names the zoo can build (`pretrained=True`: the `name.tag` checkpoints it can pull), with wildcards."""
    check_task(task)
    if pretrained:
        names = hub.list_pretrained(task=task)
        return sorted(n for n in names if pattern is None or fnmatch.fnmatch(n, pattern))
    return list_architectures(pattern, task)
