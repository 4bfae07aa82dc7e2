"""`python -m benchmarks.run`: train DeInfoReg and its baselines side by side, log to W&B, append to leaderboards.

    python -m benchmarks.run --model resnet50 --task seg          # Unet-ResNet50 on shapes, bp vs deinforeg
    python -m benchmarks.run --model paper_vgg --bench noise --seeds 0,1,2 --methods bp,deinforeg,greedy,scpl
    python -m benchmarks.run --config leaderboards/configs/noise_cls_digits_paper_vgg.yaml
    python -m benchmarks.run --resume runs/<run id>              # continue an interrupted run

    python -m benchmarks.run --bench pipeline --model resnet18 --stages 2 --methods bp,deinforeg,scpl
    python -m benchmarks.run --bench grow --model resnet18 --epochs 8 --grow-at 2,4,6   # progressive vs at once
    python -m benchmarks.run --bench grow --init-from paper_vgg.deinforeg_digits --add-blocks conv:64:1

Parse, plan, run: the flags (and the `--config` YAML; defaults < YAML < flags) become a `Settings`
(benchmarks/settings.py) with the bench's own options (benchmarks/options.py; a flag of another bench is an error);
`benchmarks.plan` resolves names, budget, device and parent checkpoint, checks everything, and lists the runs before
any run folder exists; then the bench module runs them. The resolved config, with what the plan derived and from
where, is saved as `<out>/<run id>/config.yaml`, and every row a bench appends to `leaderboards/` carries the run
id. Exit codes: 0 done, 1 a run failed (a bug, or a non-finite loss), 2 the request is impossible (a
`zoo.errors.UserError`: one line, no traceback), 130 interrupted (a checkpoint was saved; use --resume).
`--budget` names the recipe of what the user leaves unset (`DATASET_BUDGETS` in benchmarks/plan.py): `quick`, the
default on CPU (minutes on 2 cores), or `converged`, the default on CUDA (the recipe the leaderboards report); the
run's last lines say which ran.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from zoo import METHODS, TASKS, UserError
from zoo.runtime import resolve_device
from zoo.train import OPTIMIZERS

from .options import BENCHES, owners
from .plan import Plan, budget_note, derived_lines, known_keys, plan, read_settings
from .settings import WANDB_MODES, Settings, add_flags, load_yaml, options_of

__all__ = ["build_parser", "main", "config_from_args", "plan_from_args"]

# what may change when a run is resumed: how it runs, never what it trains
RESUME_FLAGS = ("wandb", "progress", "device", "threads", "interrupt_after_steps")


def build_parser() -> argparse.ArgumentParser:
    """Every flag, generated from the fields of `Settings` and of each bench's options (benchmarks/options.py)."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Train decoupled methods and backprop side by side; write a run folder, W&B logs and "
        "leaderboard rows.",
        argument_default=argparse.SUPPRESS,  # only flags the user gives override the YAML file and the defaults
        epilog="Exit codes: 0 done, 1 a run failed (non-finite loss), 2 bad flags/values, 130 interrupted "
        "(checkpoint saved; continue with --resume RUN_DIR). Offline W&B runs: `wandb sync RUN_DIR/runs/*/wandb/"
        "offline-run-*`.",
    )
    p.add_argument("--config", metavar="YAML", help="YAML file of defaults (keys are the long flag names); flags "
                   "override it")  # fmt: skip
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run folder with its saved config")
    import datasets

    choices = {"task": TASKS, "methods": METHODS, "optimizer": OPTIMIZERS, "bench": tuple(BENCHES),
               "wandb": WANDB_MODES, "noise_kind": datasets.noise.NOISE_KINDS}  # fmt: skip
    add_flags(p, options_of(Settings).items(), choices)
    seen: set[str] = set()
    for name, bench in BENCHES.items():
        fields = [(k, f) for k, f in options_of(bench.options).items() if k not in seen]
        if fields:
            shared = sorted({b for k, _ in fields for b in owners(k)} - {name})
            also = f"; also for --bench {' and '.join(shared)}" if shared else ""
            group = p.add_argument_group(f"--bench {name}: {bench.help}{also}")
            add_flags(group, fields, choices)
            seen |= {k for k, _ in fields}
    return p


