"""Each bench's own options, one dataclass per bench, and the table of benches (`BENCHES`).

A field declared with `benchmarks.settings.option()` is a flag of `python -m benchmarks.run` and a YAML key, with
its default and help written once, here. A flag belongs to the benches whose options declare it: given to any
other bench (on the command line or in YAML, whatever its value) it is one line and exit code 2. Two benches may
declare the same option (`--steps` times throughput and pipeline steps); the flag is then shared.

The pipeline's options that `python -m zoo.pipeline` also takes are generated from `zoo.pipeline.flags`
(`PIPELINE_FLAGS`, defaults from `PipelineConfig`), so the two command lines cannot drift apart.

Adding a bench: its module `benchmarks/<name>.py` (a `run(cfg, run_dir, run_id, env, log)`, and a `runs(cfg)`
that lists its runs and raises every user error before anything starts), its options dataclass and `BENCHES` entry
here, and its renderer section in `leaderboards/`. Nothing else changes (benchmarks/README.md, "Adding a bench").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, make_dataclass
from typing import Any, NamedTuple

from zoo.pipeline.flags import PIPELINE_FLAGS, config_default

from .settings import option, options_of

__all__ = [
    "BENCHES",
    "ENGINE_ORDER",
    "AccuracyOptions",
    "Bench",
    "DepthOptions",
    "GrowOptions",
    "MemoryOptions",
    "NoiseOptions",
    "PipelineOptions",
    "ThroughputOptions",
    "bench_fields",
    "default_of",
    "owners",
]

# what the pipeline bench measures, all on the same model, data, batch and partition (see benchmarks/pipeline.py)
ENGINE_ORDER = (
    "bp-single", "bp-contended", "deinforeg-single", "deinforeg-pipe", "gpipe", "1f1b", "zb-interleaved", "zbv",
    "dualpipev", "bp-single-mb",
)  # fmt: skip


@dataclass
class AccuracyOptions:
    """Clean training labels; nothing beyond the common settings."""


@dataclass
class NoiseOptions:
    """A sweep of training-label noise rates; validation labels clean or, with `val_noise`, noisy alike (the test
    labels always stay clean)."""

    noise_rates: list[float] = option([0.0, 0.2, 0.4, 0.6], "comma-separated training label-noise rates, each "
                                      "checked against --noise-kind and the dataset's classes before anything "
                                      "trains", kind=float, many=True, minimum=0.0, metavar="LIST")  # fmt: skip
    noise_kind: str = option("symmetric", "label noise kind: symmetric, or pair (class c -> c+1, rates below 0.5)",
                             kind=str, metavar="KIND")  # fmt: skip
    val_noise: bool = option(False, "noisy-validation protocol (no trusted labels): the validation labels get the "
                             "same noise kind and rate as the training labels (their own draw, audited); the test "
                             "labels stay clean", recipe=True)  # fmt: skip


@dataclass
class ThroughputOptions:
    """Time and memory of one training step per method, one device."""

    steps: int = option(20, "measured optimizer steps", kind=int, minimum=1, metavar="N")
    warmup: int = option(3, "untimed steps first", kind=int, minimum=0, metavar="N")


def _pipeline_field(fl: Any) -> tuple[str, Any, Any]:
    default = config_default(fl.target)
    kw = dict(kind=fl.kind, many=fl.many, choices=fl.choices, flag=fl.flag, metavar=fl.metavar, minimum=fl.minimum)
    # the one flag the pipeline shares with another bench whose default differs: the help names both
    text = f"{fl.help} (default: {default}; --bench memory: memory)" if fl.name == "balance" else fl.help
    return fl.name, Any, option(default, text, **kw)


PipelineOptions = make_dataclass(
    "PipelineOptions",
    [
        *(_pipeline_field(fl) for fl in PIPELINE_FLAGS),
        ("micro_batches", list[int], option([2, 4], "micro-batches per batch for the BP pipelines; each count is "
         "measured, the best compared", kind=int, many=True, minimum=1, metavar="LIST")),
        ("engines", list[str], option(list(ENGINE_ORDER), "engines to measure", kind=str, many=True,
         choices=ENGINE_ORDER, metavar="LIST")),
        ("repeats", int, option(1, "measure every engine N times, interleaved; rows give medians", kind=int,
         minimum=1, metavar="N")),
        ("bandwidth_gbps", list[float], option([0.1, 1.0, 10.0], "links for the scaling model", kind=float, many=True,
         metavar="LIST")),
        ("plot", bool, option(True, "no scaling-model plot")),
    ],
)  # fmt: skip
PipelineOptions.__module__ = __name__
PipelineOptions.__doc__ = """Multi-device pipeline throughput (one process per stage); the stage flags are
`zoo.pipeline.flags.PIPELINE_FLAGS`, shared with `python -m zoo.pipeline`."""


@dataclass
class MemoryOptions:
    """Training peak memory per method and K against BP, one device, tensors counted (benchmarks/memory.py)."""

    block_counts: list[int] = option([2, 4], "K: each local method cut into K blocks (seg: the SMP adapter's "
                                     "num_blocks=K grouping, K up to its stages + 1)", kind=int, many=True, minimum=2,
                                     metavar="LIST")  # fmt: skip
    balance: str = option("memory", "cuts that balance the blocks' activation memory or their time",
                          kind=str, choices=("time", "memory"))  # fmt: skip
    memory_cap_mb: float | None = option(None, "also the largest batch whose training peak fits this cap, for BP and "
                                         "each local method at each K", kind=float, metavar="MB")  # fmt: skip


@dataclass
class GrowOptions:
    """Progressive growth (`--grow-at`) or extension of a checkpoint (`--init-from` + `--add-blocks`), each against
    the same model trained with all its blocks from the start (benchmarks/_growth.py)."""

    grow_at: list[int] | None = option(None, "block k+1 joins at epoch E_k, e.g. 1,2,3 for 4 blocks (block 1 trains "
                                       "from epoch 0)", kind=int, many=True, metavar="LIST")  # fmt: skip
    freeze_overtaken: bool = option(False, "freeze block k when block k+1 joins (it then only runs forward)")
    init_from: str | None = option(None, "extend this checkpoint folder or pretrained name (e.g. "
                                   "paper_vgg.deinforeg_digits); its blocks are frozen, only --add-blocks train; "
                                   "fixes --model, --methods, --img-size and --model-kwargs", kind=str,
                                   metavar="CKPT")  # fmt: skip
    add_blocks: list[str] | None = option(None, "blocks for --init-from, comma-separated or repeated: "
                                          "conv:WIDTH[:STRIDE[:DEPTH]] or stages:[NAME:]I[+J...], e.g. conv:64:2",
                                          kind=str, many=True, repeat=True, metavar="SPEC")  # fmt: skip


@dataclass
class DepthOptions:
    """Plain CNNs of growing depth (`plain_cnn`: no residuals), BP against decoupled methods (benchmarks/depth.py);
    depths, norms and inits are grid axes (rows name them), width and block size change what every run learns."""

    depths: list[int] = option([8, 16, 32, 48], "conv layers of the plain CNN (each a multiple of 4)", kind=int,
                               many=True, minimum=4, metavar="LIST")  # fmt: skip
    norms: list[str] = option(["none", "bn"], "BatchNorm after each conv or not", kind=str, many=True,
                              choices=("none", "bn"), metavar="LIST")  # fmt: skip
    inits: list[str] = option(["default", "kaiming"], "conv weight initialisation: PyTorch's or He's (fan-in, ReLU)",
                              kind=str, many=True, choices=("default", "kaiming"), metavar="LIST")  # fmt: skip
    width: int = option(16, "channels of every conv layer", kind=int, minimum=1, metavar="C", recipe=True)
    layers_per_block: int = option(4, "conv layers per decoupled block (K = depth / this; must divide every depth)",
                                   kind=int, minimum=1, metavar="N", recipe=True)  # fmt: skip
    grad_steps: list[int] = option([0, 1, 2, 4, 8], "training steps whose per-layer gradient norms are kept (and "
                                   "each epoch's first)", kind=int, many=True, minimum=0, metavar="LIST")  # fmt: skip


class Bench(NamedTuple):
    options: type  # the options dataclass
    help: str  # one line for --help
    trains: bool  # trains models to a budget (the run names its budget); else it times steps


BENCHES: dict[str, Bench] = {
    "accuracy": Bench(AccuracyOptions, "each method on clean labels", True),
    "noise": Bench(NoiseOptions, "a sweep of training-label noise rates", True),
    "throughput": Bench(ThroughputOptions, "one training step per method, one device", False),
    "pipeline": Bench(PipelineOptions, "one process per stage (multi-device)", False),
    "grow": Bench(GrowOptions, "grown models against all blocks at once", True),
    "depth": Bench(DepthOptions, "plain CNNs of growing depth: does decoupling rescue them?", True),
    "memory": Bench(MemoryOptions, "training peak memory per method and K against BP, one device", False),
}


def bench_fields() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every bench option: its field (the first bench's that declares it) and the benches that declare it."""
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name, bench in BENCHES.items():
        for key, f in options_of(bench.options).items():
            out.setdefault(key, (f, []))[1].append(name)
    return out


def owners(key: str) -> list[str]:
    """The benches that take option `key` (empty for a common setting or an unknown name)."""
    return bench_fields().get(key, (None, []))[1]


def default_of(key: str) -> Any:
    """The default of bench option `key`: what a bench without that option stands for (a clean run's noise kind)."""
    f = bench_fields()[key][0]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
