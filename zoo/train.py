"""The one trainer for decoupled and end-to-end models: per-block or shared optimizers, cosine schedule, and a
resumable epoch loop (`Trainer.fit`) with callbacks that every caller (the harness, publishing, users) trains through.

Optimizers: SGD, AdamW, and LARS (You et al. 2017, the optimizer of the DeInfoReg reference runs). With
`per_block=True` each block owns its optimizer and scheduler, as it would on its own device in a pipeline. Model
selection (the `best` exit) uses the validation split only.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .decoupled import DecoupledModel, forward_block
from .errors import UserError
from .metrics import ConfusionMatrix, metric_name
from .runtime import sync

__all__ = [
    "BatchSource",
    "Callback",
    "LARS",
    "LogEpochs",
    "TrainingStopped",
    "TrainConfig",
    "Trainer",
    "EvalResult",
    "NonFiniteLossError",
    "build_optimizers",
    "seed_everything",
    "update",
    "OPTIMIZERS",
    "BACKWARDS",
]

OPTIMIZERS = ("sgd", "adamw", "lars")
BACKWARDS = ("blockwise", "summed")


class NonFiniteLossError(RuntimeError):
    """A local or end-to-end loss became NaN or infinite; carries where it happened."""

    def __init__(self, block: int, method: str, step: int, value: float):
        self.block, self.method, self.step, self.value = block, method, step, value
        super().__init__(f"non-finite loss {value} in block {block + 1} (method {method}) at step {step}")


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio; biases and norm weights (1-D) are excluded from it."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if p.ndim > 1:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                    p_norm, g_norm = torch.norm(p), torch.norm(d_p)
                    trust = torch.where(
                        (p_norm > 0) & (g_norm > 0), group["eta"] * p_norm / g_norm, torch.ones_like(p_norm)
                    )
                    d_p = d_p.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d_p.clone()
                else:
                    buf.mul_(group["momentum"]).add_(d_p)
                p.add_(buf, alpha=-group["lr"])
        return loss


@dataclass
class TrainConfig:
    optimizer: str = "adamw"  # sgd | adamw | lars
    lr: float = 2e-3  # peak learning rate
    min_lr_ratio: float = 0.01  # cosine decays to lr·min_lr_ratio (the paper: 0.2 → 0.002)
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd and lars
    warmup_steps: int = 0  # linear warm-up before the cosine
    per_block: bool = True  # one optimizer per block (always shared under bp)
    grad_clip: float | None = None  # max grad norm per block, None to skip
    # decoupled methods: "blockwise" backpropagates each block's loss as soon as its forward is done, so only one
    # block's graph is alive at a time (the memory payoff of local learning); "summed" keeps every graph until one
    # backward of the summed losses. Both give the same gradients and weights; bp has one loss and one backward.
    backward: str = "blockwise"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; valid choices: {', '.join(OPTIMIZERS)}")
        if self.backward not in BACKWARDS:
            raise UserError(f"unknown backward {self.backward!r}; valid choices: {', '.join(BACKWARDS)}")
        if self.lr <= 0:
            raise UserError(f"lr must be positive, got {self.lr}")


def _fusable(params: list[nn.Parameter]) -> bool:
    """Torch's fused (one kernel for all parameters) SGD/AdamW runs on CPU and CUDA floating-point parameters."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    # fused: 2.2x (SGD) and 4.7x (AdamW) faster steps than the per-tensor loop on one CPU thread (resnet18)
    fused = {"fused": True} if _fusable(params) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return LARS(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def cosine_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_optimizers(
    model: DecoupledModel, cfg: TrainConfig, total_steps: int
) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LambdaLR]]:
    """One optimizer (and cosine scheduler) per block when `cfg.per_block`, else one shared."""
    groups = model.param_groups()
    if not cfg.per_block:
        groups = [[p for g in groups for p in g]]
    optims = [_make_optimizer(g, cfg) for g in groups]
    lam = lambda s: cosine_factor(s, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)  # noqa: E731
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lam) for o in optims]
    return optims, scheds


