"""`zoo.export`: plain timm / SMP / torch models whose outputs equal the decoupled model's; torch.hub entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import zoo
from zoo.export import ExitNet
from zoo.heads import DecodingHead, DenseLocalHead, LocalHead, TaskHead

REPO = Path(__file__).resolve().parents[1]


def _no_local_heads(net: nn.Module) -> None:
    assert not any(isinstance(m, (LocalHead, DenseLocalHead, TaskHead, zoo.DecoupledModel)) for m in net.modules())


def _same(model: zoo.DecoupledModel, x: torch.Tensor) -> nn.Module:
    model.eval()
    net = zoo.export(model)
    _no_local_heads(net)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model(x), rtol=1e-5, atol=1e-5)
    return net


def _adapter_export(name: str) -> None:
    import importlib

    mod = importlib.import_module(f"zoo.adapters.{name}")
    if not hasattr(mod, "export"):
        pytest.skip(f"zoo.adapters.{name}.export is not written yet")


@pytest.mark.parametrize("method", ["deinforeg", "bp"])
def test_paper_last_exit(method: str):
    torch.manual_seed(0)
    m = zoo.create_model("paper_vgg", method=method, width=0.125, img_size=16)
    net = _same(m, torch.randn(4, 3, 16, 16))
    assert isinstance(net, ExitNet) and len(net.bodies) == 4


def test_paper_truncated_at_best_block():
    torch.manual_seed(0)
    m = zoo.create_model("paper_resnet18", width=0.125, img_size=16)
    m.set_best_block(1)
    m.exit_policy = "best"
    net = _same(m, torch.randn(4, 3, 16, 16))
    assert isinstance(net, ExitNet) and len(net.bodies) == 2
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in m.parameters())


def test_adaptive_exit_refused():
    m = zoo.create_model("paper_vgg", width=0.125, img_size=16)
    m.exit_policy = "adaptive"
    with pytest.raises(ValueError, match="adaptive"):
        zoo.export(m)


@pytest.mark.parametrize("method", ["deinforeg", "bp"])
def test_timm_export(method: str):
    _adapter_export("timm")
    import timm

    torch.manual_seed(0)
    m = zoo.create_model("resnet18", method=method, num_classes=10, img_size=32)
    net = _same(m, torch.randn(2, 3, 32, 32))
    assert isinstance(net, timm.models.ResNet)


def test_smp_export():
    _adapter_export("smp")
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    m = zoo.create_model("resnet18", task="seg", arch="unet", num_classes=4, img_size=32)
    net = _same(m, torch.randn(2, 3, 32, 32))
    assert isinstance(net, smp.Unet)


def test_torch_hub_local(tmp_path: Path):
    m = torch.hub.load(str(REPO), "paper_vgg", source="local", width=0.125, img_size=16, trust_repo=True)
    assert isinstance(m, zoo.DecoupledModel) and m.config["width"] == 0.125
    with pytest.raises(RuntimeError, match="Cannot find callable"):
        torch.hub.load(str(REPO), "no_such_model", source="local", trust_repo=True)


@pytest.mark.parametrize(
    "kw", [{"num_blocks": 3, "head": "decoding", "recon": 0.1}, {"num_blocks": 3, "head": "pointwise"}]
)
@pytest.mark.parametrize("exit_block", [0, 1])
def test_grouped_seg_encoder_exit(kw: dict, exit_block: int):
    """An encoder-block exit of a grouped seg model (blocks returning several stage features): the next body and
    the head read the deepest feature, as in the model; the decoding head's reconstruction branch is dropped."""
    torch.manual_seed(0)
    m = zoo.create_model("resnet18", task="seg", num_classes=4, img_size=32, **kw)
    assert m.blocks[exit_block].num_outputs > 1  # 6 units in 3 blocks: each encoder block holds 2 stages
    m.set_best_block(exit_block)
    m.exit_policy = "best"
    net = _same(m, torch.randn(2, 3, 32, 32))
    assert isinstance(net, ExitNet) and len(net.bodies) == exit_block + 1
    assert not any(isinstance(mod, DecodingHead) for mod in net.modules())
    assert not any("reconstruct" in n for n, _ in net.named_modules())
