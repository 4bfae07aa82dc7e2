"""The harness configuration: one dataclass, defaults < YAML file < command-line flags, validated up front.

Every user error (unknown model, method, dataset, bad value) becomes a `ConfigError` with one line that lists the
valid choices; `benchmarks.run` prints it and exits with code 2, never with a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo._factory import parse_model_kwargs

__all__ = [
    "BENCHES",
    "METHODS",
    "TASKS",
    "WANDB_MODES",
    "ConfigError",
    "RunConfig",
    "default_dataset",
    "load_yaml",
    "resolve",
    "expand_models",
]

BENCHES = ("accuracy", "noise", "throughput")
METHODS = ("bp", "deinforeg", "greedy", "scpl")
TASKS = ("cls", "seg")
WANDB_MODES = ("offline", "online", "disabled")
NOISE_KINDS = ("symmetric", "pair")
OPTIMIZERS = ("sgd", "adamw", "lars")
DEFAULT_NOISE_SWEEP = [0.0, 0.2, 0.4, 0.6]


class ConfigError(ValueError):
    """A bad flag or value: `benchmarks.run` prints the message and exits with code 2."""


@dataclass
class RunConfig:
    """Everything one harness invocation needs; saved as `config.yaml` in the run folder and sent to W&B."""

    model: list[str] = field(default_factory=lambda: ["resnet18"])  # names or wildcards (expanded per task)
    task: str = "cls"  # cls (accuracy) | seg (mIoU)
    arch: str | None = None  # SMP architecture for seg (unet, fpn, deeplabv3plus, ...); None: unet
    methods: list[str] = field(default_factory=lambda: ["bp", "deinforeg"])  # trained side by side
    bench: str = "accuracy"  # accuracy | noise | throughput
    dataset: str | None = None  # None: the embedded default (digits for cls, shapes for seg)
    data_root: str | None = None  # root of real datasets ($DEINFOREG_DATA_ROOT or ./data when None)
    noise_rates: list[float] | None = None  # None: [0] for accuracy, [0, .2, .4, .6] for noise
    noise_kind: str = "symmetric"  # symmetric | pair; train labels only, validation/test stay clean
    epochs: int | None = None  # None: a few-minute CPU budget per task (3 for cls, 2 for seg)
    batch_size: int | None = None  # None: 64 for cls, 16 for seg
    seeds: list[int] = field(default_factory=lambda: [0])  # one training run per seed; rows give mean ± std
    num_blocks: int | None = None  # None: the model's natural stages
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    wandb: str = "offline"  # offline (no account; `wandb sync` later) | online | disabled
    wandb_project: str = "deinforeg-zoo"  # W&B project name
    out: str = "runs"  # parent folder of run folders
    resume: str | None = None  # a run folder to continue (its config.yaml wins over everything else)
    leaderboard_dir: str = "leaderboards"  # where result CSVs are appended
    img_size: int | None = None  # input resolution; None: the dataset's own (32 digits, 64 shapes)
    train_size: int | None = None  # use only this many training images (None: the whole split)
    eval_size: int | None = None  # use only this many validation and test images (None: whole splits)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to zoo.create_model (e.g. width=0.25)
    optimizer: str = "adamw"  # sgd | adamw | lars
    lr: float = 2e-3  # peak learning rate (cosine schedule)
    weight_decay: float = 5e-4  # decoupled weight decay (adamw) / L2 (sgd, lars)
    train_aug: bool = False  # dataset's own training augmentation
    bn_recalib: bool = True  # recompute BatchNorm statistics on the train images before each evaluation (all methods)
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    steps: int = 20  # throughput: timed steps per method
    warmup: int = 3  # throughput: untimed steps first
    stages: int = 1  # throughput: pipeline stages (devices); >1 dispatches to benchmarks.pipeline
    # throughput with stages > 1: micro-batches per batch for GPipe / 1F1B; each count is measured, the best compared
    micro_batches: list[int] = field(default_factory=lambda: [2, 4])
    progress: bool = True  # tqdm progress bars with ETA
    checkpoint: bool = True  # save a checkpoint after every epoch (needed for --resume)
    interrupt_after_steps: int | None = None  # testing: behave as if Ctrl-C came after this many steps
    config: str | None = None  # the YAML file these values were read from, if any

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def default_dataset(task: str) -> str:
    return "digits" if task == "cls" else "shapes"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file: a mapping whose keys are RunConfig fields (dashes or underscores)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in FIELDS:
            close = difflib.get_close_matches(key, list(FIELDS), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown option {k!r} in {path}{hint}; valid options: {', '.join(FIELDS)}")
        out[key] = v
    return out


def _as_list(v: Any, kind: type, name: str) -> list:
    if v is None:
        return v
    items = v if isinstance(v, list | tuple) else [s for s in str(v).split(",") if s.strip()]
    try:
        return [kind(str(s).strip()) if kind is not str else str(s).strip() for s in items]
    except ValueError as e:
        raise ConfigError(f"--{name.replace('_', '-')}: cannot read {v!r} as a list of {kind.__name__}") from e


def _choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not valid; valid choices: {', '.join(choices)}")


def parse_kwargs(items: Any) -> dict[str, Any]:
    """`width=0.25,projector=flatten` or a mapping → dict (zoo's parser; a malformed item is a ConfigError)."""
    try:
        return parse_model_kwargs(items)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def micro_batch_counts(value: Any) -> list[int]:
    """GPipe / 1F1B micro-batch counts from an int, a list or "2,4"; each must be a positive integer."""
    counts = _as_list([value] if isinstance(value, int) else value, int, "micro_batches")
    if not counts or min(counts) < 1:
        raise ConfigError(f"--micro-batches must be positive integers, got {value!r}")
    return counts


def resolve(values: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from merged values (unknown keys must already be rejected)."""
    v = dict(values)
    for name, kind in (
        ("model", str),
        ("methods", str),
        ("seeds", int),
        ("noise_rates", float),
    ):
        if name in v:
            v[name] = _as_list(v[name], kind, name)
    if "model_kwargs" in v:
        v["model_kwargs"] = parse_kwargs(v["model_kwargs"])
    if "micro_batches" in v:
        v["micro_batches"] = micro_batch_counts(v["micro_batches"])
    try:
        cfg = RunConfig(**v)
    except TypeError as e:
        raise ConfigError(str(e)) from e
    _choice(cfg.task, TASKS, "task")
    _choice(cfg.bench, BENCHES, "bench")
    _choice(cfg.wandb, WANDB_MODES, "wandb")
    _choice(cfg.noise_kind, NOISE_KINDS, "noise_kind")
    _choice(cfg.optimizer, OPTIMIZERS, "optimizer")
    if not cfg.methods:
        raise ConfigError(f"--methods is empty; valid choices: {', '.join(METHODS)}")
    for m in cfg.methods:
        _choice(m, METHODS, "methods")
    cfg.methods = list(dict.fromkeys(cfg.methods))
    if not cfg.model:
        raise ConfigError("--model is empty")
    if not cfg.seeds:
        raise ConfigError("--seeds is empty")
    if cfg.noise_rates is None:
        cfg.noise_rates = list(DEFAULT_NOISE_SWEEP) if cfg.bench == "noise" else [0.0]
    for r in cfg.noise_rates:
        if not 0.0 <= r < 1.0:
            raise ConfigError(f"--noise-rates: {r} is outside [0, 1)")
    if cfg.bench == "accuracy" and any(cfg.noise_rates):
        cfg.bench = "noise"  # a noisy accuracy run is a noise bench: keep the clean leaderboard clean
    for name in ("epochs", "batch_size", "num_blocks", "img_size", "train_size", "eval_size", "threads"):
        val = getattr(cfg, name)
        if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {val!r}")
    for name in ("stages", "steps"):
        val = getattr(cfg, name)
        if not isinstance(val, int) or val < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {val!r}")
    if cfg.warmup < 0:
        raise ConfigError(f"--warmup must be >= 0, got {cfg.warmup}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")
    if cfg.stages > 1 and cfg.bench != "throughput":
        raise ConfigError("--stages > 1 is only valid with --bench throughput")
    if cfg.device != "auto" and not (cfg.device == "cpu" or cfg.device.startswith("cuda")):
        raise ConfigError(f"--device {cfg.device!r} is not valid; valid choices: auto, cpu, cuda, cuda:N")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device}: CUDA is not available here; valid choices: auto, cpu")
    _check_dataset(cfg)
    if cfg.epochs is None:
        cfg.epochs = 3 if cfg.task == "cls" else 2
    if cfg.batch_size is None:
        cfg.batch_size = 64 if cfg.task == "cls" else 16
    cfg.model = expand_models(cfg.model, cfg.task)
    return cfg


def _check_dataset(cfg: RunConfig) -> None:
    import datasets

    if cfg.dataset is None:
        cfg.dataset = default_dataset(cfg.task)
    try:
        info = datasets.get_dataset_info(cfg.dataset)
    except datasets.DatasetError as e:
        raise ConfigError(str(e)) from e
    if info.task != cfg.task:
        valid = datasets.list_datasets(task=cfg.task)
        raise ConfigError(f"dataset {cfg.dataset!r} is for task {info.task}; for {cfg.task}: {', '.join(valid)}")
    cfg.dataset = info.name


def expand_models(names: list[str], task: str) -> list[str]:
    """Expand wildcards; reject unknown names with the closest known ones."""
    import zoo

    known = zoo.list_models(task=task)
    out: list[str] = []
    for name in names:
        if any(c in name for c in "*?["):
            hits = [n for n in known if fnmatch.fnmatch(n, name)]
            if not hits:
                raise ConfigError(f"--model {name!r} matches no {task} model")
            out += hits
        elif name.split(".")[0] in known:
            out.append(name)
        else:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f'unknown {task} model {name!r}{hint} (`python -c "import zoo; print(zoo.list_models())"`)'
            )
    return list(dict.fromkeys(out))
