"""Model registry: entrypoints registered by decorator, listed with wildcards (the timm convention)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

__all__ = ["register_model", "is_registered", "get_entrypoint", "registered_names"]

_ENTRYPOINTS: dict[str, Callable[..., Any]] = {}
_TASKS: dict[str, str] = {}


def register_model(fn: Callable[..., Any] | None = None, *, task: str = "cls"):
    """Register `fn` under its function name as a zoo model for `task`."""

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        _ENTRYPOINTS[f.__name__] = f
        _TASKS[f.__name__] = task
        return f

    return wrap(fn) if fn is not None else wrap


def is_registered(name: str) -> bool:
    return name in _ENTRYPOINTS


def get_entrypoint(name: str) -> Callable[..., Any]:
    return _ENTRYPOINTS[name]


def registered_names(pattern: str | None = None, task: str | None = None) -> list[str]:
    names = [n for n in _ENTRYPOINTS if task is None or _TASKS[n] == task]
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return sorted(names)
