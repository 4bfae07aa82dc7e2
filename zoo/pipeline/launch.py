"""Start one process per stage: under `torchrun` (any number of machines) or by spawning `stages` local processes.

Every stage connects to the rendezvous TCPStore (torchrun's agent store, or one the `--stages` launcher hosts on a
free port), joins the process group (gloo on CPU, NCCL on GPU) and starts its watchdog. Stage 0 decides the
partition (given, or profiled and balanced) and publishes it; at the end it gathers every stage's weights, optimizer
state and statistics, rebuilds the full model and writes the checkpoint and the result file. The `--stages`
launcher watches its children: one that fails or dies makes the others stop within seconds, naming it; Ctrl-C stops
them all. No result is returned or written unless every stage finished.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..decoupled import DecoupledModel
from ._bp import stage_bp
from ._comm import Link, PeerFailure, PeerLost, Watchdog, connect_store, report_error
from ._failures import PipelineError, StageFailure, _failed, _is_connection_error, _monitor, _report, _stop_all
from .checks import (
    check_batches,
    check_config,
    check_port,
    shares_gpu,
    stage_device,
)
from .engine import (
    Batches,
    Builder,
    PipelineConfig,
    Replicas,
    build,
    pack,
    pin_cpu,
    stage_decoupled,
    unpack,
)
from .partition import Partition, partition_units, profile_units

__all__ = ["PipelineError", "PipelineResult", "StageFailure", "launch", "in_torchrun"]


@dataclass
class PipelineResult:
    """What a finished pipelined run gives back (on the launcher, or on stage 0 under torchrun)."""

    model: DecoupledModel
    stages: list[dict[str, Any]]  # per-stage statistics
    partition: list[int]
    predicted_s: list[float] | None  # the partitioner's predicted per-stage step time (None if given)
    profile: list[dict[str, Any]] | None
    trainer_state: dict[str, Any]
    config: PipelineConfig

    @property
    def samples_per_s(self) -> float:
        return min(s["samples_per_s"] for s in self.stages)  # each stage's steady rate; the slowest is delivered


def in_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _log(cfg: PipelineConfig, rank: int, msg: str) -> None:
    if cfg.verbose:
        print(f"[stage {rank}] {msg}", flush=True)


# -- one stage ---------------------------------------------------------------------------------------------------
def _decide_partition(
    cfg: PipelineConfig, builder: Builder, batches: Batches, store: dist.Store, rank: int, world: int, wd: Watchdog
) -> dict:
    if rank != 0:
        t0 = time.monotonic()
        while not store.check(["partition"]):
            if wd.failure is not None:
                raise PeerFailure(wd.failure)
            if time.monotonic() - t0 > cfg.timeout_s * 3:
                raise TimeoutError(f"stage {rank}: stage 0 published no partition within {cfg.timeout_s * 3:.0f} s")
            time.sleep(0.05)
        return json.loads(store.get("partition"))
    model = build(cfg, builder)
    check_config(cfg, None, model, devices=False)  # this process may be pinned to its own cores already
    if cfg.partition is not None:
        info = {"sizes": list(cfg.partition), "predicted_s": None, "profile": None}
    else:
        x, y = batches[0]
        dev = stage_device(cfg, int(os.environ.get("LOCAL_RANK", rank)))
        profiles = profile_units(model.to(dev), x.to(dev), y.to(dev), cfg.train, repeats=cfg.profile_repeats)
        part: Partition = partition_units(profiles, world, balance=cfg.balance)
        info = {"sizes": part.sizes, "predicted_s": part.predicted_s, "profile": [p.to_dict() for p in profiles]}
        what = "memory (parameters + saved activations)" if cfg.balance == "memory" else "time"
        _log(cfg, 0, f"partition balancing {what} (profiled: forward + local loss + backward + step per block)\n"
             + part.describe())  # fmt: skip
    store.set("partition", json.dumps(info))
    return info


def _stage_main(
    cfg: PipelineConfig,
    builder: Builder,
    batches: Batches,
    rank: int,
    world: int,
    host: str,
    port: int,
    prefix: str,
    host_store: bool,
    result_path: str | None,
) -> PipelineResult | None:
    local = int(os.environ.get("LOCAL_RANK", rank)), int(os.environ.get("LOCAL_WORLD_SIZE", world))
    pin_cpu(cfg, *local)  # before torch and gloo start their threads, so they inherit the cores
    torch.set_num_threads(cfg.threads)
    device = stage_device(cfg, local[0])
    shared = shares_gpu(cfg, local[1])  # check_config refused GPipe / 1F1B then
    if device.type == "cuda":
        torch.cuda.set_device(device)
    client = connect_store(host, port, cfg.timeout_s, is_master=host_store)
    store = dist.PrefixStore(prefix, client)
    dist.init_process_group(
        "nccl" if device.type == "cuda" and not shared else "gloo",
        store=dist.PrefixStore("pg", store),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=cfg.timeout_s),
    )
    wd = Watchdog(
        host,
        port,
        prefix,
        rank,
        world,
        dead_after_s=cfg.dead_after_s,
        stall_after_s=cfg.stall_after_s,
        first_step_s=cfg.timeout_s,
    )
    wd.start()
    try:
        n_rep = cfg.replicas
        stages, stage = world // n_rep, rank // n_rep
        rep = Replicas(rank % n_rep, n_rep, _data_group(device, stages, n_rep), cfg.replica_loss)
        info = _decide_partition(cfg, builder, batches, store, rank, stages, wd)
        sizes = info["sizes"]
        comm = torch.device("cpu") if shared else device
        link = Link(rank, wd, device, cfg.timeout_s, cfg.max_in_flight, comm_device=comm)
        if cfg.engine == "deinforeg":
            out = stage_decoupled(cfg, builder, batches, stage, stages, sizes, link, rep)
        else:
            out = stage_bp(cfg, builder, batches, rank, world, sizes, device, wd)
        _log(cfg, rank, f"done: {out['compute_s_per_step'] * 1e3:.1f} ms compute/step, busy {out['busy']:.0%}")
        if rank != 0:
            link.send_blob(0, pack(out))
            store.set(f"done/{rank}", "1")
            return None
        outs = [out] + [unpack(link.recv_blob(r)) for r in range(1, world)]
        result = _assemble(cfg, builder, outs, info)
        if result_path:
            tmp = f"{result_path}.tmp"
            state = {"stages": result.stages, "info": info, "model": result.model.state_dict()}
            torch.save(state | {"trainer_state": result.trainer_state}, tmp)
            os.replace(tmp, result_path)
        store.set("done/0", "1")
        if host_store:  # others still talk to the store this process hosts: wait for them to finish
            t0 = time.monotonic()
            while not all(store.check([f"done/{r}"]) for r in range(world)) and time.monotonic() - t0 < 30:
                time.sleep(0.05)
        return result
    finally:
        wd.stop()


def _data_group(device: torch.device, stages: int, replicas: int):
    """The stage's data-parallel group: the `data` dimension of a (pipe, data) DeviceMesh over every process
    (global rank = stage · replicas + replica). None without replicas."""
    if replicas == 1:
        return None
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (stages, replicas), mesh_dim_names=("pipe", "data"))
    return mesh.get_group("data")


def _assemble(cfg: PipelineConfig, builder: Builder, outs: list[dict[str, Any]], info: dict) -> PipelineResult:
    model = build(cfg, builder, "bp" if cfg.engine != "deinforeg" else None)
    opt_states, sched_states = {}, {}
    for o in outs:
        for k, sd in o.pop("state", {}).items():
            model.blocks[k].load_state_dict(sd)
        opt_states.update(o.pop("optimizers", {}))
        sched_states.update(o.pop("schedulers", {}))
    trained = model.trained_blocks()  # a Trainer's optimizers are indexed by these (frozen blocks have none)
    trainer_state = {
        "optimizers": [opt_states[k] for k in trained] if set(opt_states) == set(trained) else [],
        "schedulers": [sched_states[k] for k in trained] if set(sched_states) == set(trained) else [],
        "step": cfg.steps,
        "epoch": 0,
        "rng_seed": cfg.seed,  # the per-block RNG streams' base (build() seeds cfg.seed in every stage)
        "rng": {},
    }
    result = PipelineResult(model, outs, info["sizes"], info["predicted_s"], info["profile"], trainer_state, cfg)
    if cfg.checkpoint and cfg.engine == "deinforeg":
        from ..checkpoints import save_checkpoint

        meta = {"pipeline": {"stages": len(outs), "partition": info["sizes"], "steps": cfg.steps}}
        save_checkpoint(model, cfg.checkpoint, metadata=meta, trainer_state=trainer_state)
    return result


def _run_stage_process(cfg, builder, batches, rank, world, host, port, prefix, result_path) -> None:
    """Entry of a spawned stage: the launcher handles Ctrl-C, so the stage ignores SIGINT and exits with a code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = _guarded(cfg, builder, batches, rank, world, host, port, prefix, False, result_path)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _guarded(cfg, builder, batches, rank, world, host, port, prefix, host_store, result_path) -> int:
    """Run a stage; report its own failure to the others; return the exit code."""
    try:
        _stage_main(cfg, builder, batches, rank, world, host, port, prefix, host_store, result_path)
        if dist.is_initialized():
            dist.destroy_process_group()
        return 0
    except PeerFailure as e:
        if isinstance(e, PeerLost):
            _report(host, port, prefix, str(e))
        print(f"[stage {rank}] stopping: {e}", file=sys.stderr, flush=True)
        return 1
    except RuntimeError as e:
        if not _is_connection_error(e):
            return _failed(host, port, prefix, rank, e)
        # a neighbour died inside torch.distributed.pipelining: it, or the launcher, reports the cause
        print(f"[stage {rank}] stopping: lost a connection ({str(e).split('. This is typically')[0]})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _report(host, port, prefix, f"stage {rank} was interrupted (Ctrl-C)")
        print(f"[stage {rank}] interrupted", file=sys.stderr, flush=True)
        return 130
    except BaseException as e:  # noqa: BLE001 - every failure must reach the other stages
        return _failed(host, port, prefix, rank, e)


# -- launchers ---------------------------------------------------------------------------------------------------
def launch(cfg: PipelineConfig, builder: Builder, batches: Batches) -> PipelineResult | None:
    """Train the model `builder(method=...)` builds on `batches` (cycled for `cfg.steps` steps), pipelined.

    Under torchrun this process is one stage (the result on stage 0, None elsewhere; every rank must pass the same
    builder and batches); otherwise `cfg.stages` local stage processes are spawned (so `builder` must be picklable:
    a module-level function or a functools.partial of one) and the result comes back once every stage finished.
    """
    batch_size = check_batches(batches)
    batches = list(batches)
    if in_torchrun():
        return _launch_torchrun(cfg, builder, batches, batch_size)
    return _launch_spawn(cfg, builder, batches, batch_size)


def _launch_torchrun(cfg: PipelineConfig, builder: Builder, batches: Batches, batch_size: int) -> PipelineResult | None:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    check_config(cfg, world, None, batch_size, devices=False)
    cfg = replace(cfg, stages=world // cfg.replicas)
    # every rank checks the model before joining: a wrong model or launch is a clear error on each, not a hang
    check_config(cfg, None, build(cfg, builder, "bp" if cfg.engine != "deinforeg" else None), batch_size)
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ["MASTER_PORT"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    prefix = f"deinforeg-pipe/{run_id}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        host_store = rank == 0 and not agent_store
        result = _stage_main(cfg, builder, batches, rank, world, host, port, prefix, host_store, None)
    except PeerFailure as e:
        raise PipelineError(f"stage {rank} stopped: {e}") from None
    except (KeyboardInterrupt, Exception) as e:
        _report(host, port, prefix, f"stage {rank} failed: {type(e).__name__}: {e}", StageFailure.of(rank, e))
        raise
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def _launch_spawn(cfg: PipelineConfig, builder: Builder, batches: Batches, batch_size: int) -> PipelineResult:
    import multiprocessing as mp

    check_config(cfg, None, None, batch_size, devices=False)  # the model's errors first, then the devices'
    model = build(cfg, builder, "bp" if cfg.engine != "deinforeg" else None)
    check_config(cfg, None, model, batch_size)
    del model
    world = int(cfg.stages) * cfg.replicas
    if cfg.port is not None:
        check_port(cfg.host, cfg.port)
    store = connect_store(cfg.host, cfg.port or 0, cfg.timeout_s, is_master=True)
    port = store.port
    prefix = f"deinforeg-pipe/{uuid.uuid4().hex[:12]}"
    pstore = dist.PrefixStore(prefix, store)
    env = {"OMP_NUM_THREADS": str(cfg.threads), "MKL_NUM_THREADS": str(cfg.threads)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="deinforeg-pipe-") as tmp:
        result_path = str(Path(tmp) / "result.pt")
        procs = [
            ctx.Process(
                target=_run_stage_process,
                args=(cfg, builder, batches, r, world, cfg.host, port, prefix, result_path),
            )
            for r in range(world)
        ]
        try:
            for p in procs:
                p.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        try:
            _monitor(procs, pstore)
        except KeyboardInterrupt:
            report_error(pstore, "interrupted by the user (Ctrl-C)")
            _stop_all(procs, 10.0)
            print("pipeline: interrupted; every stage stopped", file=sys.stderr, flush=True)
            raise
        if not os.path.exists(result_path):
            raise PipelineError("every stage exited cleanly but stage 0 wrote no result")
        saved_result = torch.load(result_path, map_location="cpu", weights_only=False)
    model = build(cfg, builder, "bp" if cfg.engine != "deinforeg" else None)
    model.load_state_dict(saved_result["model"])
    info = saved_result["info"]
    return PipelineResult(
        model,
        saved_result["stages"],
        info["sizes"],
        info["predicted_s"],
        info["profile"],
        saved_result["trainer_state"],
        cfg,
    )
