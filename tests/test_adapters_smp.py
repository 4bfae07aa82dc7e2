"""SMP adapter: split-equals-whole per architecture and encoder kind, dense heads, export, a short training run."""

from __future__ import annotations

import os
import time
import warnings

import pytest
import torch

from zoo.adapters import smp as smp_adapter
from zoo.heads import METHODS, DecodingHead, DenseLocalHead, TaskHead

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*timm-.*deprecated")

# (arch, encoder): the three required architectures, SMP's own encoders and `tu-` timm encoders (tu-convnext
# inserts a 0-channel stride-2 dummy feature); RUN_ALL_MODELS=1 adds more
CASES = [
    ("unet", "resnet18"),
    ("fpn", "resnet18"),
    ("deeplabv3plus", "resnet18"),
    ("unet", "efficientnet-b0"),
    ("unet", "tu-convnext_atto"),
    ("unet", "tu-mobilenetv3_small_050"),
]
WIDE = [
    ("unet", "resnet50"),
    ("unet", "mobilenet_v2"),
    ("unet", "densenet121"),
    ("unet", "tu-resnet18"),
    ("unet", "tu-efficientnet_b0"),
    ("unet", "tu-regnetx_002"),
    ("fpn", "tu-convnext_atto"),
    ("deeplabv3plus", "tu-convnext_atto"),
    ("deeplabv3", "resnet18"),
    ("unetplusplus", "resnet18"),
    ("manet", "resnet18"),
    ("linknet", "resnet18"),
    ("pspnet", "resnet18"),
    ("upernet", "resnet18"),
]
RUN_ALL = os.environ.get("RUN_ALL_MODELS") == "1"
ALL = CASES + (WIDE if RUN_ALL else [])
IMG = 64
C = 3


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, IMG, IMG, generator=g)
    y = torch.randint(0, C, (2, IMG, IMG), generator=g)
    y[0, :4, :4] = 255  # some ignored pixels
    return x, y


