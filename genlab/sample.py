"""genlab-sample ckpt=PATH n=64: a PNG grid and an .npz of samples from a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from genlab.checkpoint import load_model, read_checkpoint, with_trained_run
from genlab.checks import is_int
from genlab.cli import run_cli
from genlab.config import build_sampler, check_config, compatible_samplers, instantiate
from genlab.entry import entry_point, hydra_main
from genlab.errors import ConfigError
from genlab.latents import write_direction, write_manifold
from genlab.models.base import GenerativeModel
from genlab.samplers.base import Sampler
from genlab.utils import seeded

log = logging.getLogger("genlab")

#: genlab-sample's grid= options (GAN family)
GRIDS = ("truncation", "style_mixing")


def check_arguments(cfg: DictConfig) -> None:
    """genlab-sample's own arguments, before the checkpoint is read."""
    if not is_int(cfg.n) or cfg.n < 1:
        raise ConfigError(f"n={cfg.n!r}: the number of samples must be a positive integer")
    if cfg.nrow is not None and (not is_int(cfg.nrow) or cfg.nrow < 1):
        raise ConfigError(f"nrow={cfg.nrow!r}: the images per grid row must be a positive integer "
                          "(or null: a square grid)")
    if cfg.get("grid") is not None and cfg.grid not in GRIDS:
        raise ConfigError(f"grid={cfg.grid!r} is not known: use one of {list(GRIDS)} (or null for samples)")
    if cfg.get("grid") and (not is_int(cfg.grid_rows) or cfg.grid_rows < 1):
        raise ConfigError(f"grid_rows={cfg.grid_rows!r} must be a positive integer")
    if cfg.get("interpolate") and (not is_int(cfg.interpolate_steps) or cfg.interpolate_steps < 2):
        raise ConfigError(f"interpolate_steps={cfg.interpolate_steps!r} must be an integer >= 2 (the two end points)")
    if cfg.get("direction") is not None and (not is_int(cfg.direction_rows) or cfg.direction_rows < 1):
        raise ConfigError(f"direction_rows={cfg.direction_rows!r} must be an integer >= 1 (examples moved)")
    if cfg.get("direction") is not None and (not is_int(cfg.interpolate_steps) or cfg.interpolate_steps < 2):
        raise ConfigError(f"interpolate_steps={cfg.interpolate_steps!r} must be an integer >= 2 (the steps along the direction)")
    if cfg.get("direction") is not None and (isinstance(cfg.direction_scale, bool)
                                             or not isinstance(cfg.direction_scale, (int, float))):
        raise ConfigError(f"direction_scale={cfg.direction_scale!r} must be a number (1 = all the way to the other class)")
    if not is_int(cfg.get("manifold", 0)) or cfg.get("manifold", 0) < 0 or cfg.get("manifold") == 1:
        raise ConfigError(f"manifold={cfg.manifold!r} must be an integer >= 2 (the grid's side), or 0 for none")
    if cfg.classes is None:
        return
    classes = OmegaConf.to_container(cfg.classes) if OmegaConf.is_list(cfg.classes) else cfg.classes
    if not isinstance(classes, list) or not classes or not all(is_int(c) and c >= 0 for c in classes):
        raise ConfigError(
            f"classes={classes!r} must be a non-empty list of class indices (integers >= 0), e.g. classes=[3,7], "
            "or null for every class in turn"
        )


def _check_classes(classes: list[int], model: GenerativeModel) -> None:
    """The classes of genlab-sample against the checkpoint's model."""
    if not model.conditional:
        raise ConfigError("classes= was given but the checkpoint's model is not conditional: leave classes= out")
    bad = [c for c in classes if c >= model.num_classes]
    if bad:
        raise ConfigError(
            f"classes={classes}: {bad} out of range, the model knows {model.num_classes} classes "
            f"(0..{model.num_classes - 1})"
        )


