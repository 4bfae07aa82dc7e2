"""`python -m benchmarks.run`: train DeInfoReg and its baselines side by side, log to W&B, append to leaderboards.

    python -m benchmarks.run --model resnet50 --task seg          # Unet-ResNet50 on shapes, bp vs deinforeg
    python -m benchmarks.run --model paper_vgg --bench noise --seeds 0,1,2 --methods bp,deinforeg,greedy,scpl
    python -m benchmarks.run --config leaderboards/configs/noise_cls_digits_paper_vgg.yaml
    python -m benchmarks.run --resume runs/<run id>              # continue an interrupted run

    python -m benchmarks.run --bench pipeline --model resnet18 --stages 2 --methods bp,deinforeg,scpl
    python -m benchmarks.run --model resnet18 --epochs 8 --grow-at 2,4,6     # progressive vs all blocks at once
    python -m benchmarks.run --init-from paper_vgg.deinforeg_digits --add-blocks conv:64:1   # extend a checkpoint

Every bench is built from the same `RunConfig` (benchmarks/config.py) by the same functions (benchmarks/build.py);
defaults < `--config` YAML < flags. The resolved config is saved as `<out>/<run id>/config.yaml`, and every row a
bench appends to `leaderboards/` carries the run id. Exit codes: 0 done, 1 a run failed (a bug, or a non-finite
loss), 2 the request is impossible (a `zoo.errors.UserError`: one line, no traceback), 130 interrupted (a checkpoint
was saved; use --resume). `--budget` names the recipe of what the user leaves unset (`DATASET_BUDGETS` in
benchmarks/config.py): `quick`, the default on CPU (minutes on 2 cores), or `converged`, the default on CUDA (the
recipe the leaderboards report); the run's last lines say which ran.
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

from .config import BENCHES, BUDGETS, ENGINE_ORDER, NOISE_KINDS, WANDB_MODES, budget_note, load_yaml, resolve

__all__ = ["build_parser", "main", "config_from_args"]


def build_parser() -> argparse.ArgumentParser:
    S = argparse.SUPPRESS  # only flags the user gives override the YAML file and the defaults
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Train decoupled methods and backprop side by side; write a run folder, W&B logs and "
        "leaderboard rows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=S,
        epilog="Exit codes: 0 done, 1 a run failed (non-finite loss), 2 bad flags/values, 130 interrupted "
        "(checkpoint saved; continue with --resume RUN_DIR). Offline W&B runs: `wandb sync RUN_DIR/runs/*/wandb/"
        "offline-run-*`.",
    )
    a = p.add_argument
    a("--config", metavar="YAML", help="YAML file of defaults (keys are the long flag names); flags override it")
    a("--model", metavar="NAMES", help="model name(s), comma-separated, wildcards allowed (default: resnet18); seg: "
      "the SMP encoder, e.g. resnet50")  # fmt: skip
    a("--task", choices=TASKS, help="cls (accuracy) or seg (mIoU) (default: cls)")
    a("--arch", metavar="ARCH", help="SMP architecture for --task seg: unet, fpn, deeplabv3plus, ... (default: unet)")
    a("--methods", metavar="LIST", help=f"comma-separated, from {','.join(METHODS)} (default: bp,deinforeg)")
    a("--bench", choices=BENCHES, help="accuracy, noise (sweep of label-noise rates), throughput (one device) or "
      "pipeline (one process per stage) (default: accuracy)")  # fmt: skip
    a("--dataset", metavar="NAME", help="dataset (default: digits for cls, shapes for seg: embedded, no download)")
    a("--data-root", metavar="DIR", help="root of real datasets (default: $DEINFOREG_DATA_ROOT or ./data)")
    a("--noise-rates", metavar="LIST", help="comma-separated training label-noise rates in [0, 1) (default: 0; "
      "noise bench: 0,0.2,0.4,0.6)")  # fmt: skip
    a("--noise-kind", choices=NOISE_KINDS, help="label noise kind (default: symmetric)")
    a("--budget", metavar="NAME", help=f"{', '.join(BUDGETS)}: the dataset's recipe for what is left unset (epochs, "
      "image size, train/eval images, lr); auto is converged on CUDA, quick otherwise; flags always win (default: "
      "auto)")  # fmt: skip
    a("--epochs", type=int, metavar="N", help="training epochs (default: the budget's, else 3 for cls, 2 for seg)")
    a("--batch-size", type=int, metavar="N", help="batch size (default: 64 for cls, 16 for seg)")
    a("--seeds", metavar="LIST", help="comma-separated seeds; rows report mean ± std over them (default: 0)")
    a("--num-blocks", type=int, metavar="K", help="merge the model's stages into K blocks (default: natural stages)")
    a("--device", metavar="DEV", help="auto, cpu, cuda or cuda:N (default: auto)")
    a("--wandb", choices=WANDB_MODES, help="W&B mode; offline needs no account (default: offline)")
    a("--wandb-project", metavar="NAME", help="W&B project (default: deinforeg-zoo)")
    a("--out", metavar="DIR", help="parent folder of run folders (default: runs)")
    a("--resume", metavar="RUN_DIR", help="continue an interrupted run folder with its saved config")
    a("--leaderboard-dir", metavar="DIR", help="where leaderboard CSVs are appended (default: leaderboards)")
    a("--img-size", type=int, metavar="PX", help="input resolution (default: the budget's, else the dataset's)")
    a("--train-size", type=int, metavar="N", help="train on only N images (default: the budget's, else all)")
    a("--eval-size", type=int, metavar="N", help="validate and test on only N images each (default: the budget's, "
      "else all)")  # fmt: skip
    a("--model-kwargs", metavar="K=V,...", help="extra zoo.create_model arguments, e.g. width=0.25,projector=flatten")
    a("--optimizer", choices=OPTIMIZERS, help="optimizer (default: adamw)")
    a("--lr", type=float, metavar="LR", help="peak learning rate, cosine decay (default: the budget's, else 0.002)")
    a("--weight-decay", type=float, metavar="WD", help="weight decay (default: 0.0005)")
    a("--train-aug", action="store_true", help="use the dataset's training augmentation (default: off)")
    a("--no-bn-recalib", dest="bn_recalib", action="store_false", help="evaluate with BatchNorm running statistics "
      "as trained (default: recompute them on the train images before each evaluation, all methods)")  # fmt: skip
    a("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice; pipeline on CPU: 1 per "
      "stage process, which stands for one device)")  # fmt: skip
    a("--steps", type=int, metavar="N", help="throughput/pipeline: measured steps (default: 20)")
    a("--warmup", type=int, metavar="N", help="throughput/pipeline: untimed steps first (default: 3)")
    a("--stages", type=int, metavar="S", help="pipeline: stage processes, one device each (default: 2)")
    a("--micro-batches", metavar="LIST", help="pipeline: micro-batches per batch for BP pipelines, each measured and "
      "the best compared (default: 2,4)")  # fmt: skip
    a("--engines", metavar="LIST", help=f"pipeline: engines to measure, from {','.join(ENGINE_ORDER)} (default: all)")
    a("--repeats", type=int, metavar="N", help="pipeline: measure every engine N times, interleaved; rows give "
      "medians (default: 1)")  # fmt: skip
    a("--partition", metavar="LIST", help="pipeline: blocks per stage, e.g. 3,1 (default: profile and balance)")
    a("--no-pin", dest="pin_cpu", action="store_false", help="pipeline on CPU: let the OS move stage processes")
    a("--replicas", type=int, metavar="R", help="pipeline: processes per stage, each on a 1/R shard of the batch, "
      "gradients all-reduced within the stage (default: 1)")  # fmt: skip
    a("--replica-loss", choices=("global", "shard"), help="pipeline with --replicas: local loss and BatchNorm over "
      "the stage's whole batch (global, = one process) or per replica (shard, cheaper) (default: global)")  # fmt: skip
    a("--oversubscribe", action="store_true", help="pipeline: allow more processes than GPUs (or CPU cores)")
    a("--bandwidth-gbps", metavar="LIST", help="pipeline: links for the scaling model (default: 0.1,1,10)")
    a("--no-plot", dest="plot", action="store_false", help="pipeline: no scaling-model plot")
    a("--grow-at", metavar="LIST", help="grow: block k+1 joins at epoch E_k, e.g. 1,2,3 for 4 blocks (block 1 trains "
      "from epoch 0); compared with all blocks from the start (implies --bench grow)")  # fmt: skip
    a("--freeze-overtaken", action="store_true", help="grow: freeze block k when block k+1 joins (default: off)")
    a("--init-from", metavar="CKPT", help="grow: extend this checkpoint folder or pretrained name (e.g. "
      "paper_vgg.deinforeg_digits); its blocks are frozen, only --add-blocks train")  # fmt: skip
    a("--add-blocks", metavar="SPEC", action="append", help="grow: blocks for --init-from, comma-separated or "
      "repeated: conv:WIDTH[:STRIDE[:DEPTH]] (stride 2, depth 1 by default) or stages:[NAME:]I[+J...] (stages of a "
      "zoo model, default the parent's own), e.g. conv:64:2 or stages:resnet34:3")  # fmt: skip
    a("--allow-dirty", action="store_true", help="append to the repository's leaderboards/ from a tree with "
      "uncommitted changes (refused by default; the rows then carry the +dirty commit)")  # fmt: skip
    a("--no-progress", dest="progress", action="store_false", help="no progress bars")
    a("--no-checkpoint", dest="checkpoint", action="store_false", help="no per-epoch checkpoints (final one only)")
    a("--interrupt-after-steps", type=int, help=S)  # testing: acts like Ctrl-C after N steps
    return p


def _explicit(ns: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(ns).items() if k not in ("config", "resume")}


def config_from_args(argv: Sequence[str] | None = None):
    """Parse flags, merge with the YAML file and the defaults, validate; returns (RunConfig, resume dir or None)."""
    ns = build_parser().parse_args(argv)
    flags = _explicit(ns)
    resume = getattr(ns, "resume", None)
    if resume:
        path = Path(resume) / "config.yaml"
        if not path.is_file():
            raise UserError(f"--resume {resume}: no config.yaml there; give the folder of an earlier run")
        values = load_yaml(path)
        values["interrupt_after_steps"] = None
        # only how to run may change on resume, never what is trained
        for k in ("wandb", "progress", "device", "threads", "interrupt_after_steps"):
            if k in flags:
                values[k] = flags[k]
        return resolve(values), Path(resume)
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update(load_yaml(ns.config))
        values["config"] = ns.config
    values.update(flags)
    return resolve(values), None


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
        cfg, resume = config_from_args(argv)
    except UserError as e:
        print(f"python -m benchmarks.run: error: {e}", file=sys.stderr)
        return 2
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    if resume is None:
        from .build import preflight

        try:
            preflight(cfg)
            if cfg.bench == "grow":
                from ._growth import preflight as grow_preflight

                grow_preflight(cfg)
        except UserError as e:
            print(f"python -m benchmarks.run: error: {e}", file=sys.stderr)
            return 2
    try:
        _check_provenance(cfg)
    except UserError as e:
        print(f"python -m benchmarks.run: error: {e}", file=sys.stderr)
        return 2
    if resume is not None:
        run_dir, run_id = resume, resume.name
    else:
        run_id = _new_run_id(cfg)
        run_dir = Path(cfg.out) / run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log = _Log(run_dir / "log.txt")
    log(f"run {run_id} → {run_dir}" + (" (resumed)" if resume else ""))
    what = f"{cfg.bench}: models {', '.join(cfg.model)} | methods {', '.join(cfg.methods)} | {cfg.task} on "
    log(what + f"{cfg.dataset} | seeds {cfg.seeds} | epochs {cfg.epochs} | batch {cfg.batch_size} | W&B {cfg.wandb}")
    trains = cfg.bench in ("accuracy", "noise", "grow")  # the others time steps: no training budget to name
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
