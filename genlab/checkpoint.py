"""Saving checkpoints safely, and loading genlab checkpoints written elsewhere (eval, sample)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from genlab.config import CONF_DIR, instantiate
from genlab.errors import CheckpointError
from genlab.models.base import GenerativeModel
from genlab.trust import check_targets
from genlab.utils import atomic_file, flatten, is_disk_full


def read_checkpoint(path: str | Path, key: str = "ckpt") -> dict[str, Any]:
    """Load a checkpoint's tensors safely (``weights_only``) and check it is genlab's, and that
    the config stored in it builds nothing but allow-listed classes (``genlab.trust``): a
    checkpoint is data and never chooses code to run. ``key`` is the option that named the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = f" (it is a directory: point {key}= at a .ckpt file in it)" if path.is_dir() else ""
        raise CheckpointError(f"{key}={path}: no such checkpoint file{hint}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds on a file that is not a checkpoint
        raise CheckpointError(
            f"{key}={path} cannot be read as a PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); is it a genlab .ckpt file?"
        ) from None
    stored = checkpoint.get("genlab") if isinstance(checkpoint, dict) else None
    if (not isinstance(stored, dict) or not isinstance(stored.get("config", {}), dict)
            or not isinstance(checkpoint.get("state_dict"), dict)):
        raise CheckpointError(
            f"{key}={path} is not a genlab checkpoint (no saved genlab config in it); use a .ckpt "
            "from a run directory's checkpoints/ folder written by genlab-train"
        )
    _check_saved_config(stored.get("config", {}), f"{key}={path}", path)
    return checkpoint


def _check_saved_config(config: dict[str, Any], named: str, path: Path) -> None:
    """The config a checkpoint carries: mappings where eval and sample merge it, and ``_target_``s
    (its interpolations resolved among themselves, as they will be once merged) on the allow-list."""
    sections = [k for k in ("model", "dataset", "sampler") if config.get(k) is not None and not isinstance(config[k], dict)]
    if sections:
        raise CheckpointError(f"{named}: the config saved in it has no mapping for {', '.join(sections)}; "
                              "is it a genlab checkpoint?")
    try:
        saved = OmegaConf.create(config)
    except Exception as err:  # noqa: BLE001 - keys or values OmegaConf cannot hold
        raise CheckpointError(f"{named}: the config saved in it cannot be read ({err})") from None
    check_targets(saved, f"the config saved in the checkpoint {path}")


def with_trained_run(checkpoint: dict[str, Any], cfg: DictConfig) -> DictConfig:
    """This command's config completed from the run that wrote the checkpoint.

    ``model``, ``dataset`` and ``sampler`` are the run's own; a key given on this command line
    changes the saved value (``+dataset.root=/data``, ``+sampler.temperature=0.5``) and a whole
    option replaces it (``sampler=prior``). The run's whole config is kept under ``trained``
    (the eval metrics default to what the run measured: ``conf/callbacks/eval.yaml``).
    """
    trained = OmegaConf.create(checkpoint["genlab"].get("config", {}))
    model = trained.get("model")
    if model is not None and "image_shape" in model and "data_shape" not in model:
        with open_dict(model):  # written before issue 12, when models took image_shape
            model.data_shape = model.pop("image_shape")
    with open_dict(cfg):
        cfg.trained = trained
        for key in ("model", "dataset", "sampler"):
            mine = cfg.get(key)
            if mine is not None and "_target_" in mine:
                continue
            cfg[key] = OmegaConf.merge(trained.get(key) or {}, mine or {})
    return cfg


def load_model(checkpoint: dict[str, Any], model_cfg: DictConfig, source: str = "the checkpoint") -> GenerativeModel:
    """Rebuild the model from its config and load the checkpoint's weights (the EMA average
    when the run used one: Lightning stores it as the state_dict). Weights of another model or
    size are refused naming both (``source`` names the checkpoint: ``ckpt=PATH``)."""
    model = instantiate(model_cfg, "model")
    StoredModel.of(checkpoint, source).check_fits(model, model_cfg)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    return model


@dataclass
class StoredModel:
    """What a checkpoint says about its model: enough to tell, before any weights are loaded,
    whether they fit the model a command builds."""

    source: str  # how the command named the checkpoint: ckpt=PATH or ckpt_path=PATH
    config: dict[str, Any]  # the model config of the run that wrote it
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, checkpoint: dict[str, Any], source: str) -> "StoredModel":
        shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if isinstance(v, torch.Tensor)}
        return cls(source, dict(checkpoint["genlab"].get("config", {}).get("model") or {}), shapes)

    def check_target(self, model_cfg: DictConfig) -> None:
        """A checkpoint of another model class is refused before anything is built."""
        mine, theirs = model_cfg.get("_target_"), self.config.get("_target_")
        if mine == theirs:
            return
        options = [p.stem for p in sorted((CONF_DIR / "model").glob("*.yaml")) if OmegaConf.load(p).get("_target_") == theirs]
        if self.source.startswith("ckpt="):
            fix = "leave model= out: the checkpoint's own model is used"
        else:
            fix = f"train the checkpoint's model ({' / '.join(f'model={o}' for o in options) or theirs}) with the run's settings"
        raise CheckpointError(
            f"{self.source} holds a {theirs} model but this command builds a {mine} (model._target_): its "
            f"weights cannot be loaded. Use a checkpoint of a {mine}, or {fix}."
        )

    def check_fits(self, model: torch.nn.Module, model_cfg: DictConfig) -> None:
        """Every weight of the checkpoint fits ``model`` (same names, same shapes), else an error
        naming both models, the first weights that differ and the config keys that differ."""
        self.check_target(model_cfg)
        mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        wrong = sorted(k for k in mine.keys() & self.shapes.keys() if mine[k] != self.shapes[k])
        lost = sorted(mine.keys() ^ self.shapes.keys())
        if not wrong and not lost:
            return
        shown = [f"{k}: {list(self.shapes[k])} in the checkpoint, {list(mine[k])} here" for k in wrong[:2]]
        shown += [f"{k}: only {'here' if k in mine else 'in the checkpoint'}" for k in lost[: max(0, 2 - len(shown))]]
        more = len(wrong) + len(lost) - len(shown)
        current = OmegaConf.to_container(model_cfg, resolve=True)
        old, new = flatten(self.config, "model"), flatten(current, "model")
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        differ = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} here" for k in changed[:6])
        raise CheckpointError(
            f"{self.source} holds a {self.config.get('_target_')} whose weights do not fit the "
            f"{model_cfg.get('_target_')} this command builds ({'; '.join(shown)}{f'; {more} more' if more else ''}). "
            + (f"The model configs differ in {differ}. Drop those overrides to use the checkpoint's model as "
               "trained, or use a checkpoint of the model you configured." if changed else
               "Use a checkpoint written by this version of genlab for this model.")
        )


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