def update(
    losses: Sequence[torch.Tensor],
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
    groups: Sequence[Sequence[nn.Parameter]] = (),
    grad_clip: float | None = None,
    after_backward: Callable[[], None] | None = None,
) -> None:
    """One optimizer step from per-block losses (the Trainer's and each pipeline stage's): the blocks' graphs are
    disjoint, so one summed backward gives each block its own gradient; `grad_clip` clips each of `groups`.
    `after_backward` runs between the backward and the clipping (a replicated stage averages its gradients there)."""
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    torch.stack([loss.float() for loss in losses]).sum().backward()
    if after_backward is not None:
        after_backward()
    if grad_clip:
        for group in groups:
            torch.nn.utils.clip_grad_norm_(group, grad_clip)
    _step(optimizers, schedulers)


def _step(optimizers: Sequence[torch.optim.Optimizer], schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler]):
    for o, s in zip(optimizers, schedulers):
        o.step()
        s.step()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class EvalResult:
    """Metric per block (None for a block without a head), of the `last` exit, the `best` exit and `adaptive`."""

    metric_name: str
    per_block: list[float | None]
    last: float
    best: float | None = None
    adaptive: float | None = None
    adaptive_depth: float | None = None
    pixel_acc: list[float | None] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingStopped(Exception):
    """`Trainer.fit` stopped early because a callback asked (Ctrl-C in the harness); `fit` can resume."""


class Callback:
    """Hooks of `Trainer.fit`; override the ones you need (evaluation output, checkpoints, logging, progress)."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step(self, trainer: Trainer, out: dict[str, Any]) -> None: ...

    def should_stop(self, trainer: Trainer) -> bool:
        return False

    def on_stop(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class LogEpochs(Callback):
    """One line per epoch: the summed local loss and each block's validation metric."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        line = f"epoch {record['epoch']}: loss {sum(record['train_loss']):.4f}"
        if "val_per_block" in record:
            blocks = " ".join("-" if v is None else f"{v:.1f}" for v in record["val_per_block"])
            line += f"  val {record['metric_name']} per block: {blocks}"
        self.log(line)


# `source(epoch, start)` → that epoch's batches from `start` on, or a re-iterable loader
BatchSource = Callable[[int, int], Iterable] | Iterable