def sample(cfg: DictConfig) -> Path:
    check_arguments(cfg)
    output_dir = Path(cfg.paths.output_dir)
    checkpoint = read_checkpoint(cfg.ckpt)
    cfg = with_trained_run(checkpoint, cfg)
    check_config(cfg, ("model", "sampler", "dataset"))
    datamodule = instantiate(cfg.dataset, "dataset")
    modality = datamodule.modality  # how this data is written
    model = load_model(checkpoint, cfg.model, f"ckpt={cfg.ckpt}")
    if cfg.trainer.accelerator in ("gpu", "auto") and torch.cuda.is_available():
        model = model.cuda()
    sampler = build_sampler(cfg.sampler, model)
    if cfg.get("manifold"):
        return write_manifold(cfg, model, modality, output_dir)
    if cfg.get("direction") is not None:
        datamodule.check()
        return write_direction(cfg, model, datamodule.split_dataset(cfg.interpolate_split), modality, output_dir)
    if cfg.get("interpolate"):
        return interpolate(cfg, model, sampler, output_dir)
    if cfg.get("grid"):
        return grid(cfg, model, sampler, output_dir)
    if cfg.classes is not None:
        _check_classes(list(cfg.classes), model)
        sampler.classes = list(cfg.classes)
    labels = sampler.labels_for(model, cfg.n)
    with seeded(cfg.seed):  # labels: those asked, or those the samples are meant to be of (Sampler.labelled)
        images, labels = sampler.sample_series(model, 0, cfg.n, labels)
        images = images.cpu()

    output_dir.mkdir(parents=True, exist_ok=True)
    written = modality.save(images, output_dir / "samples", nrow=cfg.nrow)
    arrays = {"images": images.numpy()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez_compressed(output_dir / "samples.npz", **arrays)
    names = ", ".join(p.name for p in written[:3]) + (", ..." if len(written) > 3 else "")
    log.info("wrote %d samples to %s (%s, samples.npz)", cfg.n, output_dir, names)
    return output_dir


def grid(cfg: DictConfig, model: GenerativeModel, sampler: Sampler, output_dir: Path) -> Path:
    """A grid the sampler draws (``Sampler.grids``: e.g. truncation or style mixing for GANs)."""
    if cfg.grid not in sampler.grids:
        raise ConfigError(f"grid={cfg.grid}: {type(sampler).__name__}, the sampler of this {model.family} model, "
                          f"draws {'the grids ' + ', '.join(sampler.grids) if sampler.grids else 'no grids'}; "
                          f"set grid= to one of those, or null for samples")
    with seeded(cfg.seed):
        images, nrow = sampler.grid(model, cfg.grid, cfg.grid_rows, cfg)
    images = images.cpu()
    output_dir.mkdir(parents=True, exist_ok=True)
    instantiate(cfg.dataset, "dataset").modality.save(images, output_dir / cfg.grid, nrow=nrow)
    np.savez_compressed(output_dir / f"{cfg.grid}.npz", images=images.numpy())
    log.info("wrote a %s grid to %s (%s.png, %s.npz)", cfg.grid, output_dir, cfg.grid, cfg.grid)
    return output_dir


def interpolate(cfg: DictConfig, model: torch.nn.Module, sampler: object, output_dir: Path) -> Path:
    """A grid of latent interpolations between pairs of dataset images (samplers that can encode)."""
    pairs, steps = cfg.interpolate, cfg.interpolate_steps
    if not isinstance(pairs, int) or pairs < 1:
        raise ConfigError(f"interpolate={pairs!r}: the number of image pairs must be a positive integer")
    if not hasattr(sampler, "interpolate"):
        fits = ", ".join(f"model family flow (sampler={n})" for n in compatible_samplers("flow")) or "none"
        raise ConfigError(
            f"interpolate={pairs}: the sampler {type(sampler).__name__} of this {model.family} model cannot "
            f"map images to latents; latent interpolation needs: {fits}"
        )
    check_config(cfg, ("dataset",))
    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    data = datamodule.split_dataset(cfg.interpolate_split)
    if len(data) < 2 * pairs:
        raise ConfigError(f"interpolate={pairs} needs {2 * pairs} images; the {cfg.interpolate_split} split has {len(data)}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed))[: 2 * pairs]
    x = torch.stack([data[int(i)][0] for i in order]).to(model.device)
    images = sampler.interpolate(model, x[0::2], x[1::2], steps).cpu()
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule.modality.save(images, output_dir / "interpolation", nrow=steps)
    np.savez_compressed(output_dir / "interpolation.npz", images=images.numpy(), indices=order.numpy())
    log.info("wrote %d interpolations of %d steps to %s (interpolation.png, interpolation.npz)", pairs, steps,
             output_dir)
    return output_dir


@hydra_main("sample")
def command(cfg: DictConfig) -> None:
    entry_point(sample, ("trainer",))(cfg)


def main() -> None:
    """The genlab-sample command."""
    run_cli(command)


if __name__ == "__main__":
    main()
