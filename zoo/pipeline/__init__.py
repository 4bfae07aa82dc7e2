"""Multi-device pipeline training: one process per stage over torch.distributed, blocks that never wait for a
backward from the next stage (DeInfoReg's decoupling), a profiling partitioner, and the BP baselines.

    from zoo.pipeline import PipelineConfig, launch
    result = launch(PipelineConfig(model="resnet18", stages=2))   # or under `torchrun --nproc-per-node 2`
    result.model  # a plain DecoupledModel: evaluate it or save_checkpoint it like any single-process model
"""

from ._comm import PeerFailure
from .engine import ENGINES, PipelineConfig, build_model, data_pool, run_single
from .launch import LaunchError, PipelineError, PipelineResult, check_config, in_torchrun, launch
from .partition import Partition, UnitProfile, balanced_split, partition_units, profile_units, stage_slices

__all__ = [
    "ENGINES",
    "LaunchError",
    "Partition",
    "PeerFailure",
    "PipelineConfig",
    "PipelineError",
    "PipelineResult",
    "UnitProfile",
    "balanced_split",
    "build_model",
    "check_config",
    "data_pool",
    "in_torchrun",
    "launch",
    "partition_units",
    "profile_units",
    "run_single",
    "stage_slices",
]
