"""Replicated stages: R processes train one stage on R shards of each batch, as one process would on the whole.

A stage's replicas form one data-parallel group (the `data` dimension of a (pipe, data) `DeviceMesh`). Three things
make R replicas at batch R·b train exactly like one process at batch R·b (up to floating-point order):

- The local losses couple the samples of a batch (DeInfoReg's similarity and covariance terms, SCPL's contrastive
  term), so each replica gathers the projections (and labels) of the whole stage with a differentiable all-gather
  (as VICReg and SimCLR implementations do; `all_gather_grad`) and computes the loss on the stage's whole batch.
  The auxiliary cross-entropy stays per shard: the mean of the shards' means is the batch's.
- BatchNorm normalises with the statistics of the whole batch: `ReplicaBatchNorm` sums each channel's count, sum and
  sum of squares over the group with the differentiable `all_reduce` (torch's `SyncBatchNorm` refuses CPU tensors).
- Every replica's backward gives the gradient of R copies of the same loss with respect to its own shard (the
  all-gather's backward sums over the group), so averaging the gradients over the group (one `all_reduce` per
  stage) gives the gradient of the whole batch's loss. Every replica then takes the same optimizer step.

`replica_loss="shard"` is the cheaper alternative (plain data parallelism): each replica computes the loss and the
BatchNorm statistics on its own shard, and only the gradients are averaged. It is a different method (the local
loss then sees b samples, not R·b); the pipeline bench measures what it changes.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn

__all__ = ["REPLICA_LOSSES", "ReplicaBatchNorm", "average_buffers", "average_grads", "gather_losses", "sync_bn"]

REPLICA_LOSSES = ("global", "shard")


class ReplicaBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch spread over `group` (same state dict keys as
    `nn.BatchNorm1d/2d/3d`, so a stage's weights load into the plain model)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, group: dist.ProcessGroup):
        super().__init__(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        # the same parameter and buffer objects: optimizers built on the plain model keep working
        for name, p in bn.named_parameters(recurse=False):
            setattr(self, name, p)
        for name, b in bn.named_buffers(recurse=False):
            setattr(self, name, b)
        self.group = group
        self.train(bn.training)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        n = torch.full((1,), x.numel() / x.shape[1], dtype=torch.float32, device=x.device)
        stats = torch.cat([xf.sum(dims), xf.pow(2).sum(dims), n])
        with warnings.catch_warnings():  # see all_gather_grad
            warnings.simplefilter("ignore", FutureWarning)
            stats = dist_nn.all_reduce(stats, group=self.group)  # differentiable: the backward sums over the group
        c = x.shape[1]
        count = stats[-1]
        mean = stats[:c] / count
        var = (stats[c : 2 * c] / count - mean.pow(2)).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_bn(module: nn.Module, group: dist.ProcessGroup) -> nn.Module:
    """Replace every BatchNorm in `module` by a `ReplicaBatchNorm` over `group` (in place; returns `module`)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, ReplicaBatchNorm):
        return ReplicaBatchNorm(module, group)
    for name, child in module.named_children():
        new = sync_bn(child, group)
        if new is not child:
            setattr(module, name, new)
    return module


def all_gather_grad(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """The group's tensors concatenated in rank order, differentiable: each rank writes its own rows into a zero
    buffer and `torch.distributed.nn.functional.all_reduce` sums them (its backward sums the gradients over the
    group and the rank keeps its rows' share). `dist_nn.all_gather` would be cheaper, but its backward on gloo
    emulates reduce-scatter with a scatter that fails on a subgroup (a global rank taken for a group rank)."""
    n, me = dist.get_world_size(group), dist.get_rank(group)
    full = t.new_zeros((n * t.shape[0], *t.shape[1:]))
    full = full.index_copy(0, torch.arange(me * t.shape[0], (me + 1) * t.shape[0], device=t.device), t)
    with warnings.catch_warnings():  # deprecated for torch.compile's functional collectives, which lack autograd
        warnings.simplefilter("ignore", FutureWarning)
        return dist_nn.all_reduce(full, group=group)


def _gathered_combine(combine, group: dist.ProcessGroup, z: torch.Tensor, y: torch.Tensor, ce: torch.Tensor):
    ys = [torch.empty_like(y) for _ in range(dist.get_world_size(group))]
    dist.all_gather(ys, y.contiguous(), group=group)
    return combine(all_gather_grad(z, group), torch.cat(ys), ce)


def gather_losses(head: nn.Module, group: dist.ProcessGroup) -> None:
    """Make a local head compute its method's loss on the projections of the whole group (its `_combine`, where the
    projections and labels meet the loss, sees the gathered batch; the cross-entropy term stays per shard)."""
    head._combine = functools.partial(_gathered_combine, head._combine, group)


def average_grads(params: Iterable[nn.Parameter], group: dist.ProcessGroup, replicas: int) -> None:
    """Average the gradients over the group: one all-reduce of all of them flattened."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    flat.div_(replicas)
    i = 0
    for g in grads:
        g.copy_(flat[i : i + g.numel()].view_as(g))
        i += g.numel()


@torch.no_grad()
def average_buffers(module: nn.Module, group: dist.ProcessGroup, replicas: int) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the group: per-shard BatchNorm leaves
    each replica with its own."""
    for buf in module.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf, group=group)
            buf.div_(replicas)
