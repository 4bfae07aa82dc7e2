"""What a user asked the harness for, typed, before anything is looked up: settings, then a plan, then runs.

A setting is a dataclass field declared with `option(default, help, ...)`: its command-line flag, its help and its
YAML key are generated from the field, so each default is written once. `Settings` holds the settings every bench
shares; each bench's own options are a dataclass of the same kind (benchmarks/options.py), kept in
`Settings.options`. Values merge as defaults < `--config` YAML < flags (`read_values`), and are only coerced to
their types and range-checked here: nothing is loaded, probed or downloaded, and this module imports nothing of the
repository. Names (models, datasets, methods), budgets, devices and parent checkpoints are resolved, and checked
against each other, by `benchmarks.plan`.

The recipe a run trains with is named by `recipe()` and its 12-digit `config_hash()`: every setting that changes
what a given model learns by a given method, but not the model and method themselves (each row names those beside
the hash; rows of different models or methods trained on one recipe share it). Every leaderboard row keeps the hash,
and every committed row's hash recomputes from its stored settings (tests/test_settings.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "RECIPE_KEYS",
    "WANDB_MODES",
    "RunConfig",
    "Settings",
    "add_flags",
    "coerce",
    "fail",
    "load_yaml",
    "option",
    "options_of",
]

WANDB_MODES = ("offline", "online", "disabled")


def fail(message: str) -> None:
    """Raise the one user-error type (`zoo.errors.UserError`, exit code 2 at the CLI). Imported here, on the error
    path only, so that importing the settings imports no library (its package loads checkpoints and models)."""
    from zoo.errors import UserError

    raise UserError(message)


def option(
    default: Any,
    help: str,
    *,
    kind: Callable[[str], Any] | None = None,
    many: bool = False,
    repeat: bool = False,
    minimum: int | float | None = None,
    choices: tuple[str, ...] | None = None,
    flag: str | None = None,
    metavar: str | None = None,
    hidden: bool = False,
    recipe: bool = False,
) -> Any:
    """A setting: its default (written once, here), help, value type (`kind`, of each item when `many`: a list
    given as `a,b` or a YAML list; `repeat`: the flag may also be given several times), lower bound, choices, flag
    name (default `--name-with-dashes`; `--no-x` for a true bool) and whether it changes what a run learns (`recipe`:
    then it joins the hash whenever it differs from its default)."""
    meta = {"help": help, "kind": kind, "many": many, "repeat": repeat, "minimum": minimum, "choices": choices,
            "flag": flag, "metavar": metavar, "hidden": hidden, "recipe": recipe}  # fmt: skip
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def options_of(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of `cls` declared with `option()` (the ones with a flag)."""
    return {f.name: f for f in dataclasses.fields(cls) if "help" in f.metadata}


