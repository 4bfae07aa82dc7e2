"""DeInfoReg Zoo: decoupled supervised learning with information regularization for timm and SMP models."""

from . import losses
from ._factory import create_model, list_models
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .decoupled import Block, DecoupledModel, build_decoupled
from .export import export
from .grow import freeze, grow
from .heads import METHODS
from .models import paper_resnet18, paper_vgg

__all__ = [
    "Block",
    "CheckpointError",
    "DecoupledModel",
    "METHODS",
    "build_decoupled",
    "create_model",
    "export",
    "freeze",
    "grow",
    "list_models",
    "load_checkpoint",
    "losses",
    "paper_resnet18",
    "paper_vgg",
    "save_checkpoint",
]
__version__ = "0.1.0"
