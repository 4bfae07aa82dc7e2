"""Checks of a pipeline launch, made before any process trains: one `LaunchError` (a `zoo.errors.UserError`, one
line) per wrong launch, and where each stage computes (its device, whether stages share a GPU).
"""

from __future__ import annotations

import errno
import os
import socket

import torch

from ..decoupled import DecoupledModel
from ..errors import UserError
from ..heads import LOCAL_METHODS
from ._bp import MULTI_STAGE
from ._replica import REPLICA_LOSSES
from .engine import ENGINES, Batches, PipelineConfig, batch_size_of
from .partition import BALANCES

__all__ = [
    "LaunchError",
    "check_batches",
    "check_config",
    "check_devices",
    "check_micro_batches",
    "local_devices",
    "shares_gpu",
    "stage_device",
]


class LaunchError(UserError):
    """The launch itself is wrong (stages vs blocks, world size, port, batches, micro-batches)."""


def check_config(
    cfg: PipelineConfig,
    world: int | None = None,
    model: DecoupledModel | None = None,
    batch_size: int | None = None,
    devices: bool = True,
) -> None:
    """One clear error per wrong launch (`devices`: also processes against this machine's devices)."""
    if cfg.engine not in ENGINES:
        raise LaunchError(f"unknown engine {cfg.engine!r}; valid choices: {', '.join(ENGINES)}")
    if cfg.engine == "deinforeg" and cfg.method not in LOCAL_METHODS:
        raise LaunchError(
            f"the decoupled engine trains a local method; valid choices: {', '.join(LOCAL_METHODS)} "
            f"(got {cfg.method!r}; BP runs with engine gpipe or 1f1b)"
        )
    if cfg.balance not in BALANCES:
        raise LaunchError(f"unknown balance {cfg.balance!r}; valid choices: {', '.join(BALANCES)}")
    r = cfg.replicas
    if r < 1:
        raise LaunchError(f"--replicas must be at least 1, got {r}")
    if cfg.replica_loss not in REPLICA_LOSSES:
        raise LaunchError(f"unknown replica loss {cfg.replica_loss!r}; valid choices: {', '.join(REPLICA_LOSSES)}")
    if r > 1 and cfg.engine != "deinforeg":
        raise LaunchError(f"--replicas {r} replicates the decoupled engine's stages; {cfg.engine} runs one per stage")
    if world is not None and world % r:
        raise LaunchError(
            f"--replicas {r} does not divide the world size {world} torchrun started; "
            f"start stages × {r} processes (--nproc-per-node times the number of nodes)"
        )
    if world is not None and cfg.stages is not None and cfg.stages * r != world:
        procs = f"{cfg.stages} × {r} replicas = {cfg.stages * r} processes" if r > 1 else str(cfg.stages)
        raise LaunchError(
            f"--stages {procs} does not match the world size {world} torchrun started; "
            f"use --nproc-per-node {cfg.stages * r} (times the number of nodes) or drop --stages"
        )
    stages = cfg.stages if world is None else world // r
    if stages is None or stages < 1:
        raise LaunchError(f"the number of stages must be at least 1, got {stages}")
    if cfg.steps <= cfg.warmup_steps:
        raise LaunchError(f"steps ({cfg.steps}) must exceed warmup_steps ({cfg.warmup_steps})")
    if model is not None:
        n = model.num_blocks
        if stages > n:
            raise LaunchError(
                f"{stages} stages need at least {stages} blocks, but the model has {n}; use at most {n} stages "
                f"(or build it with more blocks, --num-blocks)"
            )
        if cfg.partition is not None and (
            len(cfg.partition) != stages or sum(cfg.partition) != n or min(cfg.partition) < 1
        ):
            raise LaunchError(
                f"partition {cfg.partition} must give {stages} stages at least one block each, {n} in all"
            )
    if cfg.engine in MULTI_STAGE:
        _check_two_stages_per_rank(cfg, stages, model)
    if cfg.engine != "deinforeg" and batch_size is not None:
        check_micro_batches(batch_size, cfg.micro_batches)
    if batch_size is not None and batch_size % r:
        divisors = [d for d in range(1, batch_size + 1) if batch_size % d == 0]
        raise LaunchError(
            f"batch_size={batch_size} is not divisible by --replicas {r}: each replica takes an equal shard; "
            f"valid choices: {', '.join(map(str, divisors))}"
        )
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", stages * r))
    if devices:
        check_devices(cfg, local_world)
    if r > 1 and shares_gpu(cfg, local_world):
        raise LaunchError(
            f"--replicas {r}: {local_world} processes would share {torch.cuda.device_count()} GPU(s) through CPU "
            f"gloo, which replicated stages do not support; give each process its own GPU"
        )
    if cfg.engine != "deinforeg" and shares_gpu(cfg, local_world):
        raise LaunchError(
            f"{cfg.engine} (torch.distributed.pipelining) needs one GPU per stage for NCCL; {local_world} stages "
            f"would share {torch.cuda.device_count()} GPU(s) here"
        )


