"""`python -m zoo.pipeline`: train a decoupled model pipelined over S processes (or BP with GPipe / 1F1B).

    python -m zoo.pipeline --model resnet18 --stages 2 --steps 100 --checkpoint runs/resnet18_pipe
    torchrun --nproc-per-node 2 -m zoo.pipeline --model resnet18 --steps 100      # one or many machines

Exit codes: 0 done, 1 a stage failed (the message names it), 2 a wrong launch, 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .._factory import parse_model_kwargs
from ..train import OPTIMIZERS, TrainConfig
from .engine import ENGINES, PipelineConfig
from .launch import LaunchError, PipelineError, in_torchrun, launch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m zoo.pipeline",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--model", default="resnet18")
    a("--task", default="cls", choices=("cls", "seg"))
    a("--arch", default=None, help="SMP architecture for --task seg")
    a("--method", default="deinforeg", help="local method (deinforeg, greedy, scpl)")
    a("--engine", default="deinforeg", choices=ENGINES, help="deinforeg: decoupled schedule; gpipe/1f1b: BP")
    a("--stages", type=int, default=None, help="stage processes to spawn (default 2; under torchrun: its world size)")
    a("--partition", default=None, help="blocks per stage, e.g. 3,1 (default: profile and balance)")
    a("--num-blocks", type=int, default=None)
    a("--dataset", default="auto", help="digits | shapes | synthetic")
    a("--img-size", type=int, default=None)
    a("--batch-size", type=int, default=64)
    a("--steps", type=int, default=20)
    a("--warmup", type=int, default=3)
    a("--micro-batches", type=int, default=4, help="gpipe / 1f1b only")
    a("--max-in-flight", type=int, default=2)
    a("--optimizer", default="adamw", choices=OPTIMIZERS)
    a("--lr", type=float, default=2e-3)
    a("--seed", type=int, default=0)
    a("--device", default="cpu")
    a("--threads", type=int, default=1, help="torch threads per stage process")
    a("--timeout", type=float, default=120.0, help="longest wait for one message (s)")
    a("--port", type=int, default=None, help="rendezvous port for --stages mode (default: a free one)")
    a("--checkpoint", default=None, help="save the trained model to this folder (zoo.checkpoints format)")
    a("--model-kwargs", default=None, help="extra create_model arguments, e.g. width=0.25")
    a("--fault", default=None, help=argparse.SUPPRESS)  # testing: STAGE:STEP:raise|kill|hang
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        model_kwargs = parse_model_kwargs(ns.model_kwargs)
    except ValueError as e:
        parser.error(str(e))
    stages = ns.stages if ns.stages is not None or in_torchrun() else 2
    cfg = PipelineConfig(
        model=ns.model,
        task=ns.task,
        arch=ns.arch,
        method=ns.method,
        engine=ns.engine,
        num_blocks=ns.num_blocks,
        img_size=ns.img_size,
        model_kwargs=model_kwargs,
        data=ns.dataset,
        batch_size=ns.batch_size,
        steps=ns.steps,
        warmup_steps=ns.warmup,
        micro_batches=ns.micro_batches,
        max_in_flight=ns.max_in_flight,
        stages=stages,
        partition=[int(v) for v in ns.partition.split(",")] if ns.partition else None,
        seed=ns.seed,
        train=TrainConfig(optimizer=ns.optimizer, lr=ns.lr),
        device=ns.device,
        threads=ns.threads,
        timeout_s=ns.timeout,
        port=ns.port,
        checkpoint=ns.checkpoint,
        fault=ns.fault,
    )
    try:
        result = launch(cfg)
    except LaunchError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank finds the same error
            print(f"python -m zoo.pipeline: error: {e}", file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"python -m zoo.pipeline: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("python -m zoo.pipeline: interrupted; every stage stopped, nothing written", file=sys.stderr)
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
