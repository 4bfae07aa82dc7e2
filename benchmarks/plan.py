"""Settings, then a plan: resolve every name once, check everything that depends on it, list the runs.

`read_settings` turns merged values (defaults < YAML < flags) into a `Settings` with its bench's options; a value
given to a bench that does not take it is an error, whatever the value. `plan` then resolves, in this order: the
library's names (task, methods, optimizer, device, model keywords), the dataset, the budget (`DATASET_BUDGETS`),
the bench's own settings (its module's `prepare`: noise rates against their kind and the dataset's classes, a parent
checkpoint for `--init-from`), the model names, and finally the runs (its module's `runs`), building every model
once. Every user error surfaces here, before any run folder exists or anything trains. Whatever the plan sets that
the user did not give is listed in `Settings.derived` (setting, value, source): the CLI prints one line per source
and the run folder's config.yaml records it.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

from zoo import METHODS, TASK_DEFAULTS, TASKS, parse_model_kwargs, runtime
from zoo.train import OPTIMIZERS, TrainConfig

from .options import BENCHES, bench_fields
from .settings import Settings, coerce, fail, flag_name, options_of

__all__ = [
    "BUDGETS",
    "DATASET_BUDGETS",
    "Plan",
    "budget_note",
    "derived_lines",
    "expand_models",
    "plan",
    "read_settings",
    "resolve",
]

# named budgets: `quick` (the CPU default: minutes on 2 cores) and `converged` (the recipe the leaderboards report; the
# CUDA default). `--budget auto` picks by the resolved device. Values the user sets (flag or YAML) always win; a
# dataset not listed uses the task's defaults (zoo.TASK_DEFAULTS) and all its images.
BUDGETS = ("auto", "quick", "converged")
DATASET_BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "shapes": {
        # many images, few epochs. Chosen first on test mIoU (95060a3, f9aab89); rechecked on validation
        # (leaderboards/explore/quick_budget): Unet-resnet50 BP, seed 0, validation mIoU 56.4 after 350 steps on
        # 2,800 images against 52.0 after 300 steps on 2,400. (600 images x 8 epochs, resnet18: not rechecked.)
        "quick": {"img_size": 64, "train_size": 2800, "eval_size": 100, "epochs": 2, "lr": 0.003},
        # 24 epochs: 16 (chosen from BP's curve alone) failed issue 20's rule, 1.5x the epochs moves BP's and
        # DeInfoReg's selected validation mIoU by +2.93 / +2.65 (leaderboards/explore/convergence/check_shapes.md);
        # on the 24-epoch schedule both curves are flat over its last third. Rows at 16 epochs record their epochs.
        "converged": {"img_size": 64, "train_size": 1200, "eval_size": 150, "epochs": 24, "lr": 0.003},
    },
    "digits": {"quick": {"epochs": 3}, "converged": {"epochs": 12}},  # all 1,078 training images
}


class Plan(NamedTuple):
    """A checked request: the resolved config every bench reads, and the bench's runs in the order they run."""

    config: Settings
    runs: list[Any]


# -- settings ----------------------------------------------------------------------------------------------------
def known_keys() -> list[str]:
    """Every setting name a YAML file may hold."""
    return [*options_of(Settings), *bench_fields()]


def read_settings(values: dict[str, Any], given: Any = None) -> Settings:
    """Typed settings from merged values; a bench option given to another bench is an error, whatever its value."""
    common, shared = options_of(Settings), bench_fields()
    bench = values.get("bench", Settings.bench)
    if bench not in BENCHES:
        fail(f"--bench {bench!r} is not valid; valid choices: {', '.join(BENCHES)}")
    mine = options_of(BENCHES[bench].options)
    kw: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    for key, value in values.items():
        if key == "config":
            kw[key] = value
        elif key in ("derived", "given"):
            continue  # a saved config.yaml's record of the last plan: planned again
        elif key in common:
            kw[key] = coerce(key, common[key], value)
        elif key in mine:
            opts[key] = coerce(key, mine[key], value)
        elif key in shared:
            f, benches = shared[key]
            fail(f"{flag_name(key, f)} is for --bench {' or '.join(benches)}, not --bench {bench}")
        else:
            fail(f"unknown option {key!r}; valid options: {', '.join(known_keys())}")
    given = tuple(values if given is None else given)
    return Settings(**kw, options=BENCHES[bench].options(**opts), given=given)


# -- the plan ----------------------------------------------------------------------------------------------------
def plan(settings: Settings) -> Plan:
    """Resolve and check `settings` (see the module docstring); returns the resolved config and the runs."""
    cfg = dataclasses.replace(settings, derived=[], options=dataclasses.replace(settings.options))
    given = set(cfg.given)

    def note(setting: str, value: Any, source: str) -> None:
        cfg.derived.append({"setting": setting, "value": value, "source": source})

    _check_names(cfg)
    _check_dataset(cfg)
    _apply_budget(cfg, given, note)
    defaults = TASK_DEFAULTS[cfg.task]
    for key in ("epochs", "batch_size"):
        if getattr(cfg, key) is None:
            setattr(cfg, key, defaults[key])
            note(key, defaults[key], f"the {cfg.task} task's default (zoo.TASK_DEFAULTS)")
    if cfg.warmup_epochs and cfg.warmup_epochs >= cfg.epochs:
        fail(f"--warmup-epochs ({cfg.warmup_epochs:g}) must be below --epochs ({cfg.epochs}): the cosine follows it")
    train = TrainConfig()
    for key in ("optimizer", "lr", "weight_decay"):  # the trainer's defaults, written once in zoo.train
        if getattr(cfg, key) is None:
            setattr(cfg, key, getattr(train, key))
    module = importlib.import_module(f"{__package__}.{cfg.bench}")
    prepare: Callable | None = getattr(module, "prepare", None)
    if prepare is not None:
        prepare(cfg, given, note)
    cfg.model = expand_models(cfg.model, cfg.task)
    runs = list(module.runs(cfg))
    from .build import preflight

    preflight(cfg)  # every model built once: a keyword or size it cannot take stops here
    return Plan(cfg, runs)


