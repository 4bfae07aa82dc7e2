"""The zoo's own registered models: the DeInfoReg paper's VGG and CIFAR ResNet-18, and plain deep CNNs."""

from .paper import paper_resnet18, paper_vgg
from .plain import PlainCNN, plain_cnn

__all__ = ["PlainCNN", "paper_resnet18", "paper_vgg", "plain_cnn"]
