"""Local losses for decoupled training.

`deinforeg` follows the DeInfoReg paper (decoupled supervised learning with information regularization) and the
authors' public code: an invariance term that matches the sample-to-sample correlation of the L2-normalised projector
output to that of the one-hot labels, plus VICReg-style variance and covariance terms. `scpl` is the supervised
contrastive loss of SCPL (Khosla et al. 2020 formulation, temperature 0.1) and `greedy` the local cross-entropy of
Decoupled Greedy Learning (Belilovsky et al. 2020).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["DeInfoRegLoss", "deinforeg", "scpl", "similarity_matrix", "check_labels"]


class DeInfoRegLoss(NamedTuple):
    total: torch.Tensor
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def check_labels(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
    """Raise a one-line ValueError for inputs a local loss cannot use."""
    if z.dim() != 2:
        raise ValueError(f"expected embeddings of shape (batch, dim), got {tuple(z.shape)}")
    if z.shape[0] == 0:
        raise ValueError("empty batch: a local loss needs at least 2 samples")
    if z.shape[0] < 2:
        raise ValueError("batch of size 1: the batch statistics of a local loss need at least 2 samples")
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {z.shape[0]} embeddings")
    if y.dtype.is_floating_point:
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]")


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Sample-to-sample Pearson correlation: rows centred, L2-normalised, `X Xᵀ` clamped to [-1, 1]."""
    x = x - x.mean(dim=1, keepdim=True)
    x = F.normalize(x, p=2, dim=1)
    return (x @ x.t()).clamp(-1.0, 1.0)


def deinforeg(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    batch: int | None = None,
) -> DeInfoRegLoss:
    """DeInfoReg loss on projector output `z` (B×D) with integer labels `y`.

    `weights` are (invariance, variance, covariance). `batch` is the B the variance term divides by (the authors'
    code divides by its batch of images); None: the rows of `z`. Dense heads whose rows are pixels pass the number
    of images (see zoo.heads.DecodingHead). Computed in float32 whatever the input dtype, so bfloat16 activations do
    not lose the small variance and covariance terms.
    """
    check_labels(z, y, num_classes)
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    z = z.float()
    b, d = z.shape
    zn = F.normalize(z, p=2, dim=1)

    target = similarity_matrix(F.one_hot(y.long(), num_classes).float())
    invariance = (target - similarity_matrix(zn)).pow(2).mean()

    std = torch.sqrt(zn.var(dim=0, unbiased=True) + 1e-7)
    variance = F.relu(1.0 - std).mean() / (b if batch is None else batch)

    centred = zn - zn.mean(dim=0, keepdim=True)
    cov = centred.t() @ centred / b
    off_diag = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    covariance = off_diag / d

    w_inv, w_var, w_cov = weights
    total = w_inv * invariance + w_var * variance + w_cov * covariance
    return DeInfoRegLoss(total, invariance, variance, covariance)


def scpl(z: torch.Tensor, y: torch.Tensor, num_classes: int, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss: every other sample of the same class is a positive.

    Anchors without a positive in the batch are left out; a batch with none returns a zero that still carries a
    graph, so the caller's backward does not fail.
    """
    check_labels(z, y, num_classes)
    zn = F.normalize(z.float(), p=2, dim=1)
    b = zn.shape[0]
    logits = zn @ zn.t() / temperature
    self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (y.view(-1, 1) == y.view(1, -1)) & ~self_mask
    n_pos = positives.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return zn.sum() * 0.0
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    return -(pos_log_prob[has_pos] / n_pos[has_pos]).mean()
