"""`python -m zoo.pipeline`: train a decoupled model pipelined over S processes (or BP with GPipe / 1F1B).

    python -m zoo.pipeline --model resnet18 --stages 2 --steps 100 --checkpoint runs/resnet18_pipe
    python -m zoo.pipeline --model resnet18 --batches mypkg.data:train_batches     # your data: f(batch_size, seed)
    torchrun --nproc-per-node 2 -m zoo.pipeline --model resnet18 --steps 100      # one or many machines
    python -m zoo.pipeline --model resnet18 --stages 2 --replicas 2                # 2 stages × 2 data replicas

The model is built with zoo.create_model; the data is random tensors (`--batches synthetic`) or the (x, y) batches a
function of yours returns (`--batches module:function`, called as function(batch_size=..., seed=...)), cycled.
Exit codes: 0 done, 1 a stage failed (the message names it), 2 a wrong launch, 130 interrupted.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Sequence

from .._factory import create_model, parse_model_kwargs
from ..errors import UserError
from ..tasks import TASKS
from ..train import OPTIMIZERS, TrainConfig
from .engine import ENGINES, Batches, Builder, PipelineConfig, synthetic_batches
from .flags import CLI_FLAGS, PIPELINE_FLAGS, add_pipeline_flags, pipeline_values
from .launch import PipelineError, in_torchrun, launch

PROG = "python -m zoo.pipeline"


def build_parser() -> argparse.ArgumentParser:
    """The model and data flags, then the pipeline's (`flags.PIPELINE_FLAGS`, shared with the harness's
    `--bench pipeline`, and `flags.CLI_FLAGS`); launch defaults are `PipelineConfig`'s and `TrainConfig`'s."""
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    a = p.add_argument
    a("--model", default="resnet18", help="zoo.create_model name (timm classifier, paper model, SMP encoder)")
    a("--task", default="cls", choices=TASKS)
    a("--arch", default=None, help="SMP architecture for --task seg (default unet)")
    a("--num-classes", type=int, default=10)
    a("--img-size", type=int, default=None, help="default 32 for cls, 64 for seg")
    a("--num-blocks", type=int, default=None)
    a("--model-kwargs", default=None, help="extra create_model arguments, e.g. width=0.25")
    a("--method", default="deinforeg", help="local method (deinforeg, greedy, scpl)")
    a("--engine", default="deinforeg", choices=ENGINES, help="deinforeg: decoupled; the rest: BP (pipelining)")
    a("--batches", default="synthetic", help="synthetic | module:function returning a list of (x, y)")
    a("--batch-size", type=int, default=64)
    a("--num-batches", type=int, default=8, help="synthetic: batches generated (and cycled)")
    a("--seed", type=int, default=0)
    a("--device", default="cpu")
    train = TrainConfig()
    a("--optimizer", default=argparse.SUPPRESS, choices=OPTIMIZERS, help=f"(default: {train.optimizer})")
    a("--lr", type=float, default=argparse.SUPPRESS, help=f"peak learning rate (default: {train.lr:g})")
    add_pipeline_flags(p, (*PIPELINE_FLAGS, *CLI_FLAGS))
    a("--fault", default=None, help=argparse.SUPPRESS)  # testing: STAGE:STEP:raise|kill|hang
    return p


def model_builder(ns: argparse.Namespace) -> Builder:
    """A picklable builder(method=...) for the model the flags name."""
    kw = parse_model_kwargs(ns.model_kwargs)
    kw.setdefault("img_size", ns.img_size)
    return functools.partial(
        create_model, ns.model, task=ns.task, num_classes=ns.num_classes, num_blocks=ns.num_blocks, arch=ns.arch, **kw
    )


def load_batches(ns: argparse.Namespace) -> Batches:
    """`--batches synthetic` or `--batches module:function`."""
    if ns.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {ns.batch_size}")
    if ns.batches == "synthetic":
        return synthetic_batches(ns.batch_size, ns.num_batches, ns.img_size, ns.num_classes, ns.task, ns.seed)
    mod, colon, fn = ns.batches.partition(":")
    if not colon or not mod or not fn:
        raise UserError(f"--batches {ns.batches!r} is not valid; valid choices: synthetic, module:function")
    try:
        func = getattr(importlib.import_module(mod), fn)
    except ImportError as e:
        raise UserError(f"--batches: cannot import {mod!r} ({e})") from None
    except AttributeError:
        raise UserError(f"--batches: module {mod!r} has no {fn!r}") from None
    return list(func(batch_size=ns.batch_size, seed=ns.seed))


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    ns.img_size = ns.img_size or (32 if ns.task == "cls" else 64)
    try:
        values = pipeline_values(ns, (*PIPELINE_FLAGS, *CLI_FLAGS))
        if "stages" not in values and in_torchrun():
            values["stages"] = None  # the launcher's world size
        train = {k: getattr(ns, k) for k in ("optimizer", "lr") if hasattr(ns, k)}
        cfg = PipelineConfig(
            **values,
            engine=ns.engine,
            method=ns.method,
            seed=ns.seed,
            train=TrainConfig(**train),
            device=ns.device,
            fault=ns.fault,
        )
        result = launch(cfg, model_builder(ns), load_batches(ns))
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same error
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; every stage stopped, nothing written", file=sys.stderr)
        return 130
    if result is not None:
        for st in result.stages:
            print(
                f"stage {st['rank']}: {st['samples_per_s']:.1f} samples/s, busy {st['busy']:.0%}, "
                f"compute {st['compute_s_per_step'] * 1e3:.1f} ms/step, peak {st['peak_mem_mb']:.0f} MiB"
            )
        print(f"partition {result.partition}; throughput {result.samples_per_s:.1f} samples/s")
        if cfg.checkpoint:
            print(f"checkpoint → {cfg.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
