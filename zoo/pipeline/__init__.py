"""Multi-device pipeline training: one process per stage over torch.distributed, blocks that never wait for a
backward from the next stage (DeInfoReg's decoupling), a profiling partitioner, and the BP baselines.

The pipeline takes objects, not names: a `builder(method=...)` that returns a fresh DecoupledModel (every stage
process builds its own copy from the same seed) and a sequence of (x, y) batches, cycled for `cfg.steps` steps.

    import functools, zoo
    from zoo.pipeline import PipelineConfig, launch, synthetic_batches
    builder = functools.partial(zoo.create_model, "resnet18", num_classes=10, img_size=32)
    result = launch(PipelineConfig(stages=2), builder, synthetic_batches(64))  # or under `torchrun --nproc-per-node 2`
    result.model  # a plain DecoupledModel: evaluate it or save_checkpoint it like any single-process model
"""

from ._comm import PeerFailure
from .checks import LaunchError, check_batches, check_config, check_micro_batches, local_devices, shares_gpu
from .engine import ENGINES, Batches, Builder, PipelineConfig, build, run_single, synthetic_batches
from .launch import PipelineError, PipelineResult, in_torchrun, launch
from .partition import (
    BlockCuts,
    Partition,
    UnitProfile,
    balanced_split,
    choose_blocks,
    choose_cuts,
    partition_units,
    profile_units,
    stage_slices,
)

__all__ = [
    "ENGINES",
    "Batches",
    "BlockCuts",
    "Builder",
    "LaunchError",
    "Partition",
    "PeerFailure",
    "PipelineConfig",
    "PipelineError",
    "PipelineResult",
    "UnitProfile",
    "balanced_split",
    "build",
    "check_batches",
    "check_config",
    "check_micro_batches",
    "choose_blocks",
    "choose_cuts",
    "in_torchrun",
    "launch",
    "local_devices",
    "partition_units",
    "profile_units",
    "run_single",
    "shares_gpu",
    "stage_slices",
    "synthetic_batches",
]
