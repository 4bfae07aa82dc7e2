"""The zoo's own registered models (the DeInfoReg paper's VGG and CIFAR ResNet-18)."""

from .paper import paper_resnet18, paper_vgg

__all__ = ["paper_resnet18", "paper_vgg"]
