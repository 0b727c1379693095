"""genlab-eval ckpt=PATH: FID and bits/dim of a checkpoint, written to metrics.json; with
``ood=[...]``, likelihood-based out-of-distribution detection instead (``genlab.ood``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from genlab.callbacks.run import RunRecorder
from genlab.checkpoint import load_model, read_checkpoint, saved_config, with_trained_run
from genlab.cli import run_cli
from genlab.config import build_sampler, check_config, instantiate
from genlab.entry import build_callbacks, build_trainer, entry_point, finish_loggers, hydra_main
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.utils import atomic_write_text

log = logging.getLogger("genlab")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r}: use split=val or split=test")
    output_dir = Path(cfg.paths.output_dir)
    checkpoint = read_checkpoint(cfg.ckpt)
    cfg = with_trained_run(checkpoint, cfg)
    check_config(cfg, ("dataset", "model", "sampler", "callbacks"))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    model = load_model(checkpoint, cfg.model, f"ckpt={cfg.ckpt}")
    model.sampler = build_sampler(cfg.sampler, model)
    if cfg.get("ood"):
        return detect_ood(cfg, model, datamodule, output_dir)
    trainer, recorder = build_trainer(cfg, build_callbacks(cfg, datamodule), output_dir)

    run = trainer.test if cfg.split == "test" else trainer.validate
    run(model, datamodule=datamodule)
    recorder.finish("completed")
    finish_loggers(trainer)
    log.info("metrics of %s: %s (in %s)", cfg.ckpt, recorder.final, output_dir / "metrics.json")
    return recorder.final


def detect_ood(cfg: DictConfig, model: GenerativeModel, datamodule: Any, output_dir: Path) -> dict[str, float]:
    """genlab-eval ckpt=... ood=[...]: OOD scores and their detection metrics into metrics.json,
    histograms as ood_<score>.png."""
    from genlab.ood import check_settings, detect, ood_names

    ood_names(cfg.ood)  # refused before any work
    check_settings(cfg)
    background = None
    if cfg.get("ood_background"):
        stored = read_checkpoint(cfg.ood_background, key="ood_background")
        background = load_model(stored, saved_config(stored).get("model") or OmegaConf.create({}),
                                f"ood_background={cfg.ood_background}").to(model.device)
        if background.likelihood is None or background.data_shape != model.data_shape:
            raise ConfigError(
                f"ood_background={cfg.ood_background}: a background model needs a likelihood and the data shape "
                f"of ckpt= ({list(model.data_shape)}); it is a {background.family} model of "
                f"{list(background.data_shape)}")
    container = OmegaConf.to_container(cfg, resolve=True)
    recorder = RunRecorder(output_dir, container)
    atomic_write_text(output_dir / "config_resolved.yaml", OmegaConf.to_yaml(container))
    recorder.final.update(detect(cfg, model, datamodule, background, output_dir))
    recorder.finish("completed")
    log.info("OOD metrics of %s in %s (histograms: ood_*.png)", cfg.ckpt, output_dir / "metrics.json")
    return recorder.final


@hydra_main("eval")
def command(cfg: DictConfig) -> dict[str, float]:
    return entry_point(evaluate, ("sampler", "logger", "trainer"))(cfg)


def main() -> dict[str, float]:
    """The genlab-eval command."""
    return run_cli(command)


if __name__ == "__main__":
    main()
