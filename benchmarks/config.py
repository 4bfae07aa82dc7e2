"""The harness configuration: one dataclass, defaults < YAML file < command-line flags, validated up front.

Every user error (unknown model, method, dataset, bad value) is a `zoo.errors.UserError` with one line that lists the
valid choices; `benchmarks.run` prints it and exits with code 2, never with a traceback. Method, task and optimizer
names and the per-task defaults come from `zoo`, where they are defined once.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo import METHODS, TASK_DEFAULTS, TASKS, UserError, parse_model_kwargs
from zoo.train import OPTIMIZERS

__all__ = [
    "BENCHES",
    "BUDGETS",
    "DATASET_BUDGETS",
    "ENGINE_ORDER",
    "NOISE_KINDS",
    "WANDB_MODES",
    "RunConfig",
    "load_yaml",
    "resolve",
    "expand_models",
    "budget_note",
]

BENCHES = ("accuracy", "noise", "throughput", "pipeline", "grow")
WANDB_MODES = ("offline", "online", "disabled")
NOISE_KINDS = ("symmetric", "pair")
DEFAULT_NOISE_SWEEP = [0.0, 0.2, 0.4, 0.6]
# what the pipeline bench measures, all on the same model, data, batch and partition (see benchmarks/pipeline.py)
ENGINE_ORDER = (
    "bp-single", "deinforeg-single", "deinforeg-pipe", "gpipe", "1f1b", "zb-interleaved", "zbv", "dualpipev",
    "bp-single-mb",
)  # fmt: skip
# named budgets: `quick` (the CPU default: minutes on 2 cores) and `converged` (the recipe the leaderboards report; the
# CUDA default). `--budget auto` picks by the resolved device. Values the user sets (flag or YAML) always win; a
# dataset not listed uses the task's defaults (zoo.TASK_DEFAULTS) and all its images.
BUDGETS = ("auto", "quick", "converged")
DATASET_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "shapes": {
        # many images, few epochs: Unet-resnet50 BP, 300 steps on 2,400 images, 49.3-50.9 test mIoU (1 or 2 threads);
        # 300 steps on 600 images (8 epochs) stayed under 40 (resnet18). 350 steps on 2,800 images: see README
        "quick": {"img_size": 64, "train_size": 2800, "eval_size": 100, "epochs": 2, "lr": 0.003},
        # leaderboards/explore: BP's validation mIoU over a 24-epoch schedule stops rising at epoch 16 (93.6)
        "converged": {"img_size": 64, "train_size": 1200, "eval_size": 150, "epochs": 16, "lr": 0.003},
    },
    "digits": {"quick": {"epochs": 3}, "converged": {"epochs": 12}},  # all 1,078 training images
}


@dataclass
class RunConfig:
    """Everything one harness invocation needs; saved as `config.yaml` in the run folder and sent to W&B."""

    model: list[str] = field(default_factory=lambda: ["resnet18"])  # names or wildcards (expanded per task)
    task: str = "cls"  # cls (accuracy) | seg (mIoU)
    arch: str | None = None  # SMP architecture for seg (unet, fpn, deeplabv3plus, ...); None: unet
    methods: list[str] = field(default_factory=lambda: ["bp", "deinforeg"])  # trained side by side
    bench: str = "accuracy"  # accuracy | noise | throughput (one device) | pipeline (multi-device) | grow
    dataset: str | None = None  # None: the embedded default (digits for cls, shapes for seg)
    data_root: str | None = None  # root of real datasets ($DEINFOREG_DATA_ROOT or ./data when None)
    noise_rates: list[float] | None = None  # None: [0] for accuracy, [0, .2, .4, .6] for noise
    noise_kind: str = "symmetric"  # symmetric | pair; train labels only, validation/test stay clean
    budget: str = "auto"  # auto (converged on CUDA, quick otherwise) | quick | converged: DATASET_BUDGETS
    epochs: int | None = None  # None: the budget's, else the task's default (zoo.TASK_DEFAULTS)
    batch_size: int | None = None  # None: the task's default (64 for cls, 16 for seg)
    seeds: list[int] = field(default_factory=lambda: [0])  # one training run per seed; rows give mean ± std
    num_blocks: int | None = None  # None: the model's natural stages
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    wandb: str = "offline"  # offline (no account; `wandb sync` later) | online | disabled
    wandb_project: str = "deinforeg-zoo"  # W&B project name
    out: str = "runs"  # parent folder of run folders
    resume: str | None = None  # a run folder to continue (its config.yaml wins over everything else)
    leaderboard_dir: str = "leaderboards"  # where result CSVs are appended
    img_size: int | None = None  # input resolution; None: the dataset's budget or its own size
    train_size: int | None = None  # use only this many training images (None: the dataset's budget or all)
    eval_size: int | None = None  # use only this many validation and test images (None: the budget or all)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to zoo.create_model (e.g. width=0.25)
    optimizer: str = "adamw"  # sgd | adamw | lars
    lr: float = 2e-3  # peak learning rate (cosine schedule); the dataset's budget may set it when not given
    weight_decay: float = 5e-4  # decoupled weight decay (adamw) / L2 (sgd, lars)
    train_aug: bool = False  # dataset's own training augmentation
    bn_recalib: bool = True  # recompute BatchNorm statistics on the train images before each evaluation (all methods)
    threads: int | None = None  # torch intra-op threads (None: torch's default; pipeline on CPU: 1 per stage)
    steps: int = 20  # throughput / pipeline: measured steps per method or engine
    warmup: int = 3  # throughput / pipeline: untimed steps first
    stages: int = 2  # pipeline: stage processes (devices)
    # pipeline: micro-batches per batch for GPipe / 1F1B; each count is measured, the best compared
    micro_batches: list[int] = field(default_factory=lambda: [2, 4])
    engines: list[str] = field(default_factory=lambda: list(ENGINE_ORDER))  # pipeline: engines to measure
    repeats: int = 1  # pipeline: measure every engine this many times, interleaved; rows give medians
    partition: list[int] | None = None  # pipeline: blocks per stage (None: profile and balance)
    pin_cpu: bool = True  # pipeline on CPU: give each stage process its own core
    replicas: int = 1  # pipeline: processes per stage (data replicas), each on a 1/replicas shard of every batch
    replica_loss: str = "global"  # pipeline: global (loss and BatchNorm over the stage's batch) | shard (per replica)
    oversubscribe: bool = False  # pipeline: allow more processes than devices (GPUs, or cores on CPU)
    bandwidth_gbps: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])  # pipeline: scaling-model links
    plot: bool = True  # pipeline: plot the scaling model into the leaderboard folder
    # grow (benchmarks/_growth.py): block k+1 joins at epoch grow_at[k-1]; compared with all blocks from the start
    grow_at: list[int] | None = None
    freeze_overtaken: bool = False  # grow: freeze block k when block k+1 joins (it then only runs forward)
    init_from: str | None = None  # grow: extend this checkpoint folder or pretrained name (its blocks frozen)
    add_blocks: list[str] | None = None  # grow: blocks --init-from gets, e.g. ["conv:64:2"] or ["stages:resnet34:3"]
    allow_dirty: bool = False  # append to the repository's leaderboards/ from a tree with uncommitted changes
    progress: bool = True  # tqdm progress bars with ETA
    checkpoint: bool = True  # save a checkpoint after every epoch (needed for --resume)
    interrupt_after_steps: int | None = None  # testing: behave as if Ctrl-C came after this many steps
    config: str | None = None  # the YAML file these values were read from, if any

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def recipe(self) -> dict[str, Any]:
        """Every setting that changes a trained model's result (what `config_hash` hashes): the config without
        where output goes, how progress shows, the seeds (rows list them) and the pipeline / throughput knobs."""
        return {k: v for k, v in self.to_dict().items() if k not in _NOT_RECIPE}

    def config_hash(self) -> str:
        """12 hex digits of the sha256 of `recipe()`: rows of the same recipe share it."""
        text = json.dumps(self.recipe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


# fields that do not change what a training run learns
_NOT_RECIPE = {
    "model", "methods", "bench", "seeds", "device", "wandb", "wandb_project", "out", "resume", "leaderboard_dir",
    "threads", "steps", "warmup", "stages", "micro_batches", "engines", "repeats", "partition", "pin_cpu",
    "bandwidth_gbps", "plot", "allow_dirty", "progress", "checkpoint", "interrupt_after_steps", "config",
    "noise_rates", "budget",
}  # fmt: skip
# the budget's name is not part of the recipe: the values it resolved to are


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file: a mapping whose keys are RunConfig fields (dashes or underscores)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option: value")
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in FIELDS:
            close = difflib.get_close_matches(key, list(FIELDS), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"unknown option {k!r} in {path}{hint}; valid options: {', '.join(FIELDS)}")
        out[key] = v
    return out


def _as_list(v: Any, kind: type, name: str) -> list:
    if v is None:
        return v
    items = v if isinstance(v, list | tuple) else [s for s in str(v).split(",") if s.strip()]
    try:
        return [kind(str(s).strip()) if kind is not str else str(s).strip() for s in items]
    except ValueError as e:
        raise UserError(f"--{name.replace('_', '-')}: cannot read {v!r} as a list of {kind.__name__}") from e


def _choice(value: Any, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise UserError(f"--{name.replace('_', '-')} {value!r} is not valid; valid choices: {', '.join(choices)}")


def micro_batch_counts(value: Any) -> list[int]:
    """GPipe / 1F1B micro-batch counts from an int, a list or "2,4"; each must be a positive integer."""
    counts = _as_list([value] if isinstance(value, int) else value, int, "micro_batches")
    if not counts or min(counts) < 1:
        raise UserError(f"--micro-batches must be positive integers, got {value!r}")
    return counts


def resolve(values: dict[str, Any]) -> RunConfig:
    """Build and validate a RunConfig from merged values (unknown keys must already be rejected)."""
    v = dict(values)
    for name, kind in (
        ("model", str),
        ("methods", str),
        ("seeds", int),
        ("noise_rates", float),
        ("engines", str),
        ("partition", int),
        ("bandwidth_gbps", float),
        ("grow_at", int),
    ):
        if name in v:
            v[name] = _as_list(v[name], kind, name)
    if v.get("add_blocks") is not None:  # repeated and/or comma-separated
        items = v["add_blocks"] if isinstance(v["add_blocks"], list | tuple) else [v["add_blocks"]]
        v["add_blocks"] = [s.strip() for item in items for s in str(item).split(",") if s.strip()]
    if "model_kwargs" in v:
        v["model_kwargs"] = parse_model_kwargs(v["model_kwargs"])
    if "micro_batches" in v:
        v["micro_batches"] = micro_batch_counts(v["micro_batches"])
    try:
        cfg = RunConfig(**v)
    except TypeError as e:
        raise UserError(str(e)) from e
    _choice(cfg.task, TASKS, "task")
    _choice(cfg.bench, BENCHES, "bench")
    _choice(cfg.wandb, WANDB_MODES, "wandb")
    _choice(cfg.noise_kind, NOISE_KINDS, "noise_kind")
    _choice(cfg.optimizer, OPTIMIZERS, "optimizer")
    _choice(cfg.budget, BUDGETS, "budget")
    if not cfg.methods:
        raise UserError(f"--methods is empty; valid choices: {', '.join(METHODS)}")
    for m in cfg.methods:
        _choice(m, METHODS, "methods")
    cfg.methods = list(dict.fromkeys(cfg.methods))
    if not cfg.model:
        raise UserError("--model is empty")
    if not cfg.seeds:
        raise UserError("--seeds is empty")
    if cfg.noise_rates is None:
        cfg.noise_rates = list(DEFAULT_NOISE_SWEEP) if cfg.bench == "noise" else [0.0]
    for r in cfg.noise_rates:
        if not 0.0 <= r < 1.0:
            raise UserError(f"--noise-rates: {r} is outside [0, 1)")
    if cfg.bench == "accuracy" and any(cfg.noise_rates):
        cfg.bench = "noise"  # a noisy accuracy run is a noise bench: keep the clean leaderboard clean
    for name in ("epochs", "batch_size", "num_blocks", "img_size", "train_size", "eval_size", "threads"):
        val = getattr(cfg, name)
        if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val < 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {val!r}")
    for name in ("stages", "steps", "repeats", "replicas"):
        val = getattr(cfg, name)
        if not isinstance(val, int) or val < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {val!r}")
    if cfg.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {cfg.warmup}")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    for e in cfg.engines:
        _choice(e, ENGINE_ORDER, "engines")
    _choice(cfg.replica_loss, ("global", "shard"), "replica_loss")
    if cfg.partition is not None and min(cfg.partition, default=0) < 1:
        raise UserError(f"--partition must be positive block counts per stage, got {cfg.partition}")
    if cfg.bench != "pipeline" and cfg.stages != FIELDS["stages"].default:
        raise UserError(f"--stages is for --bench pipeline (the multi-device bench), not --bench {cfg.bench}")
    if cfg.device != "auto":
        from zoo.runtime import resolve_device

        try:
            resolve_device(cfg.device)
        except UserError as e:
            raise UserError(f"--{e}") from None
    defaults = TASK_DEFAULTS[cfg.task]
    cfg.arch = cfg.arch or defaults["arch"]
    if cfg.task == "cls" and cfg.arch is not None:
        raise UserError("--arch is the SMP architecture of --task seg; a classifier is named by --model alone")
    _check_dataset(cfg)
    _apply_budget(cfg, values)
    cfg.epochs = cfg.epochs or defaults["epochs"]
    cfg.batch_size = cfg.batch_size or defaults["batch_size"]
    _check_growth(cfg, values)
    cfg.model = expand_models(cfg.model, cfg.task)
    return cfg


def _apply_budget(cfg: RunConfig, given: dict[str, Any]) -> None:
    """Resolve `auto` by the device (CUDA: converged, else quick) and fill what the user left unset from the
    dataset's budget; the resolved name is kept in `cfg.budget` (recorded, not hashed)."""
    if cfg.budget == "auto":
        from zoo.runtime import resolve_device

        cfg.budget = "converged" if resolve_device(cfg.device).type == "cuda" else "quick"
    for k, v in DATASET_BUDGETS.get(cfg.dataset, {}).get(cfg.budget, {}).items():
        if given.get(k) is None:
            setattr(cfg, k, v)


