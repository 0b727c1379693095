"""Before/after figures for the GAN fixes of issue 13, from finished dcgan_digits runs.

    python bench/gan_truncation.py RUN_DIR [RUN_DIR ...] > bench/results/gan_digits_fixes.json

(and bench/results/gan_digits_truncation_<run directory name>.png: rows psi = 1 ... 0, ten samples
each, first toward the mean latent, then toward the mean w).

For each run directory (its checkpoints/last.ckpt, as written by the code that trained it):
- the steps Lightning counted (global_step) and the EMA's updates (generator steps);
- D(x) on the 180 val digits with the discriminator in the checkpoint's ``state_dict`` (what
  validation used: the averaged one when the EMA covered D) and with the trained one
  (``current_model_state``);
- a truncation sweep of the EMA generator, psi = 1 ... 0, 500 samples each, two ways: toward
  the mean latent, G(psi z) (genlab's sampler before the fix), and toward the mean first feature
  map, synthesis(mean_w + psi (w(z) - mean_w)) (after). Scored by two classifiers: genlab's FID
  classifier for digits (a CNN; it calls a blank image a '2' with p = 0.58) and a logistic
  regression trained here on the digits train split (it calls a blank image a '4' with
  p = 0.59): mean top probability, and the mean pixel of the samples (real digits: 78 of 255).

Only the generator's and discriminator's modules are used, so the script reads checkpoints
written before the fix as well as after.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from torchvision.utils import save_image

from genlab.checkpoint import read_checkpoint
from genlab.config import instantiate
from genlab.data import DigitsDataModule
from genlab.metrics.fid import classifier_path, ensure_classifier
from genlab.nets.classifier import ClassifierNet
from genlab.nets.likelihoods import to_uint8, to_unit_range

RESULTS = Path(__file__).resolve().parent / "results"
PSIS = (1.0, 0.7, 0.5, 0.3, 0.1, 0.0)


def classifiers(datamodule: DigitsDataModule) -> dict:
    train = datamodule.split_dataset("train")
    x = torch.stack([train[i][0] for i in range(len(train))]).flatten(1).float().numpy() / 255
    logistic = LogisticRegression(max_iter=2000).fit(x, [train[i][1] for i in range(len(train))])
    cache = os.environ.get("GENLAB_CACHE_DIR", Path.home() / ".cache" / "genlab")  # as conf/paths
    ensure_classifier(datamodule, cache)
    saved = torch.load(classifier_path(datamodule, cache), weights_only=True)
    cnn = ClassifierNet(**saved["arch"])
    cnn.load_state_dict(saved["state_dict"])
    cnn.eval()
    return {
        "fid_classifier": lambda images: cnn(images)[1].softmax(1).numpy(),
        "logistic": lambda images: logistic.predict_proba(images.flatten(1).float().numpy() / 255),
    }


def measure(run: Path, datamodule: DigitsDataModule, scorers: dict) -> dict:
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    model = instantiate(OmegaConf.create(checkpoint["genlab"]["config"]["model"]), "model")
    result = {"run": str(run), "loss": model.loss, "global_step": checkpoint["global_step"],
              "ema_updates": int(checkpoint["averaging_state"]["n_averaged"])}
    val = torch.stack([datamodule.split_dataset("val")[i][0] for i in range(len(datamodule.split_dataset("val")))])
    for name in ("state_dict", "current_model_state"):
        model.load_state_dict(checkpoint[name])
        model.eval()
        with torch.no_grad():
            result[f"val_d_real[{name}]"] = model.discriminator(to_unit_range(val)).mean().item()
    model.load_state_dict(checkpoint["state_dict"])  # the EMA generator
    model.eval()
    g = model.generator
    grid = []
    with torch.no_grad():
        mean_w = g.project(torch.randn(4096, model.latent_dim, generator=torch.Generator().manual_seed(0))).mean(0)
        for way in ("mean_latent", "mean_w"):
            for psi in PSIS:
                z = torch.randn(500, model.latent_dim, generator=torch.Generator().manual_seed(1))
                if way == "mean_latent":
                    images = to_uint8(g(psi * z))
                else:
                    images = to_uint8(g.to_image(g.upsample(mean_w + psi * (g.project(z) - mean_w))))
                grid.append(images[:10])
                row = {"mean_pixel": round(images.float().mean().item(), 1)}
                for scorer, score in scorers.items():
                    p = score(images)
                    row[f"{scorer}_p"] = round(float(p.max(1).mean()), 3)
                    row[f"{scorer}_classes"] = np.bincount(p.argmax(1), minlength=10).tolist()
                result[f"{way} psi={psi}"] = row
    big = torch.nn.functional.interpolate(torch.cat(grid).float() / 255, scale_factor=4, mode="nearest")
    save_image(big, RESULTS / f"gan_digits_truncation_{run.name}.png", nrow=10, pad_value=0.5)
    return result


def main() -> None:
    torch.manual_seed(0)
    datamodule = DigitsDataModule()
    datamodule.setup("fit")
    scorers = classifiers(datamodule)
    print(json.dumps([measure(Path(run), datamodule, scorers) for run in sys.argv[1:]], indent=1))


if __name__ == "__main__":
    main()
