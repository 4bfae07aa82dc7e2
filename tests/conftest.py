"""Shared test settings: one intra-op thread (tiny tensors run faster so, and a busy 2-core box does not thrash)."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(1)


def _perturb(model: torch.nn.Module) -> None:
    """Move every float tensor (weights and BN statistics) off its init, so equality checks are not trivial."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.rand(t.shape, generator=g)
            if name.endswith("running_var"):
                t.mul_(1 + 0.1 * noise)  # variances stay positive
            else:
                t.add_(0.02 * (noise - 0.5))


@pytest.fixture
def perturb():
    return _perturb
