"""timm adapter: split-equals-whole per family, every method trains every parameter, export, checkpoints."""

from __future__ import annotations

import copy
import os

import pytest
import timm
import torch

import zoo
from zoo.adapters import timm as timm_adapter
from zoo.errors import UserError
from zoo.heads import METHODS

torch.set_num_threads(1)

# one tiny model per family that must work; RUN_ALL_MODELS=1 adds larger and sibling variants
FAMILIES = {
    "resnet": "test_resnet",
    "regnet": "regnetx_002",
    "convnext": "test_convnext",
    "efficientnet": "test_efficientnet",
    "mobilenetv3": "mobilenetv3_small_050",
    "vit": "test_vit",
    "deit": "deit_tiny_patch16_224",
}
WIDE = [
    "resnet18",
    "resnet50d",
    "resnext50_32x4d",
    "seresnext26d_32x4d",
    "regnety_002",
    "convnext_atto",
    "efficientnet_b0",
    "tf_efficientnet_b0",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "vit_tiny_patch16_224",
    "vit_medium_patch16_gap_256",
    "deit_tiny_distilled_patch16_224",
]
RUN_ALL = os.environ.get("RUN_ALL_MODELS") == "1"
NAMES = list(FAMILIES.values()) + (WIDE if RUN_ALL else [])
IMG = 32


def _is_vit(name: str) -> bool:
    return timm_adapter._module_of(name) in timm_adapter.VIT_MODULES


def _reference(name: str, num_classes: int) -> torch.nn.Module:
    kw = {"img_size": IMG} if _is_vit(name) else {}
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)


def _batch(num_classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, IMG, IMG, generator=g), torch.tensor([0, num_classes - 1])


@pytest.mark.parametrize("name", NAMES)
def test_split_equals_whole(name: str) -> None:
    torch.manual_seed(0)
    model = timm_adapter.create(name, method="bp", num_classes=5, img_size=IMG)
    torch.manual_seed(0)  # same seed, same init: the decoupled bp model must be the timm model
    ref = _reference(name, 5).eval()
    model.eval()
    x, _ = _batch()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-5
    assert model.num_blocks == 4


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NAMES)
def test_one_step_every_method(name: str, method: str) -> None:
    torch.manual_seed(0)
    model = timm_adapter.create(name, method=method, num_classes=5, img_size=IMG)
    x, y = _batch()
    losses = model.local_losses(x, y)
    assert len(losses) == (1 if method == "bp" else model.num_blocks)
    assert all(torch.isfinite(loss) for loss in losses)
    sum(losses).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    model.eval()
    with torch.no_grad():
        out = model(x)
        preds = model.forward_blocks(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    assert sum(p is not None for p in preds) == (1 if method == "bp" else model.num_blocks)


@pytest.mark.parametrize("name", [FAMILIES["resnet"], FAMILIES["vit"]])
def test_local_losses_isolated(name: str) -> None:
    model = timm_adapter.create(name, method="deinforeg", num_classes=5, img_size=IMG)
    x, y = _batch()
    for k, loss in enumerate(model.local_losses(x, y)):
        model.zero_grad(set_to_none=True)
        loss.backward()
        for j, block in enumerate(model.blocks):
            has = any(p.grad is not None for p in block.parameters())
            assert has == (j == k), (k, j)


def test_num_blocks_merges_and_bounds() -> None:
    model = timm_adapter.create("test_resnet", method="deinforeg", num_classes=5, num_blocks=2, img_size=IMG)
    assert model.num_blocks == 2 and model.config["num_blocks"] == 2
    # local heads are sized from the real channel counts of each merged block's output
    x, y = _batch()
    assert len(model.local_losses(x, y)) == 2
    with pytest.raises(ValueError, match="1 to 4 blocks"):
        timm_adapter.create("test_resnet", num_blocks=5, img_size=IMG)
    vit = timm_adapter.create("test_vit", num_blocks=6, img_size=IMG)
    assert vit.num_blocks == 6
    with pytest.raises(ValueError, match="1 to"):
        timm_adapter.create("test_vit", num_blocks=99, img_size=IMG)


def test_vit_pooling_follows_the_model() -> None:
    token = timm_adapter.create("test_vit", num_classes=5, img_size=IMG)
    assert token.blocks[0].head.projector.pool.kind == "token"
    gap = timm_adapter.create("test_vit", num_classes=5, img_size=IMG, global_pool="avg")
    assert gap.blocks[0].head.projector.pool.kind == "avg"
    assert gap.config["global_pool"] == "avg"  # timm kwargs are part of the architecture


@pytest.mark.parametrize("method", ["bp", "deinforeg"])
@pytest.mark.parametrize("name", NAMES)
def test_export_matches(name: str, method: str, perturb) -> None:
    torch.manual_seed(0)
    model = timm_adapter.create(name, method=method, num_classes=5, img_size=IMG)
    perturb(model)  # weights and BN statistics away from their init
    x, _ = _batch()
    if method != "bp" and "distilled" in name:
        with pytest.raises(NotImplementedError):
            timm_adapter.export(model)
        return
    plain = timm_adapter.export(model)
    assert type(plain).__module__.startswith("timm.")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5)


def test_export_refuses_early_exit() -> None:
    model = timm_adapter.create("test_resnet", num_classes=5, img_size=IMG)
    model.set_best_block(1)
    model.exit_policy = "best"
    with pytest.raises(NotImplementedError, match="last block"):
        timm_adapter.export(model)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_pretrained_backbone_from_local_file(name: str, tmp_path) -> None:
    src = _reference(name, 1000)  # a checkpoint with another classifier size
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    model = timm_adapter.create(name, method="bp", num_classes=7, img_size=IMG, pretrained_backbone=str(path))
    got = timm_adapter.export(model).state_dict()
    for k, v in src.state_dict().items():
        if got[k].shape == v.shape:
            assert torch.equal(got[k], v), k
    assert "pretrained_backbone" not in model.config  # weights are not architecture