def _saved_values(run_dir: str, flags: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The values of an earlier run's config.yaml, and the settings its user gave. Keys its bench does not take
    are dropped: a config.yaml from before per-bench options recorded every field (those were their defaults)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no config.yaml there; give the folder of an earlier run")
    values = load_yaml(path, [*known_keys(), "config", "derived", "given", "resume"])
    changed = sorted(set(flags) - set(RESUME_FLAGS))
    if changed:
        raise UserError(f"--resume continues a run as it was planned: --{changed[0].replace('_', '-')} cannot change; "
                        f"only {', '.join('--' + k.replace('_', '-') for k in RESUME_FLAGS[:4])} may")  # fmt: skip
    bench = values.get("bench", Settings.bench)
    mine = set(options_of(BENCHES[bench].options)) if bench in BENCHES else set()
    values = {k: v for k, v in values.items() if k != "resume" and (not owners(k) or k in mine)}
    given = values.pop("given", None)
    values["interrupt_after_steps"] = None
    values.update(flags)
    return values, given


def plan_from_args(argv: Sequence[str] | None = None) -> tuple[Plan, Path | None]:
    """Parse flags, merge with the YAML file (or the resumed run's config) and the defaults, then plan."""
    ns = build_parser().parse_args(argv)
    flags = {k: v for k, v in vars(ns).items() if k not in ("config", "resume")}
    resume = getattr(ns, "resume", None)
    if resume:
        values, given = _saved_values(resume, flags)
        return plan(read_settings(values, given)), Path(resume)
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update(load_yaml(ns.config, known_keys()))
        values["config"] = ns.config
    values.update(flags)
    return plan(read_settings(values, [k for k in values if k != "config"])), None


def config_from_args(argv: Sequence[str] | None = None) -> tuple[Settings, Path | None]:
    """The planned config of a command line and the resumed run folder (or None)."""
    p, resume = plan_from_args(argv)
    return p.config, resume


class _Log:
    """print() that also appends to the run's log.txt."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, msg: str) -> None:
        print(msg, flush=True)
        try:
            with open(self.path, "a") as f:
                f.write(msg + "\n")
        except OSError:
            pass


def _new_run_id(cfg) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{cfg.bench}-{cfg.task}-{cfg.dataset}-{uuid.uuid4().hex[:6]}"


_REPO_LEADERBOARDS = (Path(__file__).resolve().parents[1] / "leaderboards").resolve()


def _check_provenance(cfg) -> None:
    """Rows in the repository's leaderboards/ must name a commit that holds the code that made them."""
    if cfg.allow_dirty or Path(cfg.leaderboard_dir).resolve() != _REPO_LEADERBOARDS:
        return
    from zoo.runtime import git_commit

    from .results import RESULT_FILES

    commit = git_commit(_REPO_LEADERBOARDS, ignore=RESULT_FILES)
    if commit and commit.endswith("+dirty"):
        raise UserError(
            f"the tree has uncommitted changes ({commit}): rows in {cfg.leaderboard_dir}/ must name a commit that "
            "holds the code that made them; commit first, pass --leaderboard-dir elsewhere, or --allow-dirty (the "
            "rows then carry +dirty)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        planned, resume = plan_from_args(argv)
        cfg = planned.config
        _check_provenance(cfg)
    except UserError as e:
        print(f"python -m benchmarks.run: error: {e}", file=sys.stderr)
        return 2
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if resume is not None:
        run_dir, run_id = resume, resume.name
    else:
        run_id = _new_run_id(cfg)
        run_dir = Path(cfg.out) / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = {**cfg.to_dict(), "given": list(cfg.given)}  # with `derived`: what the plan set, and from where
        (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    log = _Log(run_dir / "log.txt")
    log(f"run {run_id} → {run_dir}" + (" (resumed)" if resume else ""))
    what = f"{cfg.bench}: models {', '.join(cfg.model)} | methods {', '.join(cfg.methods)} | {cfg.task} on "
    log(what + f"{cfg.dataset} | seeds {cfg.seeds} | epochs {cfg.epochs} | batch {cfg.batch_size} | W&B {cfg.wandb}")
    for line in derived_lines(cfg):
        log(line)
    log(f"{len(planned.runs)} run(s) planned")
    trains = BENCHES[cfg.bench].trains  # the others time steps: no training budget to name
    if trains:
        log(budget_note(cfg))
    if cfg.wandb == "offline":
        os.environ.setdefault("WANDB_SILENT", "true")

    import importlib

    from . import _runner

    _runner.install_sigint()
    from .results import environment

    env = environment(resolve_device(cfg.device))
    bench = importlib.import_module(f".{cfg.bench}", __package__)  # accuracy, noise, throughput, pipeline, grow
    try:
        bench.run(cfg, run_dir, run_id, env, log)
    except UserError as e:
        log(f"python -m benchmarks.run: error: {e}")
        return 2
    except _runner.Interrupted as e:
        log(f"interrupted: {e}\ncontinue with: python -m benchmarks.run --resume {run_dir}")
        return 130
    except _runner.RunFailed as e:
        log(f"run failed: {e}")
        return 1
    except KeyboardInterrupt:
        log(f"stopped at once (second Ctrl-C); the last per-epoch checkpoint stays. Resume: --resume {run_dir}")
        return 130
    if cfg.wandb == "offline":
        wb = f"{run_dir}/runs/*/wandb"
        log(f"W&B offline runs are in {wb}; upload with `wandb sync {wb}/offline-run-*`")
    if trains:
        log(budget_note(cfg))
    log(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
