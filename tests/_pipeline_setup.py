"""The tiny pipeline setup the pipeline tests share: 4 VGG blocks at 1/8 width on 16-px images, batches of 8."""

from __future__ import annotations

import functools
from dataclasses import replace

import zoo
from zoo.pipeline import PipelineConfig, synthetic_batches
from zoo.train import TrainConfig

BUILDER = functools.partial(zoo.create_model, "paper_vgg", num_classes=10, img_size=16, width=0.125)
BATCHES = synthetic_batches(8, num_batches=3, img_size=16)
TINY_CLI = ["--model", "paper_vgg", "--model-kwargs", "width=0.125", "--img-size", "16", "--batch-size", "8"]


def tiny(**kw) -> PipelineConfig:
    """A short 2-stage run on the tiny model (SGD, one send in flight, quiet); keywords override."""
    base = PipelineConfig(
        steps=4,
        warmup_steps=1,
        stages=2,
        partition=[2, 2],
        max_in_flight=1,
        train=TrainConfig(optimizer="sgd", lr=0.05),
        timeout_s=60.0,
        verbose=False,
    )
    return replace(base, **kw)