def _check_two_stages_per_rank(cfg: PipelineConfig, stages: int, model: DecoupledModel | None) -> None:
    """The zero-bubble schedules run 2 pipeline stages per rank (each rank's blocks halved)."""
    if model is not None and model.num_blocks < 2 * stages:
        raise LaunchError(
            f"{cfg.engine} runs 2 pipeline stages per rank: {stages} ranks need at least {2 * stages} blocks, but the "
            f"model has {model.num_blocks}; use fewer --stages (or build it with more blocks, --num-blocks)"
        )
    if cfg.partition is not None and min(cfg.partition) < 2:
        raise LaunchError(f"{cfg.engine} runs 2 pipeline stages per rank: partition {cfg.partition} must give every "
                          f"rank at least 2 blocks")  # fmt: skip
    if cfg.engine == "dualpipev" and cfg.micro_batches < 2 * stages:
        raise LaunchError(
            f"dualpipev needs at least as many micro-batches as pipeline stages (2 per rank): "
            f"micro_batches={cfg.micro_batches} < {2 * stages}"
        )


def local_devices(cfg: PipelineConfig) -> tuple[int, str]:
    """How many processes this machine can run one per device: (count, what they are)."""
    if cfg.device.startswith("cuda"):
        return torch.cuda.device_count(), "GPU(s)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores // max(1, cfg.threads), f"CPU core(s) / {cfg.threads} thread(s) per process"


def check_devices(cfg: PipelineConfig, local_world: int) -> None:
    """More local processes than devices time-share them: the figures mean nothing unless the user asked for it."""
    n, what = local_devices(cfg)
    if local_world > n and not cfg.oversubscribe:
        raise LaunchError(
            f"{local_world} processes on this machine but only {n} {what}: they would share devices; "
            f"use fewer --stages/--replicas/--threads or pass --oversubscribe"
        )


def check_batches(batches: Batches) -> int:
    """The batch size of a non-empty sequence of (x, y) tensor pairs of one batch size (a LaunchError if not)."""
    try:
        sizes = {(int(x.shape[0]), int(y.shape[0])) for x, y in batches}
    except (TypeError, ValueError, AttributeError, IndexError):
        raise LaunchError("batches must be a sequence of (x, y) tensor pairs") from None
    if not sizes:
        raise LaunchError("batches is empty: give at least one (x, y) pair")
    if len(sizes) > 1 or len({b for pair in sizes for b in pair}) > 1:
        found = sorted({b for pair in sizes for b in pair})
        raise LaunchError(f"every batch (inputs and labels) must have one batch size, found {found}")
    return batch_size_of(batches)


def check_micro_batches(batch_size: int, micro_batches: int) -> None:
    """GPipe / 1F1B split every batch into equal micro-batches (labels and inputs alike)."""
    if micro_batches < 1 or micro_batches > batch_size:
        raise LaunchError(f"micro_batches={micro_batches} is not possible: use 1 to batch_size={batch_size}")
    if batch_size % micro_batches:
        divisors = [d for d in range(1, batch_size + 1) if batch_size % d == 0]
        raise LaunchError(
            f"batch_size={batch_size} is not divisible by micro_batches={micro_batches}; "
            f"valid choices: {', '.join(map(str, divisors))}"
        )


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise LaunchError(
                    f"port {port} on {host} is already in use; pick another --port or leave it out"
                ) from None
            raise LaunchError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def stage_device(cfg: PipelineConfig, local_rank: int = 0) -> torch.device:
    """Stage `local_rank` of this machine computes on GPU `local_rank` (modulo the GPUs there: with fewer GPUs
    than stages, stages share them), or on the CPU."""
    if cfg.device.startswith("cuda"):
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device(cfg.device)


def shares_gpu(cfg: PipelineConfig, local_world: int) -> bool:
    """True when this machine's stages outnumber its GPUs: NCCL refuses two ranks on one GPU, so they talk gloo
    through the CPU (and torch.distributed.pipelining's GPipe / 1F1B cannot run)."""
    return cfg.device.startswith("cuda") and local_world > torch.cuda.device_count()
