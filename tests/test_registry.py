"""The registry: `zoo.list_models` per task with wildcards, `zoo.create_model` dispatch, defaults and errors."""

from __future__ import annotations

import warnings

import pytest
import torch

import zoo

torch.set_num_threads(1)
warnings.filterwarnings("ignore", message=".*timm-.*deprecated")


def test_list_models_per_task() -> None:
    cls = zoo.list_models(task="cls")
    seg = zoo.list_models(task="seg")
    for n in ("resnet50", "convnext_tiny", "efficientnet_b0", "vit_base_patch16_224", "paper_vgg", "paper_resnet18"):
        assert n in cls
    for n in ("resnet50", "efficientnet-b0", "tu-convnext_tiny"):
        assert n in seg
    assert "paper_vgg" not in seg
    assert set(zoo.list_models()) == set(cls) | set(seg)
    assert cls == sorted(cls)


def test_list_models_wildcards() -> None:
    names = zoo.list_models("resnet5*", task="cls")
    assert "resnet50" in names and "resnet50d" in names
    assert all(n.startswith("resnet5") for n in names)
    assert zoo.list_models("tu-convnext_*", task="seg") and all(
        n.startswith("tu-convnext_") for n in zoo.list_models("tu-convnext_*", task="seg")
    )
    assert zoo.list_models("no_such_model*") == []
    with pytest.raises(ValueError, match="unknown task"):
        zoo.list_models(task="det")


def test_create_model_cls_and_seg() -> None:
    cls = zoo.create_model("test_resnet", task="cls", method="deinforeg", num_classes=10, img_size=32)
    assert isinstance(cls, zoo.DecoupledModel) and cls.task == "cls" and cls.num_classes == 10
    with torch.no_grad():
        assert cls.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    seg = zoo.create_model("resnet18", task="seg", arch="unet", method="deinforeg", num_classes=3, img_size=64)
    assert seg.task == "seg" and seg.config["arch"] == "unet"
    with torch.no_grad():
        assert seg.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 3, 64, 64)
    fpn = zoo.create_model("resnet18", task="seg", arch="fpn", method="bp", num_classes=3)
    assert fpn.config["arch"] == "fpn" and fpn.method == "bp"


def test_create_model_drops_unset_kwargs() -> None:
    # None means "use the model's default", never "pass None through"
    model = zoo.create_model("test_resnet", num_classes=5, num_blocks=None, img_size=None, projector=None)
    assert model.num_blocks == 4 and model.config["projector"] == "pool"
    assert model.config["img_size"] == model.config["input_size"][-1]
    default = zoo.create_model("test_resnet", img_size=32)
    assert default.num_classes == 1000  # timm's default


def test_create_model_from_config() -> None:
    model = zoo.create_model("test_vit", method="scpl", num_classes=4, num_blocks=2, img_size=32)
    again = zoo.create_model(**model.config)
    assert again.config == model.config
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    seg = zoo.create_model("tu-convnext_atto", task="seg", arch="fpn", num_classes=3, img_size=64)
    again = zoo.create_model(**seg.config)
    assert again.config == seg.config and again.num_blocks == seg.num_blocks


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(ValueError, match="close matches: .*resnet50"):
        zoo.create_model("resnet5O", task="cls")
    with pytest.raises(ValueError, match="close matches: .*paper_vgg"):
        zoo.create_model("paper_vg", task="cls")
    with pytest.raises(ValueError, match="close matches: .*efficientnet-b0"):
        zoo.create_model("efficientnet_b0x", task="seg")
    with pytest.raises(ValueError, match="unknown task"):
        zoo.create_model("resnet18", task="det")