@dataclass
class Settings:
    """Everything one harness invocation needs; saved as `config.yaml` in the run folder and sent to W&B. Values are
    as given until `benchmarks.plan` resolves them (model wildcards, the dataset, the budget's values)."""

    model: list[str] = option(["resnet18"], "model name(s), comma-separated, wildcards allowed; seg: the SMP "
                              "encoder, e.g. resnet50", kind=str, many=True, metavar="NAMES")  # fmt: skip
    task: str = option("cls", "cls (accuracy) or seg (mIoU)")
    arch: str | None = option(None, "SMP architecture for --task seg: unet, fpn, deeplabv3plus, ... (default: unet)",
                              kind=str, metavar="ARCH")  # fmt: skip
    methods: list[str] = option(["bp", "deinforeg"], "methods trained side by side, comma-separated", kind=str,
                                many=True, metavar="LIST")  # fmt: skip
    bench: str = option("accuracy", "what to measure (each bench's own flags are listed below)")
    dataset: str | None = option(None, "dataset (default: digits for cls, shapes for seg: embedded, no download)",
                                 kind=str, metavar="NAME")  # fmt: skip
    data_root: str | None = option(None, "root of real datasets (default: $DEINFOREG_DATA_ROOT or ./data)", kind=str,
                                   metavar="DIR")  # fmt: skip
    budget: str = option("auto", "auto, quick or converged: the dataset's recipe for what is left unset (epochs, "
                         "image size, train/eval images, lr); auto is converged on CUDA, quick otherwise; flags always "
                         "win", choices=("auto", "quick", "converged"), metavar="NAME")  # fmt: skip
    epochs: int | None = option(None, "training epochs (default: the budget's, else 3 for cls, 2 for seg)", kind=int,
                                minimum=1, metavar="N")  # fmt: skip
    batch_size: int | None = option(None, "batch size (default: 64 for cls, 16 for seg)", kind=int, minimum=1,
                                    metavar="N")  # fmt: skip
    seeds: list[int] = option([0], "comma-separated seeds; rows report mean ± std over them", kind=int, many=True,
                              metavar="LIST")  # fmt: skip
    num_blocks: int | None = option(None, "merge the model's stages into K blocks (default: natural stages)",
                                    kind=int, minimum=1, metavar="K")  # fmt: skip
    device: str = option("auto", "auto, cpu, cuda or cuda:N", kind=str, metavar="DEV")
    wandb: str = option("offline", "W&B mode; offline needs no account", choices=WANDB_MODES)
    wandb_project: str = option("deinforeg-zoo", "W&B project", kind=str, metavar="NAME")
    out: str = option("runs", "parent folder of run folders", kind=str, metavar="DIR")
    leaderboard_dir: str = option("leaderboards", "where leaderboard CSVs are appended", kind=str, metavar="DIR")
    img_size: int | None = option(None, "input resolution (default: the budget's, else the dataset's)", kind=int,
                                  minimum=1, metavar="PX")  # fmt: skip
    train_size: int | None = option(None, "train on only N images (default: the budget's, else all)", kind=int,
                                    minimum=1, metavar="N")  # fmt: skip
    eval_size: int | None = option(None, "validate and test on only N images each (default: the budget's, else all)",
                                   kind=int, minimum=1, metavar="N")  # fmt: skip
    model_kwargs: dict[str, Any] = option({}, "extra zoo.create_model arguments, e.g. width=0.25,projector=flatten",
                                          metavar="K=V,...")  # fmt: skip
    optimizer: str | None = option(None, "optimizer (default: zoo.train.TrainConfig's, adamw)", kind=str,
                                   metavar="NAME")  # fmt: skip
    lr: float | None = option(None, "peak learning rate, cosine decay (default: the budget's, else zoo.train."
                              "TrainConfig's)", kind=float, metavar="LR")  # fmt: skip
    weight_decay: float | None = option(None, "weight decay (default: zoo.train.TrainConfig's)", kind=float,
                                        metavar="WD")  # fmt: skip
    warmup_epochs: float = option(0.0, "linear learning-rate warm-up over the first N epochs, then the cosine "
                                  "(0: none)", kind=float, minimum=0.0, metavar="N", recipe=True)  # fmt: skip
    grad_clip: float | None = option(None, "clip the gradient norm of each block (BP: of the whole model) to this "
                                     "value (default: no clipping)", kind=float, minimum=0.0, metavar="NORM",
                                     recipe=True)  # fmt: skip
    train_aug: bool = option(False, "use the dataset's training augmentation")
    bn_recalib: bool = option(True, "evaluate with BatchNorm running statistics as trained (default: recompute them "
                              "on the train images before each evaluation, all methods)")  # fmt: skip
    threads: int | None = option(None, "torch CPU threads (default: torch's choice; pipeline on CPU: 1 per stage "
                                 "process, which stands for one device)", kind=int, minimum=1, metavar="N")  # fmt: skip
    allow_dirty: bool = option(False, "append to the repository's leaderboards/ from a tree with uncommitted changes "
                               "(refused by default; the rows then carry the +dirty commit)")  # fmt: skip
    progress: bool = option(True, "no progress bars")
    checkpoint: bool = option(True, "no per-epoch checkpoints (final one only)")
    interrupt_after_steps: int | None = option(None, "testing: act like Ctrl-C after N steps", kind=int, minimum=1,
                                               hidden=True)  # fmt: skip
    config: str | None = None  # the YAML file these values were read from, if any
    # set by benchmarks.plan: the bench's options (benchmarks/options.py) and what the plan derived, each as
    # {"setting", "value", "source"}; both are saved in the run folder's config.yaml
    options: Any = None
    derived: list[dict[str, Any]] = field(default_factory=list)
    given: tuple[str, ...] = ()  # the settings the user gave (flag or YAML); the rest are defaults or derived

    def opt(self, name: str) -> Any:
        """Option `name` of this bench, or, when the bench has no such option, the default of the bench that
        declares it (a clean accuracy run has noise rate 0 and kind symmetric)."""
        if self.options is not None and hasattr(self.options, name):
            return getattr(self.options, name)
        from .options import default_of

        return default_of(name)

    def to_dict(self) -> dict[str, Any]:
        """The flat record of config.yaml: common settings, then the bench's options, then what was derived."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_SAVED}
        if self.options is not None:
            out.update(dataclasses.asdict(self.options))
        if self.derived:
            out["derived"] = copy.deepcopy(self.derived)
        return copy.deepcopy(out)

    def recipe(self) -> dict[str, Any]:
        """The recipe: every setting besides the model and the method that changes a trained model's result (what
        `config_hash` hashes): `RECIPE_KEYS` (the keys hashed since the first leaderboard row; a bench without one
        of them hashes its default), plus any setting or option declared `recipe=True` whose value differs from its
        default (a new such option, e.g. the noise bench's `val_noise` or `--warmup-epochs`, leaves every earlier
        hash unchanged). Not in it: where
        output goes, how progress shows, the seeds (rows list them), model and method (rows name them) and the
        timing benches' knobs."""
        out = {k: getattr(self, k) if hasattr(self, k) and k not in _OPTION_KEYS else self.opt(k) for k in RECIPE_KEYS}
        for holder in (self, self.options):
            for f in dataclasses.fields(holder) if holder is not None else ():
                value = getattr(holder, f.name)
                if f.metadata.get("recipe") and f.name not in out and value != _default(f):
                    out[f.name] = value
        return out

    def config_hash(self) -> str:
        """12 hex digits of the sha256 of `recipe()`, the recipe's hash: rows of the same recipe share it, whatever
        their model and method (a row is identified by model, method and this hash together)."""
        text = json.dumps(self.recipe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


RunConfig = Settings  # what the benches take: a Settings that `benchmarks.plan` resolved

# the recipe's keys as every committed row hashed them (tests/test_settings.py recomputes each row's hash); the
# last eight are bench options, hashed at their defaults by the benches that do not have them
RECIPE_KEYS = (
    "task", "arch", "dataset", "data_root", "epochs", "batch_size", "num_blocks", "img_size", "train_size",
    "eval_size", "model_kwargs", "optimizer", "lr", "weight_decay", "train_aug", "bn_recalib",
    "noise_kind", "grow_at", "freeze_overtaken", "init_from", "add_blocks", "replicas", "replica_loss",
    "oversubscribe",
)  # fmt: skip
_OPTION_KEYS = set(RECIPE_KEYS[16:])


_NOT_SAVED = ("options", "derived", "given")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# -- flags -------------------------------------------------------------------------------------------------------
def flag_name(name: str, f: dataclasses.Field) -> str:
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    if f.metadata.get("kind") is None and _default(f) is True:
        return f"--no-{name.replace('_', '-')}"
    return f"--{name.replace('_', '-')}"


def add_flags(group: Any, fields: Iterable[tuple[str, dataclasses.Field]], choices: dict[str, Iterable[str]]) -> None:
    """One flag per field on an argparse parser (or group) built with `argument_default=SUPPRESS`, so that only the
    flags a user gives reach the values (defaults stay in the dataclass). `choices` fills names the library defines
    (tasks, methods, benches) for the help."""
    for name, f in fields:
        m = f.metadata
        flag, default = flag_name(name, f), _default(f)
        text = m["help"]
        if m["hidden"]:
            text = argparse.SUPPRESS
        elif name in choices or m["choices"]:
            text += f"; valid: {', '.join(choices.get(name) or m['choices'])}"
        if text is not argparse.SUPPRESS and "(default" not in text and not flag.startswith("--no-"):
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            text += "" if default is None or default == {} or isinstance(default, bool) else f" (default: {shown})"
        if m["kind"] is None and isinstance(default, bool):
            group.add_argument(flag, dest=name, action="store_false" if default else "store_true", help=text)
            continue
        action = "append" if m["repeat"] else "store"
        valid = tuple(choices[name]) if name in choices and not m["many"] else None
        metavar = m["metavar"] or (None if valid else "|".join(m["choices"]) if m["choices"] else name.upper())
        group.add_argument(flag, dest=name, action=action, metavar=metavar, choices=valid, help=text)


# -- values ------------------------------------------------------------------------------------------------------
def load_yaml(path: str | Path, known: Iterable[str]) -> dict[str, Any]:
    """Read a config file: a mapping whose keys are setting names (dashes or underscores)."""
    known = list(known)
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        fail(f"cannot read config file {path}: {e.strerror}")
    except yaml.YAMLError as e:
        fail(f"config file {path} is not valid YAML: {' '.join(str(e).split())}")
    if not isinstance(data, dict):
        fail(f"config file {path} must hold a mapping of option: value")
    out = {}
    for k, v in data.items():
        key = str(k).replace("-", "_")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            fail(f"unknown option {k!r} in {path}{hint}; valid options: {', '.join(known)}")
        out[key] = v
    return out


def coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    """`value` (a flag's text or a YAML value) as the field's type, in its range and choices."""
    m, flag = f.metadata, flag_name(name, f).removeprefix("--no-").removeprefix("--")
    flag = f"--{flag}"
    if value is None:
        if _default(f) is not None:
            fail(f"{flag} needs a value")
        return None
    if isinstance(_default(f), bool) and m["kind"] is None:
        if not isinstance(value, bool):
            fail(f"{flag} is true or false, got {value!r}")
        return value
    if isinstance(_default(f), dict):
        if not isinstance(value, dict | str | list):
            fail(f"{flag} expects key=value pairs, got {value!r}")
        return value  # parsed by benchmarks.plan with zoo.parse_model_kwargs
    kind = m["kind"] or str
    if m["many"]:
        items = value if isinstance(value, list | tuple) else [value]
        items = [s.strip() if isinstance(s, str) else s for item in items
                 for s in (str(item).split(",") if isinstance(item, str) else [item]) if str(s).strip()]  # fmt: skip
        if not items:
            fail(f"{flag} is empty")
        return [_one(flag, kind, m, v, many=True) for v in items]
    return _one(flag, kind, m, value)


def _one(flag: str, kind: Callable, m: dict, value: Any, many: bool = False) -> Any:
    if kind in (int, float) and (isinstance(value, bool) or (kind is int and isinstance(value, float))):
        fail(f"{flag}: {value!r} is not {'an integer' if kind is int else 'a number'}")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        what = f"a list of {kind.__name__}" if many else {int: "an integer", float: "a number"}.get(kind, "a value")
        fail(f"{flag}: cannot read {value!r} as {what}")
    if m["minimum"] is not None and out < m["minimum"]:
        what = "a positive integer" if m["minimum"] == 1 and kind is int else f">= {m['minimum']}"
        fail(f"{flag} must be {what}, got {value!r}")
    if m["choices"] and out not in m["choices"]:
        fail(f"{flag} {value!r} is not valid; valid choices: {', '.join(m['choices'])}")
    return out