@pytest.mark.parametrize("arch,name", ALL)
def test_split_equals_whole(arch: str, name: str) -> None:
    torch.manual_seed(0)
    model = smp_adapter.create(name, arch=arch, method="bp", num_classes=C, img_size=IMG)
    torch.manual_seed(0)  # same seed, same init: the stacked blocks must be the SMP model
    ref = smp_adapter._new_smp(arch, name, C, 3, {}).eval()
    model.eval()
    x, _ = _batch()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, C, IMG, IMG)
        assert (out - ref(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch,name", ALL[:1] + ALL[4:5] if not RUN_ALL else ALL)
def test_one_step_every_method(arch: str, name: str, method: str) -> None:
    torch.manual_seed(0)
    model = smp_adapter.create(name, arch=arch, method=method, num_classes=C, img_size=IMG, dice=True)
    x, y = _batch()
    step = model.step(x, y)
    assert len(step.losses) == (1 if method == "bp" else model.num_blocks)
    assert all(torch.isfinite(loss) for loss in step.losses)
    assert "dice" in step.parts[-1]
    sum(step.losses).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    model.eval()
    with torch.no_grad():
        preds = model.forward_blocks(x)
    for p in preds:
        assert p is None or (p.shape == (2, C, IMG, IMG) and torch.isfinite(p).all())


def test_default_is_two_blocks_with_decoding_heads() -> None:
    """The default chosen on validation (leaderboards/explore/seg_sweep): K = 2, decoding head, recorded."""
    model = smp_adapter.create("resnet18", num_classes=C, img_size=IMG)
    assert model.num_blocks == 2 and model.config["num_blocks"] == 2
    assert isinstance(model.blocks[0].head, DecodingHead) and model.config["head_kwargs"] == {"head": "decoding"}
    bp = smp_adapter.create("resnet18", method="bp", num_classes=C, img_size=IMG)
    assert bp.num_blocks == 2 and bp.blocks[0].head is None


def test_blocks_are_encoder_stages_plus_decoder() -> None:
    """The first layout stays available: one block per stage + the decoder, pointwise heads."""
    model = smp_adapter.create("resnet18", num_classes=C, img_size=IMG, num_blocks=6, head="pointwise")
    assert model.num_blocks == 6  # 5 encoder stages + the decoder
    assert all(isinstance(b.head, DenseLocalHead) for b in model.blocks[:-1])
    assert isinstance(model.blocks[-1].head, TaskHead) and model.blocks[-1].takes_skips
    # dense heads sized from the real channel counts
    assert [b.head.projector[0].in_channels for b in model.blocks[:-1]] == [64, 64, 128, 256, 512]
    convnext = smp_adapter.create("tu-convnext_atto", num_classes=C, img_size=IMG, num_blocks=5)
    assert (
        convnext.num_blocks == 5 and len(convnext.blocks[-1].body.stages) == 0
    )  # the 0-channel dummy feature is no block


def test_local_losses_isolated() -> None:
    model = smp_adapter.create("resnet18", arch="fpn", num_classes=C, img_size=IMG)
    x, y = _batch()
    for k, loss in enumerate(model.local_losses(x, y)):
        model.zero_grad(set_to_none=True)
        loss.backward()
        for j, block in enumerate(model.blocks):
            assert any(p.grad is not None for p in block.parameters()) == (j == k), (k, j)


def test_num_blocks_rule_and_encoder_depth() -> None:
    with pytest.raises(ValueError, match="num_blocks runs from 2 .* to 6"):
        smp_adapter.create("resnet18", num_blocks=7, img_size=IMG)
    model = smp_adapter.create(
        "resnet18", num_blocks=4, encoder_depth=3, decoder_channels=(32, 16, 8), num_classes=C, img_size=IMG
    )
    assert model.num_blocks == 4
    x, y = _batch()
    assert len(model.local_losses(x, y)) == 4


@pytest.mark.parametrize("method", ["bp", "deinforeg"])
@pytest.mark.parametrize("arch,name", [("unet", "resnet18"), ("deeplabv3plus", "tu-convnext_atto")])
def test_export_matches(arch: str, name: str, method: str, perturb) -> None:
    torch.manual_seed(0)
    model = smp_adapter.create(name, arch=arch, method=method, num_classes=C, img_size=IMG)
    perturb(model)  # weights and BN statistics away from their init
    x, _ = _batch()
    plain = smp_adapter.export(model)
    assert type(plain).__module__.startswith("segmentation_models_pytorch")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5)


def test_config_rebuilds_and_records() -> None:
    model = smp_adapter.create("tu-resnet18", arch="fpn", method="scpl", num_classes=C, img_size=IMG)
    cfg = model.config
    assert cfg["task"] == "seg" and cfg["arch"] == "fpn" and cfg["name"] == cfg["encoder_name"] == "tu-resnet18"
    assert len(cfg["mean"]) == 3
    again = smp_adapter.create(**cfg)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_unsupported_and_unknown() -> None:
    with pytest.raises(ValueError, match="cannot be cut into blocks.*Supported"):
        smp_adapter.create("mit_b0", img_size=IMG)
    with pytest.raises(ValueError, match="close matches: .*resnet18"):
        smp_adapter.create("resnet81")
    with pytest.raises(ValueError, match="unsupported SMP architecture"):
        smp_adapter.create("resnet18", arch="dpt")


def test_list_supported() -> None:
    names = smp_adapter.list_supported()
    for n in ("resnet18", "resnet50", "efficientnet-b0", "mobilenet_v2", "tu-resnet50", "tu-convnext_tiny"):
        assert n in names
    assert "mit_b0" not in names
    assert all(n.startswith("tu-") for n in smp_adapter.list_supported("tu-*"))


def _miou(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    ious = []
    for c in range(num_classes):
        inter = ((pred == c) & (y == c)).sum().item()
        union = ((pred == c) | (y == c)).sum().item()
        if union:
            ious.append(inter / union)
    return 100.0 * sum(ious) / len(ious)


@pytest.mark.slow
def test_deinforeg_unet_learns_shapes() -> None:
    """A short DeInfoReg run of a Unet on the embedded shapes set lifts mIoU well above chance.

    The shapes set is hard on purpose (textured backgrounds, line distractors, occlusion): on a CPU budget both bp
    and DeInfoReg reach about 27-30 mIoU (32x32 images, a few epochs), against about 11 for uniform guessing and
    about 19 for predicting background everywhere.
    """
    import datasets

    torch.manual_seed(0)
    train = datasets.create_dataset("shapes", "train", image_size=32)
    val = datasets.create_dataset("shapes", "val", image_size=32)
    k = train.info.num_classes
    xs, ys = (torch.stack(t) for t in zip(*[train[i] for i in range(len(train))]))
    vx, vy = (torch.stack(t) for t in zip(*[val[i] for i in range(len(val))]))
    model = smp_adapter.create("resnet18", arch="unet", method="deinforeg", num_classes=k, img_size=32)
    opts = [torch.optim.Adam(g, lr=2e-3) for g in model.param_groups()]
    start = time.time()
    for _ in range(4):
        model.train()
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs) - 15, 16):
            idx = perm[i : i + 16]
            losses = model.local_losses(xs[idx], ys[idx])
            for opt in opts:
                opt.zero_grad(set_to_none=True)
            sum(losses).backward()  # each loss reaches only its own block
            for opt in opts:
                opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(vx).argmax(1)
    freq = torch.bincount(vy.flatten(), minlength=k).double() / vy.numel()
    uniform = 100.0 * float((freq / (k * freq + 1 - freq)).mean())  # expected mIoU of uniform guessing
    background = _miou(torch.zeros_like(vy), vy, k)
    miou = _miou(pred, vy, k)
    print(f"mIoU {miou:.1f} (uniform {uniform:.1f}, all-background {background:.1f}) in {time.time() - start:.0f}s")
    assert miou > max(2 * uniform, background + 5)
