"""DeInfoReg Zoo: decoupled supervised learning with information regularization for timm and SMP models."""

from . import losses
from ._build import build_from_config
from ._factory import create_model, list_models, parse_model_kwargs
from .checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .decoupled import Block, DecoupledModel, build_decoupled
from .errors import UserError
from .export import export
from .grow import freeze, grow
from .heads import LOCAL_METHODS, METHODS
from .models import paper_resnet18, paper_vgg
from .publish import push_to_hub
from .tasks import TASK_DEFAULTS, TASKS

__all__ = [
    "Block",
    "CheckpointError",
    "DecoupledModel",
    "LOCAL_METHODS",
    "METHODS",
    "TASKS",
    "TASK_DEFAULTS",
    "UserError",
    "build_decoupled",
    "build_from_config",
    "create_model",
    "export",
    "freeze",
    "grow",
    "list_models",
    "load_checkpoint",
    "losses",
    "parse_model_kwargs",
    "paper_resnet18",
    "paper_vgg",
    "push_to_hub",
    "save_checkpoint",
]
__version__ = "0.1.0"