class Trainer:
    """Trains a DecoupledModel: `train_step`, `evaluate`, `fit`, and a resumable `state_dict`."""

    def __init__(self, model: DecoupledModel, cfg: TrainConfig, total_steps: int, device: str | torch.device = "cpu"):
        self.model = model.to(device)
        self.cfg = cfg
        self.device = torch.device(device)
        self.total_steps = total_steps
        self.optimizers, self.schedulers = build_optimizers(model, cfg, total_steps)
        self.step = 0
        self.epoch = 0
        # where `fit` stands inside the current epoch, and what it has seen: part of the resumable state
        self.epoch_step = 0
        self.loss_sum: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.step_times: list[float] = []
        # base of the per-block, per-step RNG streams (zoo.decoupled.block_seed): the seed the caller set
        self.rng_seed = torch.initial_seed()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """One step of every block; a NaN/inf loss raises NonFiniteLossError before any optimizer step."""
        self.model.train()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)  # before the forward: last step's gradients need not live through it
        if self.model.method != "bp" and self.cfg.backward == "blockwise":
            losses, logits, parts = self._blockwise_step(x, y)
        else:
            out = self.model.step(x, y, rng=(self.rng_seed, self.step))
            # the blocks that gave a loss: active, unfrozen, with a head (zoo.grow freezes and activates blocks)
            heads = [k for k in self.model.trained_blocks() if self.model.blocks[k].head is not None]
            for k, loss in zip(heads, out.losses):
                self._check_finite(k, loss)
            groups = self.model.param_groups() if self.cfg.grad_clip else []
            update(out.losses, self.optimizers, self.schedulers, groups, self.cfg.grad_clip)
            losses, logits, parts = out.losses, out.logits, out.parts
        self.step += 1
        return {
            "losses": [float(v.detach()) for v in losses],
            "logits": logits,
            "parts": [{k: float(v.detach()) for k, v in p.items()} for p in parts],
        }

    def _check_finite(self, k: int, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(k, self.model.method, self.step, float(loss.detach()))

    def _blockwise_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list, list]:
        """Decoupled step, one block at a time: forward, check the loss, backward (freeing that block's graph),
        clip; the optimizers step only once every block ran, so a NaN in any block leaves all weights untouched.

        The blocks' graphs are disjoint, so each block gets the gradient the summed backward would give it; only
        the detached output (every output, when a later block reads skips) stays alive for the next block."""
        m = self.model
        m.check_batch(x, y)
        active = m.blocks[: m.num_active]
        skips = [any(b.takes_skips for b in active[k + 1 :]) for k in range(len(active))]
        feats: list[torch.Tensor] = [x]
        losses, logits, parts = [], [], []
        for k, block in enumerate(active):
            res = forward_block(block, k, feats, y, (self.rng_seed, self.step))
            if res is not None:
                loss, block_logits, block_parts = res
                self._check_finite(k, loss)
                loss.float().backward()
                if self.cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in block.parameters() if p.requires_grad], self.cfg.grad_clip
                    )
                losses.append(loss.detach())
                logits.append(m._to_output(block_logits.detach(), x))
                parts.append({n: v.detach() for n, v in block_parts.items()})
            else:
                logits.append(None)
            # the image stays first (a head may read it; the caller holds it anyway), then what later blocks read
            feats = [f.detach() for f in feats] if skips[k] else [x, feats[-1].detach()]
        _step(self.optimizers, self.schedulers)
        return losses, logits, parts

    @torch.no_grad()
    def evaluate(self, loader: Iterable, adaptive: bool = True) -> EvalResult:
        """Metric of every block's head and of the exits on `loader` (accuracy for cls, mIoU for seg)."""
        m = self.model
        m.eval()
        # None for a block without a head or not active (progressive depth): it has no exit to measure
        mats: list[ConfusionMatrix | None] = [
            ConfusionMatrix.for_task(m.task, m.num_classes) if b.head is not None and k < m.num_active else None
            for k, b in enumerate(m.blocks)
        ]
        ada = ConfusionMatrix.for_task(m.task, m.num_classes)
        depth_sum, n = 0.0, 0
        use_adaptive = adaptive and m.method != "bp"
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            preds = m.forward_blocks(x)
            for mat, logits in zip(mats, preds):
                if mat is not None and logits is not None:
                    mat.update(logits, y)
            if use_adaptive:
                # the exit decisions only need every block's prediction, which forward_blocks already gave
                ada.update(m.adaptive_from_blocks(preds), y)
                depth_sum += float(m.last_mean_depth or 0.0) * x.shape[0]
                n += x.shape[0]
        per_block = [c.score(m.task) if c is not None else None for c in mats]
        pixel = [c.accuracy() if c is not None else None for c in mats] if m.task == "seg" else []
        best_idx = int(m.best_block)
        return EvalResult(
            metric_name=metric_name(m.task),
            per_block=per_block,
            last=per_block[m.num_active - 1] if per_block[m.num_active - 1] is not None else float("nan"),
            best=per_block[best_idx],
            adaptive=ada.score(m.task) if use_adaptive else None,
            adaptive_depth=depth_sum / n if n else None,
            pixel_acc=pixel,
        )

    def select_best_block(self, val: EvalResult | Sequence[float | None]) -> int:
        """Store in the model the block whose head scores best on the validation split (ties: the earlier)."""
        per_block = val.per_block if isinstance(val, EvalResult) else val
        scores = [(s, -k) for k, s in enumerate(per_block) if s is not None]
        best = -max(scores)[1]
        self.model.set_best_block(best)
        return best

    # -- the training loop ------------------------------------------------------------------------------------
    def fit(
        self,
        source: BatchSource,
        epochs: int,
        val: Iterable | Callable[[Trainer], EvalResult] | None = None,
        callbacks: Sequence[Callback] | None = None,
    ) -> list[dict[str, Any]]:
        """Train until `epochs` epochs are done, resuming where `state_dict` left off; returns the epoch records.

        `source(epoch, start)` gives the batches of `epoch` from batch `start` on (a pure function of the epoch
        makes a resumed run replay exactly the batches it had not seen); a plain re-iterable loader works too (its
        first `start` batches are skipped on resume). `val` (a loader, or a function of the trainer returning an
        EvalResult) is measured after every epoch and, at the end, chooses the `best` exit. Callbacks (default: one
        line per epoch, `LogEpochs`) add
        evaluation output, checkpoints, logging and progress; one whose `should_stop` answers True stops the loop
        after the current step, after every callback's `on_stop` (e.g. a checkpoint), with TrainingStopped.
        """
        callbacks = [LogEpochs()] if callbacks is None else list(callbacks)
        evaluate = val if callable(val) and not hasattr(val, "__iter__") else None
        if val is not None and evaluate is None:
            evaluate = lambda t: t.evaluate(val, adaptive=False)  # noqa: E731
        for cb in callbacks:
            cb.on_train_start(self)
        while self.epoch < epochs:
            start = self.epoch_step
            batches = source(self.epoch, start) if callable(source) else itertools.islice(source, start, None)
            for x, y in batches:
                t0 = time.perf_counter()
                out = self.train_step(x, y)
                sync(self.device)
                out["seconds"] = time.perf_counter() - t0
                self.step_times.append(out["seconds"])
                self.loss_sum = [a + b for a, b in zip(self.loss_sum, out["losses"])] or list(out["losses"])
                self.epoch_step += 1
                for cb in callbacks:
                    cb.on_step(self, out)
                if any(cb.should_stop(self) for cb in callbacks):
                    for cb in callbacks:
                        cb.on_stop(self)
                    raise TrainingStopped(f"stopped at step {self.step} (epoch {self.epoch + 1})")
            n = max(1, self.epoch_step)
            self.epoch += 1
            record: dict[str, Any] = {
                "epoch": self.epoch,
                "step": self.step,
                "train_loss": [v / n for v in self.loss_sum],
                "lr": self.schedulers[0].get_last_lr()[0] if self.schedulers else None,
            }
            if evaluate is not None:
                res = evaluate(self)
                record.update(metric_name=res.metric_name, val_per_block=res.per_block, val_last=res.last)
            self.history.append(record)
            self.epoch_step, self.loss_sum = 0, []
            for cb in callbacks:
                cb.on_epoch_end(self, record)
        if self.history and "val_per_block" in self.history[-1]:
            self.select_best_block(self.history[-1]["val_per_block"])  # measured on the final weights
        for cb in callbacks:
            cb.on_train_end(self)
        return self.history

    # -- resume -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "step": self.step,
            "epoch": self.epoch,
            "loop": {
                "epoch_step": self.epoch_step,
                "loss_sum": self.loss_sum,
                "history": self.history,
                "step_times": self.step_times,
            },
            "rng_seed": self.rng_seed,
            "rng": {
                "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"checkpoint has {len(state['optimizers'])} optimizers, this trainer {len(self.optimizers)}"
            )
        for o, sd in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(sd)
        for s, sd in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(sd)
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        loop = state.get("loop") or {}
        self.epoch_step = int(loop.get("epoch_step", 0))
        self.loss_sum = list(loop.get("loss_sum", []))
        self.history = list(loop.get("history", []))
        self.step_times = list(loop.get("step_times", []))
        self.rng_seed = int(state.get("rng_seed", self.rng_seed))
        rng = state.get("rng")
        if rng:
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