def budget_note(cfg: RunConfig) -> str:
    """One line for the end of a run: which budget ran, with what, and where the other one is."""
    size = f"{cfg.img_size} px, " if cfg.img_size else ""
    n = f"{cfg.train_size or 'all'} train / {cfg.eval_size or 'all'} eval images"
    what = f"budget: {cfg.budget} ({cfg.epochs} epochs, {size}{n}, lr {cfg.lr:g}"
    if cfg.budget == "quick":
        return f"{what}; the CPU default: the converged recipe is `--budget converged`, its leaderboard: {_BOARD})"
    return f"{what}; the recipe the leaderboards report, the CUDA default; a quick CPU run is `--budget quick`)"


_BOARD = "leaderboards/README.md"


def _check_growth(cfg: RunConfig, given: dict[str, Any]) -> None:
    """Growth options imply --bench grow; a schedule or a parent checkpoint that cannot work fails here."""
    from ._growth import GROW_OPTIONS, check_method, parent_checkpoint, parse_block_specs

    if not any(getattr(cfg, k) for k in GROW_OPTIONS):
        if cfg.bench == "grow":
            raise UserError("--bench grow needs --grow-at E1,E2,... (progressive) or --init-from with --add-blocks")
        return
    if cfg.bench == "accuracy":
        cfg.bench = "grow"  # a grown run is compared with all-at-once training: keep the accuracy leaderboard plain
    if cfg.bench != "grow":
        raise UserError(f"--grow-at, --freeze-overtaken, --init-from and --add-blocks are for --bench grow, not "
                        f"--bench {cfg.bench}")  # fmt: skip
    if cfg.freeze_overtaken and not cfg.grow_at:
        raise UserError("--freeze-overtaken needs --grow-at (it freezes a block when the next one joins)")
    if bool(cfg.init_from) != bool(cfg.add_blocks):
        raise UserError("--init-from and --add-blocks go together: a checkpoint to extend and the blocks it gets")
    if cfg.grow_at and cfg.init_from:
        raise UserError("--grow-at and --init-from do not combine: grow progressively or extend a checkpoint")
    if "methods" not in given:
        cfg.methods = ["deinforeg"]
    if cfg.grow_at:
        at = cfg.grow_at
        if any(b <= a for a, b in zip(at, at[1:])):
            raise UserError(f"--grow-at {','.join(map(str, at))}: epochs must be strictly increasing (no repeats)")
        if not 1 <= at[0] or at[-1] >= cfg.epochs:
            raise UserError(f"--grow-at {','.join(map(str, at))}: each epoch must lie in 1..{cfg.epochs - 1} "
                            f"(block 1 trains from epoch 0; --epochs is {cfg.epochs})")  # fmt: skip
        check_method(cfg.methods)
        return
    parse_block_specs(cfg.add_blocks)
    _, parent = parent_checkpoint(cfg.init_from)
    model = parent["model"]
    if parent.get("task", model.get("task")) != cfg.task:
        raise UserError(f"--init-from {cfg.init_from} is a {parent.get('task')} checkpoint; this run is --task "
                        f"{cfg.task}")  # fmt: skip
    from .build import dataset_info

    n = dataset_info(cfg.dataset).num_classes
    if int(parent.get("num_classes", model.get("num_classes"))) != n:
        raise UserError(f"--init-from {cfg.init_from} has {parent.get('num_classes')} classes; dataset "
                        f"{cfg.dataset} has {n}")  # fmt: skip
    check_method([model["method"]])
    derived = {"model": [model["name"]], "methods": [model["method"]], "img_size": model.get("img_size"),
               "model_kwargs": {k: v for k, v in model.items() if k not in _PARENT_KEYS}}  # fmt: skip
    for key, want in derived.items():
        if key in given and given[key] is not None and getattr(cfg, key) != want:
            raise UserError(f"--{key.replace('_', '-')} {getattr(cfg, key)} differs from what --init-from "
                            f"{cfg.init_from} fixes ({want}); leave it out")  # fmt: skip
        setattr(cfg, key, want)


_PARENT_KEYS = ("name", "method", "task", "num_classes", "img_size", "num_blocks", "arch")


def _check_dataset(cfg: RunConfig) -> None:
    import datasets

    from .build import dataset_info

    cfg.dataset = cfg.dataset or TASK_DEFAULTS[cfg.task]["dataset"]
    info = dataset_info(cfg.dataset)
    if info.task != cfg.task:
        valid = datasets.list_datasets(task=cfg.task)
        raise UserError(f"dataset {cfg.dataset!r} is for task {info.task}; for {cfg.task}: {', '.join(valid)}")
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
                raise UserError(f"--model {name!r} matches no {task} model")
            out += hits
        elif name.split(".")[0] in known:
            out.append(name)
        else:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f'unknown {task} model {name!r}{hint} (`python -c "import zoo; print(zoo.list_models())"`)')
    return list(dict.fromkeys(out))
