"""The pipeline's command-line surface, declared once: which `PipelineConfig` fields a user sets, under which flag,
with what help. Defaults are `PipelineConfig`'s own (and `TrainConfig`'s for the optimizer), read from the
dataclasses, never written here.

`python -m zoo.pipeline` adds every flag of `PIPELINE_FLAGS`; the harness's `--bench pipeline`
(benchmarks/options.py) builds its options from the same entries, so the two share one flag surface.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ._replica import REPLICA_LOSSES
from .engine import PipelineConfig
from .partition import BALANCES

__all__ = ["PIPELINE_FLAGS", "PipelineFlag", "add_pipeline_flags", "config_default", "pipeline_values"]


@dataclass(frozen=True)
class PipelineFlag:
    """One setting of a pipelined run: `name` (the flag is `--name` with dashes, or `flag`), the `PipelineConfig`
    field it sets (`field`, default `name`), its type (each item's when `many`) and help."""

    name: str
    help: str
    kind: Callable[[str], Any] | None = None  # None: a bool switch
    many: bool = False
    choices: tuple[str, ...] | None = None
    flag: str | None = None
    metavar: str | None = None
    field: str | None = None
    minimum: int | None = None

    @property
    def target(self) -> str:
        return self.field or self.name

    @property
    def option(self) -> str:
        return self.flag or f"--{self.name.replace('_', '-')}"


PIPELINE_FLAGS = (
    PipelineFlag("stages", "stage processes, one device each (under torchrun: its world size / replicas)", int,
                 metavar="S", minimum=1),
    PipelineFlag("replicas", "processes per stage, each on a 1/R shard of every batch, gradients all-reduced within "
                 "the stage", int, metavar="R", minimum=1),
    PipelineFlag("replica_loss", "with --replicas: local loss and BatchNorm over the stage's whole batch (global, = "
                 "one process) or per replica (shard, cheaper)", str, choices=REPLICA_LOSSES),
    PipelineFlag("oversubscribe", "allow more processes than devices (GPUs, or CPU cores / threads)"),
    PipelineFlag("partition", "blocks per stage, e.g. 3,1 (default: profile and balance)", int, many=True,
                 metavar="LIST", minimum=1),
    PipelineFlag("balance", "what a profiled partition (and --model-kwargs cut=block's cuts) balances across the "
                 "stages: their time, or their memory (parameters, optimizer state, saved activations)", str,
                 choices=BALANCES),
    PipelineFlag("steps", "measured optimizer steps", int, metavar="N", minimum=1),
    PipelineFlag("warmup", "untimed steps first (left out of the throughput window)", int, metavar="N",
                 field="warmup_steps", minimum=0),
    PipelineFlag("pin_cpu", "on CPU: let the OS move stage processes (default: each its own cores)", flag="--no-pin"),
)  # fmt: skip
# the zoo CLI's own: what the harness decides itself (one micro-batch count per launch, the timeouts, the port)
CLI_FLAGS = (
    PipelineFlag("micro_batches", "BP engines: micro-batches per batch", int, metavar="M", minimum=1),
    PipelineFlag("max_in_flight", "decoupled engine: sends not yet completed before a stage waits", int, minimum=1),
    PipelineFlag("threads", "torch threads per stage process (one CPU stage process stands for one device)", int,
                 minimum=1),
    PipelineFlag("timeout", "longest wait for one message (s)", float, field="timeout_s"),
    PipelineFlag("port", "rendezvous port when spawning stages (default: a free one)", int),
    PipelineFlag("checkpoint", "save the trained model to this folder (zoo.checkpoints format)", str, metavar="DIR"),
)  # fmt: skip


def config_default(target: str) -> Any:
    """`PipelineConfig`'s default of field `target`."""
    f = {f.name: f for f in dataclasses.fields(PipelineConfig)}[target]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_pipeline_flags(parser: argparse.ArgumentParser, flags: Iterable[PipelineFlag]) -> None:
    """Add `flags` to a parser; their values land on the namespace only when given (see `pipeline_values`)."""
    for fl in flags:
        default = config_default(fl.target)
        shown = default is not None and not isinstance(default, bool)
        text = f"{fl.help} (default: {default})" if shown and "(default" not in fl.help else fl.help
        if fl.kind is None:
            parser.add_argument(fl.option, dest=fl.name, action="store_false" if default else "store_true",
                                default=argparse.SUPPRESS, help=text)  # fmt: skip
        else:
            kind = str if fl.many else fl.kind
            parser.add_argument(fl.option, dest=fl.name, type=kind, choices=fl.choices, metavar=fl.metavar,
                                default=argparse.SUPPRESS, help=text)  # fmt: skip


def pipeline_values(ns: argparse.Namespace, flags: Iterable[PipelineFlag]) -> dict[str, Any]:
    """The `PipelineConfig` keyword arguments of the flags given on `ns` (a list flag read from `a,b`); a value
    out of range is a UserError naming the flag."""
    from ..errors import UserError

    out = {}
    for fl in flags:
        if not hasattr(ns, fl.name):
            continue
        value = getattr(ns, fl.name)
        if fl.many and isinstance(value, str):
            try:
                value = [fl.kind(v) for v in value.split(",") if v.strip()]
            except ValueError:
                what = fl.help.split(",")[0]
                raise UserError(f"{fl.option} expects {what} as a comma-separated list, got {value!r}") from None
        for v in value if fl.many else [value]:
            if fl.minimum is not None and v < fl.minimum:
                raise UserError(f"{fl.option} must be at least {fl.minimum}, got {value!r}")
        out[fl.target] = value
    return out
