"""How a decoupled model predicts: its exit policy. Every block with a head is an exit.

- `last`: the last active block's head.
- `best`: the block chosen on the validation split (`DecoupledModel.best_block`, saved with the weights).
- `adaptive`: per-sample early exit. A sample leaves at block k when that block is confident enough (mean over
  pixels of the top softmax probability ≥ `confidence`), or when blocks k-1 and k agree on every pixel's class
  and their softmax outputs have cosine similarity ≥ `similarity`; the last active block takes what is left. The
  reference code takes one argmax over the whole batch instead; here each sample decides for itself.

`adaptive_forward` runs only the blocks each sample still needs; `adaptive_from_blocks` gives the same answer from
every block's prediction (an evaluation that has them already). Both return the output and each sample's depth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UserError

__all__ = ["EXIT_POLICIES", "ExitRule", "adaptive_forward", "adaptive_from_blocks", "check_exit_policy"]

EXIT_POLICIES = ("last", "best", "adaptive")


class ExitRule(NamedTuple):
    """The adaptive exit's thresholds over a model's `num_active` running blocks."""

    num_active: int
    confidence: float
    similarity: float


def check_exit_policy(policy: str, method: str) -> None:
    if policy not in EXIT_POLICIES:
        raise UserError(f"unknown exit policy {policy!r}; valid choices: {', '.join(EXIT_POLICIES)}")
    if policy == "adaptive" and method == "bp":
        raise UserError("exit policy 'adaptive' needs a head on every block; method 'bp' has only the last")


def _probs(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes as (n, C, pixels); classification has one 'pixel'."""
    return logits.float().softmax(dim=1).reshape(logits.shape[0], logits.shape[1], -1)


def _leave(rule: ExitRule, prob: torch.Tensor, prev_prob: torch.Tensor | None, k: int) -> torch.Tensor:
    """Which samples exit at block k: confident enough, or agreeing with and similar to block k-1."""
    if k == rule.num_active - 1:
        return torch.ones(prob.shape[0], dtype=torch.bool, device=prob.device)
    leave = prob.max(dim=1).values.mean(dim=1) >= rule.confidence
    if prev_prob is not None:
        agree = (prob.argmax(1) == prev_prob.argmax(1)).all(dim=1)
        similar = F.cosine_similarity(prob.flatten(1), prev_prob.flatten(1), dim=1) >= rule.similarity
        leave = leave | (agree & similar)
    return leave


def adaptive_forward(
    rule: ExitRule,
    blocks: Sequence[nn.Module],
    x: torch.Tensor,
    to_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample early exit through `blocks` that only runs the blocks each sample still needs; `to_output`
    brings a head's logits to the input's resolution. Returns the output and each sample's depth (blocks run)."""
    b = x.shape[0]
    out: torch.Tensor | None = None
    depth = torch.full((b,), rule.num_active, dtype=torch.long, device=x.device)
    active = torch.arange(b, device=x.device)
    feats = [x]
    prev_prob: torch.Tensor | None = None
    for k, block in enumerate(blocks[: rule.num_active]):
        h = block(feats)
        feats.append(h)
        logits = to_output(block.head(h), x[active])
        if out is None:
            out = logits.new_zeros((b, *logits.shape[1:]))
        prob = _probs(logits)
        leave = _leave(rule, prob, prev_prob, k)
        out[active[leave]] = logits[leave]
        depth[active[leave]] = k + 1
        keep = ~leave
        if not bool(keep.any()):
            break
        active = active[keep]
        feats = [f[keep] for f in feats]
        prev_prob = prob[keep]
    assert out is not None
    return out, depth


def adaptive_from_blocks(rule: ExitRule, preds: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The adaptive exit's output and depths from every block's prediction, with no second forward."""
    preds = preds[: rule.num_active]
    if any(p is None for p in preds):
        raise UserError("the adaptive exit needs a head on every block")
    out = preds[-1].clone()
    depth = torch.full((out.shape[0],), rule.num_active, dtype=torch.long, device=out.device)
    undecided = torch.ones_like(depth, dtype=torch.bool)
    prev_prob: torch.Tensor | None = None
    for k, logits in enumerate(preds):
        prob = _probs(logits)
        now = _leave(rule, prob, prev_prob, k) & undecided
        out[now] = logits[now]
        depth[now] = k + 1
        undecided &= ~now
        prev_prob = prob
    return out, depth