def resolve(values: dict[str, Any]) -> Settings:
    """The resolved config of merged values (tests and scripts; the CLI keeps the runs too)."""
    return plan(read_settings(values)).config


def _choice(value: Any, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        fail(f"{flag} {value!r} is not valid; valid choices: {', '.join(choices)}")


def _check_names(cfg: Settings) -> None:
    """The names the library defines: task, methods, optimizer, device, model keywords, arch."""
    _choice(cfg.task, TASKS, "--task")
    for m in cfg.methods:
        _choice(m, METHODS, "--methods")
    cfg.methods = list(dict.fromkeys(cfg.methods))
    if cfg.optimizer is not None:
        _choice(cfg.optimizer, OPTIMIZERS, "--optimizer")
    if cfg.lr is not None and cfg.lr <= 0:
        fail(f"--lr must be positive, got {cfg.lr}")
    if cfg.device != "auto":
        runtime.resolve_device(cfg.device)
    cfg.model_kwargs = parse_model_kwargs(cfg.model_kwargs)
    arch = TASK_DEFAULTS[cfg.task]["arch"]
    if cfg.task == "cls" and cfg.arch is not None:
        fail("--arch is the SMP architecture of --task seg; a classifier is named by --model alone")
    cfg.arch = cfg.arch or arch


def _check_dataset(cfg: Settings) -> None:
    import datasets

    from .build import dataset_info

    cfg.dataset = cfg.dataset or TASK_DEFAULTS[cfg.task]["dataset"]
    info = dataset_info(cfg.dataset)
    if info.task != cfg.task:
        valid = datasets.list_datasets(task=cfg.task)
        fail(f"dataset {cfg.dataset!r} is for task {info.task}; for {cfg.task}: {', '.join(valid)}")
    cfg.dataset = info.name


def _apply_budget(cfg: Settings, given: set[str], note: Callable) -> None:
    """Resolve `auto` by the device (CUDA: converged, else quick) and fill what the user left unset from the
    dataset's budget; the resolved name is kept in `cfg.budget` (recorded, not hashed)."""
    if cfg.budget == "auto":
        device = runtime.resolve_device(cfg.device)
        cfg.budget = "converged" if device.type == "cuda" else "quick"
        note("budget", cfg.budget, f"--budget auto on {device.type}")
    for k, v in DATASET_BUDGETS.get(cfg.dataset, {}).get(cfg.budget, {}).items():
        if getattr(cfg, k) is None:
            setattr(cfg, k, v)
            note(k, v, f"budget {cfg.budget} of {cfg.dataset} (benchmarks/plan.py DATASET_BUDGETS)")


def expand_models(names: list[str], task: str) -> list[str]:
    """Expand wildcards; reject unknown names with the closest known ones."""
    import zoo

    known = zoo.list_models(task=task)
    out: list[str] = []
    for name in names:
        if any(c in name for c in "*?["):
            hits = [n for n in known if fnmatch.fnmatch(n, name)]
            if not hits:
                fail(f"--model {name!r} matches no {task} model")
            out += hits
        elif name.split(".")[0] in known:
            out.append(name)
        else:
            close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            fail(f'unknown {task} model {name!r}{hint} (`python -c "import zoo; print(zoo.list_models())"`)')
    return list(dict.fromkeys(out))


# -- what the run prints -----------------------------------------------------------------------------------------
def derived_lines(cfg: Settings) -> list[str]:
    """One line per source of the settings the plan derived: what it set and from where."""
    by: dict[str, list[str]] = {}
    for d in cfg.derived:
        value = ",".join(map(str, d["value"])) if isinstance(d["value"], list) else d["value"]
        by.setdefault(d["source"], []).append(f"{d['setting']}={value}")
    return [f"set {', '.join(items)} from {source}" for source, items in by.items()]


def budget_note(cfg: Settings) -> str:
    """One line for the end of a run: which budget ran, with what, and where the other one is."""
    size = f"{cfg.img_size} px, " if cfg.img_size else ""
    n = f"{cfg.train_size or 'all'} train / {cfg.eval_size or 'all'} eval images"
    what = f"budget: {cfg.budget} ({cfg.epochs} epochs, {size}{n}, lr {cfg.lr:g}"
    what += f", warm-up {cfg.warmup_epochs:g} epochs" if cfg.warmup_epochs else ""
    what += f", gradient norm clipped at {cfg.grad_clip:g}" if cfg.grad_clip else ""
    if cfg.budget == "quick":
        return f"{what}; the CPU default: the converged recipe is `--budget converged`, its leaderboard: {_BOARD})"
    return f"{what}; the recipe the leaderboards report, the CUDA default; a quick CPU run is `--budget quick`)"


_BOARD = "leaderboards/README.md"