def test_config_records_data_and_rebuilds() -> None:
    model = timm_adapter.create("test_convnext", method="greedy", num_classes=5, img_size=IMG, drop_path_rate=0.1)
    cfg = model.config
    assert cfg["name"] == cfg["timm_name"] == "test_convnext" and cfg["task"] == "cls"
    assert len(cfg["mean"]) == 3 and len(cfg["std"]) == 3 and cfg["input_size"][0] == 3
    again = timm_adapter.create(**cfg)
    assert again.config == cfg
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in again.state_dict().items()}


def test_unsupported_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="cannot be cut into blocks: module 'stage2' reads 2 tensors at once"):
        timm_adapter.create("hrnet_w18_small", img_size=64)  # parallel multi-resolution branches: no chain
    with pytest.raises(ValueError, match="parallel blocks read all four stages at once"):
        timm_adapter.create("coat_tiny", img_size=64)
    with pytest.raises(ValueError, match="close matches: .*resnet50"):
        timm_adapter.create("resnt50")


@pytest.mark.parametrize(
    "name", ["levit_128s", "xception41", "pit_ti_224", "xcit_nano_12_p16_224", "coat_lite_tiny", "hiera_tiny_224"]
)
def test_formerly_refused_families_split_equals_whole(name: str) -> None:
    """LeViT (a layout step between stem and stages), Xception (feature points inside branching blocks, snapped to
    the block), PiT, XCiT and CoaT-Lite (stage units that pass one packed tensor), Hiera (a Prefix for its opening)
    compute what timm computes; a deep copy (the pipeline partitioner, export) runs on its own weights."""
    torch.manual_seed(0)
    model = timm_adapter.create(name, method="bp", num_classes=5, img_size=64)
    torch.manual_seed(0)
    kw = {} if name.startswith("xception") else {"img_size": 64}
    ref = timm.create_model(name, pretrained=False, num_classes=5, **kw).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model.eval()(x) - ref(x)).abs().max() <= 1e-5
        clone = copy.deepcopy(model)
        for t in model.parameters():
            t.zero_()
        assert (clone(x) - ref(x)).abs().max() <= 1e-5
    assert model.num_blocks >= 3
    names = [n for n, _ in model.named_modules()]
    if name == "levit_128s":
        assert any(n.endswith("stages_0_layout") for n in names)  # the stem's map, flattened to tokens


def test_list_supported() -> None:
    names = timm_adapter.list_supported()
    for n in ("resnet50", "resnext50_32x4d", "resnet50d", "regnety_040", "convnext_tiny", "efficientnet_b0"):
        assert n in names
    for n in ("mobilenetv3_large_100", "vit_base_patch16_224", "deit_small_patch16_224"):
        assert n in names
    assert set(timm_adapter.list_supported("convnext_*")) <= {n for n in names if n.startswith("convnext_")}
    assert {"levit_128s", "pit_ti_224", "xcit_nano_12_p16_224", "coat_lite_tiny", "xception41"} <= set(names)
    assert "hrnet_w18_small" not in names


def test_cut_block_makes_every_residual_block_a_unit() -> None:
    """resnet18 under cut="block": 8 units (2 residual blocks per stage, the stem in the first) whose chain is the
    timm forward; num_blocks / block_units merge them; the default cut is unchanged; export rebuilds the same cut."""
    torch.manual_seed(0)
    model = timm_adapter.create("resnet18", method="bp", num_classes=5, img_size=IMG, cut="block")
    torch.manual_seed(0)
    ref = _reference("resnet18", 5).eval()
    assert model.num_blocks == 8 and model.config["cut"] == "block"
    first = [n for n, _ in model.blocks[0].body.named_children()]
    assert first[0] == "conv1" and first[-1] == "layer1_0"
    assert [list(b.body.named_children())[-1][0] for b in model.blocks[1:]] == [
        "layer1_1", "layer2_0", "layer2_1", "layer3_0", "layer3_1", "layer4_0", "layer4_1",
    ]  # fmt: skip
    x, _ = _batch()
    model.eval()
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-5
        assert (timm_adapter.export(model)(x) - ref(x)).abs().max() <= 1e-5
    assert timm_adapter.create("resnet18", num_classes=5, img_size=IMG, cut="block", num_blocks=4).num_blocks == 4
    uneven = timm_adapter.create("resnet18", num_classes=5, img_size=IMG, cut="block", block_units=[3, 5])
    assert uneven.num_blocks == 2 and len(uneven.blocks[1].body) == 5
    assert "cut" not in timm_adapter.create("resnet18", num_classes=5, img_size=IMG).config  # default: stages
    with pytest.raises(UserError, match="unknown cut 'layer'; valid choices: stage, block"):
        timm_adapter.create("resnet18", num_classes=5, img_size=IMG, cut="layer")
    with pytest.raises(UserError, match="block_units=\\[3, 4\\] must give every block at least one of this model's 8"):
        timm_adapter.create("resnet18", num_classes=5, img_size=IMG, cut="block", block_units=[3, 4])


def test_unknown_keyword_of_a_model_that_passes_kwargs_on_is_a_user_error():
    # RegNet's constructor takes **kwargs and hands them to its config: its signature cannot list every keyword
    with pytest.raises(UserError, match="takes no keyword bogus_depth"):
        zoo.create_model("regnetx_002", task="cls", num_classes=10, img_size=32, bogus_depth=3)
    model = zoo.create_model("regnetx_002", task="cls", num_classes=10, img_size=32, drop_rate=0.1)
    assert model.num_blocks >= 2
