"""The decoupled checkpoint folder: save, load, rebuild, resume (the hub side, manifest and pulls, is `zoo.hub`).

A checkpoint is a folder in the layout timm and SMP use on model hubs: `config.json` (everything needed to rebuild
the architecture under "model", plus task, method, blocks, classes, chosen exit, input size, mean/std, dataset,
noise, metrics, commit) and `model.safetensors`. `training_state.pt` beside them (per-block optimizers and
schedulers, step, epoch, RNG) makes the folder resumable; it is never published. Every write goes to a hidden
temporary folder that is renamed into place, and `config.json` is written last, so an interrupted save never leaves
a folder that loads as valid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ._build import build_from_config
from ._files import CONFIG_NAME, TRAINING_STATE_NAME, WEIGHTS_NAME, fsync_dir, sha256_file, staged, write_json
from .decoupled import DecoupledModel
from .errors import CheckpointError
from .grow import regrow
from .hub import fetch_url_folder, get_pretrained_entry, is_hf_hub, is_url, pull, pull_hf_hub
from .runtime import RESULT_FILES, git_commit

__all__ = [
    "CheckpointError",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "TRAINING_STATE_NAME",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "load_training_state",
    "resume_trainer",
    "read_config",
    "load_pretrained",
    "load_hf_hub",
    "sha256_file",
]

# re-exported so a checkpoint's file names and error type are found where checkpoints are

FORMAT = "deinforeg-zoo"
FORMAT_VERSION = 1
# config keys that would fetch or read external weights when the architecture is rebuilt


# -- helpers ---------------------------------------------------------------------------------------------------
# -- save ------------------------------------------------------------------------------------------------------
def _input_size(config: dict[str, Any]) -> list[int] | None:
    # img_size is what the model was built (and trained) for; input_size is timm's pretrained_cfg default
    if config.get("img_size"):
        return [int(config.get("in_channels", 3)), int(config["img_size"]), int(config["img_size"])]
    if config.get("input_size"):
        return list(config["input_size"])
    return None


def _rng_to_plain(rng: dict[str, Any]) -> dict[str, Any]:
    """RNG states as tensors and tuples, so `torch.load(weights_only=True)` can read them back."""
    out = dict(rng)
    if "numpy" in rng and rng["numpy"] is not None:
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        out["numpy"] = (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), gauss)
    return out


def _rng_from_plain(rng: dict[str, Any]) -> dict[str, Any]:
    out = dict(rng)
    if "numpy" in rng and rng["numpy"] is not None:
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        out["numpy"] = (kind, keys.astype(np.uint32), int(pos), int(has_gauss), float(gauss))
    if "python" in rng and rng["python"] is not None:
        version, state, gauss = rng["python"]
        out["python"] = (version, tuple(state), gauss)
    return out


def save_checkpoint(
    model: DecoupledModel,
    path: str | os.PathLike,
    *,
    metadata: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write checkpoint folder `path` atomically (`config.json` + `model.safetensors` [+ `training_state.pt`]).

    `metadata` (dataset, noise, metrics, ...) is merged into config.json over the fields read from the model.
    `trainer_state` is `Trainer.state_dict()`; its "model" entry is dropped (the weights are the safetensors file).
    `dtype` (e.g. torch.float16) casts floating tensors for a smaller file; a resumable checkpoint keeps float32.
    """
    if not isinstance(model, DecoupledModel):
        raise CheckpointError(f"save_checkpoint needs a DecoupledModel, got {type(model).__name__}")
    if dtype is not None and not dtype.is_floating_point:
        raise CheckpointError(f"dtype must be a floating type, got {dtype}")
    if trainer_state is not None and dtype not in (None, torch.float32):
        raise CheckpointError("a resumable checkpoint (trainer_state) keeps float32 weights; drop dtype or the state")
    if not model.config.get("name"):
        raise CheckpointError("model.config has no 'name': it cannot be rebuilt with zoo.create_model(**config)")
    dest = Path(path).expanduser().absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)

    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.clone().contiguous()  # clone: safetensors refuses tensors that share storage

    mcfg = dict(model.config)
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": mcfg,
        "architecture": mcfg["name"] if mcfg.get("task", model.task) == "cls" else f"{mcfg.get('arch')}_{mcfg['name']}",
        "task": model.task,
        "method": model.method,
        "num_blocks": model.num_blocks,
        "num_classes": model.num_classes,
        "best_block": int(model.best_block),
        "exit_policy": model.exit_policy,
        "input_size": _input_size(mcfg),
        "weights_dtype": str(dtype or torch.float32).replace("torch.", ""),
        "torch_version": torch.__version__,
        # result files another run appended to in the same checkout do not change the code: not `+dirty`
        "commit": git_commit(full=True, ignore=RESULT_FILES),
    }
    for k in ("mean", "std", "interpolation", "crop_pct"):
        if k in mcfg:
            config[k] = mcfg[k]
    if model.growth is not None:
        config["growth"] = model.growth  # blocks added to (or frozen in) the architecture "model" describes
    if trainer_state is not None:
        config.update(step=int(trainer_state.get("step", 0)), epoch=int(trainer_state.get("epoch", 0)))
    config.update(metadata or {})

    with staged(dest) as tmp:
        weights = tmp / WEIGHTS_NAME
        save_file(tensors, str(weights), metadata={"format": "pt"})
        config["weights_bytes"] = weights.stat().st_size
        config["weights_sha256"] = sha256_file(weights)
        if trainer_state is not None:
            state = {k: v for k, v in trainer_state.items() if k != "model"}
            if "rng" in state and state["rng"]:
                state["rng"] = _rng_to_plain(state["rng"])
            torch.save(state, tmp / TRAINING_STATE_NAME)
        write_json(tmp / CONFIG_NAME, config)  # last: a folder without it is not a checkpoint
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes 0600; a checkpoint is meant to be shared
        tmp.chmod(0o755)
        fsync_dir(tmp)
    return dest


