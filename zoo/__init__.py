"""DeInfoReg Zoo: decoupled supervised learning with information regularization for timm and SMP models."""

from . import losses
from ._factory import create_model, list_models
from .decoupled import Block, DecoupledModel, build_decoupled
from .heads import METHODS
from .models import paper_resnet18, paper_vgg

__all__ = [
    "Block",
    "DecoupledModel",
    "METHODS",
    "build_decoupled",
    "create_model",
    "list_models",
    "losses",
    "paper_resnet18",
    "paper_vgg",
]
__version__ = "0.1.0"
