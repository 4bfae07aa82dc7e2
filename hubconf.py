"""torch.hub entry points for DeInfoReg Zoo.

    model = torch.hub.load("/path/to/clone", "paper_vgg", source="local", width=0.25, img_size=16)
    model = torch.hub.load("/path/to/clone", "paper_vgg", source="local", pretrained=True, tag="deinforeg_digits")
    model = torch.hub.load("/path/to/clone", "create_model", source="local", name="resnet18.bp_digits")

`pretrained=True` pulls the manifest's `name.tag` checkpoint (verified by sha256; see zoo/checkpoints.py). Every
entry point returns a `zoo.DecoupledModel`; `zoo.export(model)` gives the plain timm / SMP / torch model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

dependencies = ["torch", "torchvision", "timm", "segmentation_models_pytorch", "safetensors"]

import zoo  # noqa: E402  (torch.hub reads `dependencies` before anything is imported)

if TYPE_CHECKING:  # not imported at run time: torch.hub would list it as an entry point
    from zoo import DecoupledModel


def _build(name: str, pretrained: bool, tag: str | None, **kwargs: Any) -> DecoupledModel:
    if pretrained or tag:
        full = f"{name}.{tag}" if tag else name
        return zoo.create_model(full, pretrained=True, num_classes=kwargs.get("num_classes"))
    return zoo.create_model(name, **kwargs)


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> DecoupledModel:
    """Any zoo model: `zoo.create_model(name, pretrained=..., **kwargs)` (`name.tag` selects pretrained weights)."""
    return zoo.create_model(name, pretrained=pretrained, **kwargs)


def load_checkpoint(path_or_url: str, **kwargs: Any) -> DecoupledModel:
    """A checkpoint folder or URL (`zoo.load_checkpoint`)."""
    return zoo.load_checkpoint(path_or_url, **kwargs)


def paper_vgg(pretrained: bool = False, tag: str | None = None, **kwargs: Any) -> DecoupledModel:
    """The paper's 4-block VGG (pretrained tags: see `zoo.list_models('paper_vgg*', pretrained=True)`)."""
    return _build("paper_vgg", pretrained, tag, **kwargs)


def paper_resnet18(pretrained: bool = False, tag: str | None = None, **kwargs: Any) -> DecoupledModel:
    """The paper's CIFAR ResNet-18, four stages as four blocks."""
    return _build("paper_resnet18", pretrained, tag, **kwargs)


def resnet18(pretrained: bool = False, tag: str | None = None, **kwargs: Any) -> DecoupledModel:
    """timm resnet18 cut into its four stages."""
    return _build("resnet18", pretrained, tag, **kwargs)


def unet_resnet18(pretrained: bool = False, tag: str | None = None, **kwargs: Any) -> DecoupledModel:
    """SMP Unet with a resnet18 encoder (task seg); pretrained names are `unet_resnet18.<tag>`."""
    if pretrained or tag:
        return _build("unet_resnet18", pretrained, tag, **kwargs)
    return zoo.create_model("resnet18", task="seg", arch="unet", **kwargs)