# -- load ------------------------------------------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed `config.json` of checkpoint folder `path` (CheckpointError if missing or corrupt)."""
    folder = Path(path)
    cfg_path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is not a checkpoint folder (no such directory)")
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder: {CONFIG_NAME} is missing (an unfinished save?)")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is truncated or corrupt: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or "name" not in config["model"]:
        raise CheckpointError(f"{cfg_path} is not a DeInfoReg Zoo config (no 'model' section with a 'name')")
    return config


def _read_weights(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}")
    size, expect = weights.stat().st_size, config.get("weights_bytes")
    if expect is not None and size != int(expect):
        raise CheckpointError(f"{weights} is truncated or corrupt: {size} bytes, the checkpoint recorded {expect}")
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error type for bad headers and short files
        raise CheckpointError(f"{weights} is truncated or corrupt: {e}") from None
    sha = config.get("weights_sha256")
    if sha is not None and sha256_file(weights) != sha:
        raise CheckpointError(f"{weights} is corrupt: its sha256 does not match the one in {CONFIG_NAME}")
    return tensors


def _describe(config: dict[str, Any]) -> str:
    m = config.get("model", config)
    arch = f"{m.get('arch')} with encoder {m['name']}" if m.get("task") == "seg" else m.get("name")
    return f"{arch} ({m.get('method')}, {m.get('num_blocks')} blocks, {m.get('num_classes')} classes)"


def _check_fits(model: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str, target: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)]  # fmt: skip
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"shape (checkpoint vs model) {shapes[:3]}")
        raise CheckpointError(f"checkpoint {what} does not fit {target}: {'; '.join(parts)}")


