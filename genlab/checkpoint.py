"""Loading genlab checkpoints written elsewhere (eval, sample)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from genlab.config import instantiate
from genlab.errors import CheckpointError
from genlab.models.base import GenerativeModel


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's tensors safely (``weights_only``) and check it is genlab's."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = " (it is a directory: point ckpt= at a .ckpt file in it)" if path.is_dir() else ""
        raise CheckpointError(f"ckpt={path}: no such checkpoint file{hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds on a file that is not a checkpoint
        raise CheckpointError(
            f"ckpt={path} cannot be read as a PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); is it a genlab .ckpt file?"
        ) from None
    if not isinstance(checkpoint, dict) or "genlab" not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"ckpt={path} is not a genlab checkpoint (no saved genlab config in it); use a .ckpt "
            "from a run directory's checkpoints/ folder written by genlab-train"
        )
    return checkpoint


def saved_config(checkpoint: dict[str, Any], cfg: DictConfig) -> DictConfig:
    """The run's saved config with this command's model/dataset additions merged on top."""
    saved = OmegaConf.create(checkpoint["genlab"]["config"])
    for key in ("model", "dataset"):
        if cfg.get(key):
            saved[key] = OmegaConf.merge(saved[key], cfg[key])
    return saved


def load_model(checkpoint: dict[str, Any], saved: DictConfig) -> GenerativeModel:
    """Rebuild the model from its saved config and load the checkpoint's weights (the EMA
    average when the run used one: Lightning stores it as the state_dict)."""
    model = instantiate(saved.model, "model")
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model
