"""Build an architecture by name: a zoo-registered model, a timm classifier, or an SMP network on an encoder.

No weights are read here (`zoo.create_model` handles `name.tag` pretrained names through `zoo.checkpoints`, which
rebuilds through this module): keeping the two apart keeps the import graph free of cycles.
"""

from __future__ import annotations

from typing import Any

from . import _registry
from .decoupled import DecoupledModel
from .errors import UserError
from .heads import check_method
from .tasks import TASK_DEFAULTS, check_task

__all__ = ["build_architecture", "build_from_config", "list_architectures", "rebuild_kwargs"]

# config keys that would fetch or read external weights when an architecture is rebuilt from a saved config
_NO_REBUILD_KEYS = ("pretrained_backbone", "pretrained", "checkpoint_path")


def build_architecture(
    name: str,
    task: str = "cls",
    method: str = "deinforeg",
    num_classes: int | None = None,
    num_blocks: int | None = None,
    arch: str | None = None,
    **kwargs: Any,
) -> DecoupledModel:
    """A freshly initialised DecoupledModel; keyword arguments left as None are dropped (each model's own apply)."""
    check_task(task)
    check_method(method)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if num_blocks is not None:
        kwargs["num_blocks"] = num_blocks
    if _registry.is_registered(name):
        if task != "cls":
            raise UserError(f"{name!r} is a classification model; use task='cls'")
        return _registry.get_entrypoint(name)(method=method, **kwargs)
    if task == "cls":
        from .adapters import timm as timm_adapter

        return timm_adapter.create(name, method=method, **kwargs)
    from .adapters import smp as smp_adapter

    return smp_adapter.create(name, arch=arch or TASK_DEFAULTS["seg"]["arch"], method=method, **kwargs)


def rebuild_kwargs(model_config: dict[str, Any]) -> dict[str, Any]:
    """`build_architecture` keywords from a saved `model.config`, without those that would read or fetch weights."""
    kw = {k: v for k, v in model_config.items() if k not in _NO_REBUILD_KEYS}
    if "encoder_weights" in kw:
        kw["encoder_weights"] = None  # weights come from the checkpoint; never download
    if kw.get("adapter") == "smp" and "head" not in (kw.get("head_kwargs") or {}):
        from .adapters.smp import LEGACY_HEAD

        # saved before the SMP adapter recorded its head (the default then): not today's default
        kw["head_kwargs"] = {**(kw.get("head_kwargs") or {}), "head": LEGACY_HEAD}
    return kw


def build_from_config(model_config: dict[str, Any]) -> DecoupledModel:
    """The architecture a saved `model.config` (a checkpoint's "model" section) describes, freshly initialised:
    nothing is read or downloaded (load the weights afterwards)."""
    return build_architecture(**rebuild_kwargs(model_config))


def list_architectures(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Names `build_architecture` takes, with wildcards."""
    check_task(task)
    names: set[str] = set(_registry.registered_names(pattern, task))
    if task in (None, "cls"):
        from .adapters import timm as timm_adapter

        names.update(timm_adapter.list_supported(pattern))
    if task in (None, "seg"):
        from .adapters import smp as smp_adapter

        names.update(smp_adapter.list_supported(pattern))
    return sorted(names)
