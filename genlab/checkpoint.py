"""Saving checkpoints safely, and loading genlab checkpoints written elsewhere (eval, sample)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from genlab.config import instantiate
from genlab.errors import CheckpointError
from genlab.models.base import GenerativeModel
from genlab.utils import atomic_file, is_disk_full


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


def with_trained_run(checkpoint: dict[str, Any], cfg: DictConfig) -> DictConfig:
    """This command's config completed from the run that wrote the checkpoint.

    ``model``, ``dataset`` and ``sampler`` are the run's own; a key given on this command line
    changes the saved value (``+dataset.root=/data``, ``+sampler.temperature=0.5``) and a whole
    option replaces it (``sampler=prior``). The run's whole config is kept under ``trained``
    (the eval metrics default to what the run measured: ``conf/callbacks/eval.yaml``).
    """
    trained = OmegaConf.create(checkpoint["genlab"]["config"])
    with open_dict(cfg):
        cfg.trained = trained
        for key in ("model", "dataset", "sampler"):
            mine = cfg.get(key)
            if mine is not None and "_target_" in mine:
                continue
            cfg[key] = OmegaConf.merge(trained.get(key) or {}, mine or {})
    return cfg


def load_model(checkpoint: dict[str, Any], model_cfg: DictConfig) -> GenerativeModel:
    """Rebuild the model from its config and load the checkpoint's weights (the EMA average
    when the run used one: Lightning stores it as the state_dict)."""
    model = instantiate(model_cfg, "model")
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it into place, so a crash or a full
    disk while saving leaves the previous checkpoint intact and loadable."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage (fsspec): Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            with atomic_file(path, "wb") as file:
                torch.save(checkpoint, file)
        except (OSError, RuntimeError) as err:
            if not is_disk_full(err):
                raise
            free_mb = shutil.disk_usage(path.parent).free / 2**20
            raise CheckpointError(
                f"out of disk space while saving the checkpoint {path} ({free_mb:.0f} MiB free on "
                f"{path.parent} once the partial file was removed); the previous checkpoint there is "
                "kept. Free some space (or point paths.log_dir at a larger disk) and re-run the same "
                "command to resume."
            ) from None