def _to_model_dtypes(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    own = model.state_dict()
    return {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def _resolve_folder(path_or_url: str | os.PathLike) -> Path:
    s = os.fspath(path_or_url)
    if is_hf_hub(s):
        return pull_hf_hub(s)[0]
    if is_url(s):
        return fetch_url_folder(s)
    p = Path(s).expanduser()
    if p.is_file() and p.name in (CONFIG_NAME, WEIGHTS_NAME, TRAINING_STATE_NAME):
        p = p.parent
    return p


def load_checkpoint(
    path_or_url: str | os.PathLike, map_location: str | torch.device = "cpu", num_classes: int | None = None
) -> DecoupledModel:
    """Rebuild the model of a checkpoint folder (or URL of one) and load its weights as float32, in eval mode.

    `num_classes`, if given, must match the checkpoint's. The parsed config is attached as `model.checkpoint_meta`.
    """
    folder = _resolve_folder(path_or_url)
    config = read_config(folder)
    n = config.get("num_classes", config["model"].get("num_classes"))
    if num_classes is not None and n is not None and int(num_classes) != int(n):
        raise CheckpointError(
            f"class-count mismatch: checkpoint {folder.name} has {n} classes, {num_classes} were asked for"
        )
    tensors = _read_weights(folder, config)
    try:
        model = build_from_config(config["model"])  # the checkpoint carries every weight; never download
        if config.get("growth"):
            regrow(model, config["growth"])
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"cannot rebuild {_describe(config)} from {folder}: {e}") from None
    _check_fits(model, tensors, str(folder), f"the architecture its config describes ({_describe(config)})")
    model.load_state_dict(_to_model_dtypes(model, tensors))
    policy = config.get("exit_policy")
    if policy:
        model.exit_policy = policy
    model.checkpoint_meta = config
    return model.to(map_location).eval()


def load_weights(model: DecoupledModel, path_or_url: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's weights into an existing `model`; architecture or class-count mismatch → CheckpointError.

    Returns the checkpoint's config.
    """
    folder = _resolve_folder(path_or_url)
    config = read_config(folder)
    theirs, ours = config["model"], model.config
    for key in ("name", "arch", "method", "num_blocks", "num_classes"):
        if key in theirs and key in ours and theirs[key] != ours[key]:
            raise CheckpointError(
                f"{key} mismatch: checkpoint {folder.name} is {_describe(config)}, the model is {_describe(ours)}"
            )
    tensors = _read_weights(folder, config)
    _check_fits(model, tensors, str(folder), f"the model ({_describe(ours)})")
    model.load_state_dict(_to_model_dtypes(model, tensors))
    return config


def load_training_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """`Trainer.state_dict()` without "model" saved beside checkpoint `path`, or None if it is not resumable."""
    f = Path(path) / TRAINING_STATE_NAME
    if not f.is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{f} is truncated or corrupt: {e}") from None
    if state.get("rng"):
        state["rng"] = _rng_from_plain(state["rng"])
    return state


def resume_trainer(trainer: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Restore `trainer` (a zoo.train.Trainer) from a resumable checkpoint: weights, optimizers, schedulers, RNG.

    Returns the checkpoint's config.
    """
    config = load_weights(trainer.model, path)
    state = load_training_state(path)
    if state is None:
        raise CheckpointError(f"{path} has no {TRAINING_STATE_NAME}: it was saved without trainer_state")
    state["model"] = trainer.model.state_dict()
    try:
        trainer.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    return config


def load_pretrained(
    name: str, num_classes: int | None = None, map_location: str | torch.device = "cpu"
) -> DecoupledModel:
    """`zoo.create_model("arch.tag", pretrained=True)`: pull, verify and load a published checkpoint."""
    full, entry = get_pretrained_entry(name)
    folder = pull(full)
    config = read_config(folder)
    want = entry.get("architecture")
    have = config.get("architecture", config["model"].get("name"))
    if want is not None and want != have:
        raise CheckpointError(f"architecture mismatch for {full}: the manifest says {want}, the checkpoint is {have}")
    try:
        return load_checkpoint(folder, map_location=map_location, num_classes=num_classes)
    except CheckpointError as e:
        raise CheckpointError(f"{full}: {e}") from None


def load_hf_hub(
    name: str, num_classes: int | None = None, map_location: str | torch.device = "cpu", pretrained: bool = True
) -> DecoupledModel:
    """`zoo.create_model("hf-hub:org/name[@revision]", pretrained=...)`: a checkpoint folder on the Hugging Face Hub.

    `pretrained=False` fetches config.json alone and builds the architecture it describes with fresh weights
    (timm's behaviour for hf-hub names). The weights' sha256 recorded in config.json is checked on load; the commit
    the files came from is kept in `model.checkpoint_meta["hf_hub"]`.
    """
    folder, pinned = pull_hf_hub(name, config_only=not pretrained)
    try:
        if not pretrained:
            config = read_config(folder)
            try:
                model = build_from_config(config["model"])
                if config.get("growth"):
                    regrow(model, config["growth"])
            except (ValueError, TypeError, KeyError, RuntimeError) as e:
                raise CheckpointError(f"cannot rebuild {_describe(config)}: {e}") from None
            n = model.num_classes
            if num_classes is not None and int(num_classes) != int(n):
                raise CheckpointError(f"class-count mismatch: the checkpoint has {n} classes, {num_classes} asked")
            model.checkpoint_meta = config
            model = model.to(map_location)
        else:
            model = load_checkpoint(folder, map_location=map_location, num_classes=num_classes)
    except CheckpointError as e:
        raise CheckpointError(f"{name}: {e}") from None
    model.checkpoint_meta = {**model.checkpoint_meta, "hf_hub": {"repo_id": pinned.repo_id, "commit": pinned.revision}}
    return model
