"""The decoupled model: a network cut into blocks, each trained by its own local head.

Block k's input is the detached output of block k-1, so `local_losses` builds graphs that never cross a block
boundary (DeInfoReg, Decoupled Greedy Learning, SCPL). With `method="bp"` nothing is detached and only the last
block has a head: the same blocks then compute exactly the original network, trained end to end.

Randomness in training (dropout, stochastic depth, a dense head's pixel sampling) can be drawn per block and step:
given `rng=(seed, step)`, `step` runs block k under its own RNG stream seeded from (seed, step, k). A block's draws
then do not depend on which other blocks run in the same process, so a pipeline that spreads the blocks over
processes trains exactly like one process (the trainer and the pipeline engine both pass it).

Growing a model (`zoo.grow`) relies on two switches here. A *frozen* block (`Block.frozen`) has no trainable
parameters, stays in eval mode (BatchNorm statistics kept, dropout off) whatever `model.train()` says, runs under
`no_grad` and gives no loss. `set_active(n)` makes only the first `n` blocks run (progressive depth): training,
`param_groups` and every exit stop at block n. `param_groups()` then lists only the blocks that train;
`trained_blocks()` says which block each group belongs to.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError
from .exits import EXIT_POLICIES, ExitRule, adaptive_forward, adaptive_from_blocks, check_exit_policy
from .heads import LOCAL_METHODS, LocalHead, TaskHead, check_method, dense_head
from .metrics import IGNORE_INDEX
from .tasks import check_task

__all__ = [
    "Block",
    "DecoupledModel",
    "Features",
    "deepest",
    "StepOutput",
    "EXIT_POLICIES",
    "block_rng",
    "block_seed",
    "build_decoupled",
    "forward_block",
    "merge_units",
]


class Features(tuple):
    """Several stage features handed on by one block, shallowest first (a segmentation block that holds several
    encoder stages: the decoder reads each of them as a skip).

    A block output is a tensor or a `Features`; the model treats both alike where it touches them: the next block
    and the local head read the deepest (`deepest`), `detach()` cuts every member at the block boundary, and
    indexing with a tensor (a mask or indices over the batch, as the adaptive exit does) selects samples of every
    member. Integer indices keep tuple meaning (member i).
    """

    def detach(self) -> Features:
        return Features(f.detach() for f in self)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, torch.Tensor):
            return Features(f[key] for f in self)
        return super().__getitem__(key)


def deepest(h: torch.Tensor | Features) -> torch.Tensor:
    """The tensor the next block and a local head read from a block output."""
    return h[-1] if isinstance(h, Features) else h


class Block(nn.Module):
    """One block: `body` (part of the backbone) and its `head` (local head, task head, or None under BP).

    `takes_skips=True` marks a body that reads every earlier block's output (a segmentation decoder): it then
    receives the list `[x, h_1, ..., h_{k-1}]` instead of the last output. Any other body receives the deepest
    tensor of the last output (see `Features`). A `frozen` block (see `freeze`) only runs forward, in eval mode and
    without autograd.
    """

    def __init__(self, body: nn.Module, head: nn.Module | None = None, takes_skips: bool = False):
        super().__init__()
        self.body = body
        self.head = head
        self.takes_skips = takes_skips
        self.frozen = False

    def freeze(self, frozen: bool = True) -> Block:
        """Stop (or resume) training this block: no gradients, eval mode kept (BatchNorm statistics as trained)."""
        self.frozen = frozen
        self.requires_grad_(not frozen)
        if frozen:
            self.zero_grad(set_to_none=True)  # a stale gradient would still move it under weight decay
        return self.train(self.training if not frozen else False)

    def train(self, mode: bool = True) -> Block:
        # a frozen block ignores model.train(): its BatchNorm statistics and dropout stay as they were trained
        return super().train(mode and not self.frozen)

    @property
    def num_outputs(self) -> int:
        """How many tensors the body hands on: 1, or the length of the `Features` it returns."""
        return int(getattr(self.body, "num_outputs", 1))

    def forward(self, feats: list[torch.Tensor | Features]) -> torch.Tensor | Features:
        inputs = feats if self.takes_skips else deepest(feats[-1])
        if self.frozen:
            with torch.no_grad():
                return self.body(inputs)
        return self.body(inputs)


def block_seed(seed: int, step: int, block: int) -> int:
    """The RNG seed of `block` at training `step` of a run seeded with `seed` (a hash: streams do not overlap)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def block_rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the body with the CPU (and `device`'s CUDA) generator seeded to `seed`; restore both afterwards.
    `seed=None` leaves the generators alone."""
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def forward_block(
    block: Block,
    k: int,
    feats: list[torch.Tensor],
    y: torch.Tensor,
    rng: tuple[int, int] | None = None,
    detach: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None:
    """Training forward of block `k` on the features so far: appends its output to `feats` and returns its head's
    `(loss, logits, parts)`, or None for a block without a head. `detach` cuts the graph at the block's input
    (decoupled methods); `rng=(seed, step)` runs it on its own RNG stream. `DecoupledModel.step` and each pipeline
    stage both train through this, so the two layouts compute the same thing. A frozen block only runs forward:
    None, like a block without a head. A head with `takes_image` (a reconstruction term) also receives the input
    image `feats[0]`."""
    inputs = [f.detach() for f in feats] if detach else feats
    if block.frozen:
        feats.append(block(inputs))
        return None
    with block_rng(None if rng is None else block_seed(rng[0], rng[1], k), feats[0].device):
        h = block(inputs)
        feats.append(h)
        if block.head is None:
            return None
        if getattr(block.head, "takes_image", False):
            return block.head.loss(h, y, image=inputs[0])
        return block.head.loss(h, y)


@dataclass
class StepOutput:
    """What one training forward gives: a scalar loss per head and every head's logits (None without a head)."""

    losses: list[torch.Tensor]
    logits: list[torch.Tensor | None]
    parts: list[dict[str, torch.Tensor]] = field(default_factory=list)


def merge_units(
    units: Sequence[nn.Module], num_blocks: int | None, sizes: Sequence[int] | None = None
) -> tuple[list[nn.Module], list[int]]:
    """Merge adjacent units into `num_blocks` contiguous blocks (sizes differ by at most one, later ones larger), or
    into blocks of the given `sizes` (units per block, e.g. chosen by zoo.pipeline.partition.choose_cuts).

    Returns the blocks and, for each, the index of its last unit (whose output is the block's output).
    """
    n = len(units)
    if sizes is not None:
        sizes = [int(s) for s in sizes]
        if sum(sizes) != n or min(sizes, default=0) < 1 or (num_blocks is not None and num_blocks != len(sizes)):
            raise UserError(f"block_units={sizes} must give every block at least one of this model's {n} units")
    else:
        if num_blocks is None:
            num_blocks = n
        if not 1 <= num_blocks <= n:
            raise UserError(f"num_blocks={num_blocks} is not possible: this model can be cut into 1 to {n} blocks")
        base, extra = divmod(n, num_blocks)
        sizes = [base] * (num_blocks - extra) + [base + 1] * extra
    blocks, ends, i = [], [], 0
    for s in sizes:
        group = list(units[i : i + s])
        blocks.append(group[0] if s == 1 else nn.Sequential(*group))
        i += s
        ends.append(i - 1)
    return blocks, ends


# keywords every model builder passes on: to DecoupledModel, and to build_decoupled for the heads
MODEL_KEYS = ("exit_policy", "exit_confidence", "exit_similarity")
BUILD_KEYS = ("ignore_index", "head_kwargs")


class DecoupledModel(nn.Module):
    """A network cut into `blocks`, trained by `method` in {bp, deinforeg, greedy, scpl}.

    `model(x)` predicts through the exit chosen by `exit_policy` (zoo/exits.py): `last`; `best` (the block chosen
    on the validation split, stored in the `best_block` buffer so it travels with the weights); or `adaptive`
    (per-sample early exit). After an adaptive forward, `last_mean_depth` holds the mean number of blocks used.
    """

    def __init__(
        self,
        blocks: Sequence[Block],
        method: str,
        task: str,
        num_classes: int,
        exit_policy: str = "last",
        exit_confidence: float = 0.9,
        exit_similarity: float = 0.95,
        config: dict[str, Any] | None = None,
    ):
        super().__init__()
        check_method(method)
        check_task(task)
        self.blocks = nn.ModuleList(blocks)
        self.method = method
        self.task = task
        self.num_classes = num_classes
        self.exit_confidence = exit_confidence
        self.exit_similarity = exit_similarity
        self.config: dict[str, Any] = dict(config or {})
        self.register_buffer("best_block", torch.tensor(len(blocks) - 1, dtype=torch.long))
        self.last_mean_depth: float | None = None
        self.exit_policy = exit_policy
        self._active: int | None = None  # progressive depth: only the first blocks run (None: all)
        self._growth: dict[str, Any] | None = None  # what zoo.grow changed since create_model (see `growth`)

    # -- configuration ---------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def exit_policy(self) -> str:
        return self._exit_policy

    @exit_policy.setter
    def exit_policy(self, policy: str) -> None:
        check_exit_policy(policy, self.method)
        self._exit_policy = policy

    @property
    def num_active(self) -> int:
        """How many blocks run (progressive depth, see `set_active`); all of them by default."""
        return self.num_blocks if self._active is None else min(self._active, self.num_blocks)

    def set_active(self, n: int | None) -> None:
        """Run only the first `n` blocks (None: all): training, `param_groups` and every exit stop at block n.

        Progressive depth: start with `set_active(1)`, call `set_active(k + 1)` when block k+1 should join (then
        rebuild the optimizers, e.g. `zoo.grow.refresh_optimizers(trainer)`)."""
        if n is not None:
            if not 1 <= n <= self.num_blocks:
                raise UserError(f"set_active({n}) is not possible: this model has 1 to {self.num_blocks} blocks")
            if n < self.num_blocks and self.blocks[n - 1].head is None:
                raise UserError(f"block {n - 1} has no head (method {self.method!r}): it cannot be the last to run")
        self._active = None if n is None or n == self.num_blocks else int(n)

    @property
    def growth(self) -> dict[str, Any] | None:
        """How this model differs from `zoo.create_model(**config)`: zoo.grow's JSON-serialisable record (parent
        config, blocks kept and added, frozen blocks, active count), or None for a model as created."""
        frozen = [k for k, b in enumerate(self.blocks) if b.frozen]
        if self._growth is None and not frozen and self._active is None:
            return None
        base = self._growth or {"version": 1, "parent": self.config, "keep": None, "added": []}
        return {**copy.deepcopy(base), "frozen": frozen, "active": self._active}

    def trained_blocks(self) -> list[int]:
        """The active, unfrozen blocks: group i of `param_groups()` belongs to block `trained_blocks()[i]`."""
        return [k for k, b in enumerate(self.blocks[: self.num_active]) if not b.frozen]

    def set_best_block(self, index: int) -> None:
        if not 0 <= index < self.num_blocks or self.blocks[index].head is None:
            raise UserError(f"block {index} has no head to exit through")
        self.best_block.fill_(index)

    def param_groups(self) -> list[list[nn.Parameter]]:
        """Parameters per trained block (body + its head), so each block can own an optimizer. One group under BP.

        Frozen and inactive blocks give no group (an optimizer refuses an empty one): see `trained_blocks`."""
        groups = [[p for p in self.blocks[k].parameters() if p.requires_grad] for k in self.trained_blocks()]
        if self.method == "bp":
            flat = [p for g in groups for p in g]
            return [flat] if flat else []
        return groups

    # -- training ------------------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, rng: tuple[int, int] | None = None) -> StepOutput:
        """Training forward: one loss per local head (decoupled) or one end-to-end loss (bp).

        `rng=(seed, step)` draws each block's randomness from its own stream (see `block_seed`)."""
        self.check_batch(x, y)
        decoupled = self.method in LOCAL_METHODS
        feats = [x]
        out = StepOutput([], [], [])
        for k, block in enumerate(self.blocks[: self.num_active]):
            res = forward_block(block, k, feats, y, rng, detach=decoupled)
            if res is None:
                out.logits.append(None)
                continue
            loss, logits, parts = res
            out.losses.append(loss)
            out.logits.append(self._to_output(logits, x))
            out.parts.append(parts)
        return out

    def check_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """A training batch this model can learn from (UserError otherwise): shared by `step` and the trainer."""
        if x.shape[0] == 0:
            raise UserError("empty batch")
        if self.method in LOCAL_METHODS and x.shape[0] < 2:
            raise UserError("batch of size 1: the batch statistics of a local loss need at least 2 samples")
        if y.shape[0] != x.shape[0]:
            raise UserError(f"{y.shape[0]} labels for a batch of {x.shape[0]}")
        labels = y[y != IGNORE_INDEX[self.task]]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            lo, hi = int(labels.min()), int(labels.max())
            raise UserError(f"labels must lie in [0, {self.num_classes}), got values in [{lo}, {hi}]")

    def local_losses(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-block scalar losses (one per head; a single end-to-end loss under bp)."""
        return self.step(x, y).losses

    # -- inference -----------------------------------------------------------------------------------------
    def _to_output(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.task == "seg" and tuple(logits.shape[-2:]) != tuple(x.shape[-2:]):
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """Every block's prediction (None for a block without a head or not active), at input resolution for
        segmentation."""
        feats = [x]
        preds: list[torch.Tensor | None] = []
        for block in self.blocks[: self.num_active]:
            h = block(feats)
            feats.append(h)
            preds.append(None if block.head is None else self._to_output(block.head(h), x))
        return preds + [None] * (self.num_blocks - self.num_active)

    @property
    def exit_block(self) -> int:
        """The block `model(x)` predicts through under `last` or `best` (`adaptive` has no single exit)."""
        if self._exit_policy == "adaptive":
            raise UserError("an adaptive exit depends on each input; set exit_policy to 'last' or 'best' first")
        last = self.num_active - 1
        return last if self._exit_policy == "last" else min(int(self.best_block), last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._exit_policy == "adaptive":
            out, depth = adaptive_forward(self._exit_rule(), self.blocks, x, self._to_output)
            self._record_depth(depth)
            return out
        stop = self.exit_block
        feats = [x]
        for block in self.blocks[: stop + 1]:
            feats.append(block(feats))
        return self._to_output(self.blocks[stop].head(feats[-1]), x)

    def _record_depth(self, depth: torch.Tensor) -> None:
        self.last_exit_depth = depth
        self.last_mean_depth = float(depth.float().mean())

    def adaptive_from_blocks(self, preds: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """The adaptive exit's output from every block's prediction (`forward_blocks`), with no second forward."""
        out, depth = adaptive_from_blocks(self._exit_rule(), preds)
        self._record_depth(depth)
        return out

    def _exit_rule(self) -> ExitRule:
        return ExitRule(self.num_active, self.exit_confidence, self.exit_similarity)


def build_decoupled(
    bodies: Sequence[nn.Module],
    out_shapes: Sequence[Sequence[int]],
    task_head: nn.Module,
    method: str,
    task: str,
    num_classes: int,
    *,
    projector: str = "pool",
    pool: nn.Module | None = None,
    decoder: nn.Module | None = None,
    dice: bool = False,
    ignore_index: int | None = None,
    head_kwargs: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> DecoupledModel:
    """Attach heads to backbone `bodies` (block outputs of shape `out_shapes`, without the batch dim).

    Classification: the last block's head is `task_head` under bp and a local head otherwise. Segmentation:
    `decoder` (decoder + segmentation head, taking the list of all features) forms an extra last block trained by
    the task loss on detached skip features; encoder blocks get dense local heads unless the method is bp.
    """
    check_method(method)
    head_kwargs = dict(head_kwargs or {})
    blocks: list[Block] = []
    local = method in LOCAL_METHODS
    if task == "cls":
        ignore = -100 if ignore_index is None else ignore_index
        for k, (body, shape) in enumerate(zip(bodies, out_shapes, strict=True)):
            last = k == len(bodies) - 1
            if local:
                head = LocalHead(method, shape, num_classes, projector=projector, pool=pool, **head_kwargs)
            elif last:
                head = TaskHead(task_head, ignore_index=ignore)
            else:
                head = None
            blocks.append(Block(body, head))
    else:
        if decoder is None:
            raise UserError("a segmentation model needs a decoder block")
        ignore = 255 if ignore_index is None else ignore_index
        for body, shape in zip(bodies, out_shapes, strict=True):
            head = dense_head(method, shape[0], num_classes, ignore_index=ignore, **head_kwargs) if local else None
            blocks.append(Block(body, head))
        blocks.append(Block(decoder, TaskHead(task_head, dice=dice, ignore_index=ignore), takes_skips=True))
    return DecoupledModel(blocks, method, task, num_classes, config=config, **model_kwargs)
