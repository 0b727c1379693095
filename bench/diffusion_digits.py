"""Measure a trained ``experiment=ddpm_digits`` run: does the UNet use t and the class, and what
do its samples look like to genlab's digits FID classifier (bench/diffusion.md, issue 13).

Reads the run's metrics.json (bits/dim and classifier FID as genlab-train's callbacks computed
them: test on the best checkpoint, val at the last validation) and loads the best checkpoint
(EMA weights, as genlab-sample does):
- t-sensitivity: ||eps(x, t=10) - eps(x, t=900)|| / ||eps(x, t=10)|| on the same inputs x
  (x_500 of the 180 test images); class-sensitivity the same with class 3 against class 7;
- DDIM-50 samples (seeded), classified by the FID classifier (``callbacks.fid.extractor=classifier``,
  trained by genlab on the digits train split): for a conditional model the share of samples drawn
  for class k classified as k, per guidance scale, and whether classes 3 and 7 give the same
  images from the same noise; for any model the classifier's mean confidence;
- a 10x10 grid per guidance scale (conditional: row k was drawn for class k).

Runs against whichever genlab is first on the path, so one script measures both code versions:
    PYTHONPATH=. python bench/diffusion_digits.py --run RUN_DIR --name after_uncond
    (cd ../unet-before && PYTHONPATH=. python ../unet/bench/diffusion_digits.py --run DIR --name before_uncond)
Writes bench/results/diffusion_digits_NAME.json and diffusion_digits_NAME[_wG].png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision.utils import save_image

from genlab.checkpoint import load_model, read_checkpoint
from genlab.config import instantiate
from genlab.metrics.fid import ensure_classifier
from genlab.nets.classifier import ClassifierNet
from genlab.nets.likelihoods import to_unit_range
from genlab.samplers.ddim import DDIMSampler
from genlab.utils import seeded

RESULTS = Path(__file__).resolve().parent / "results"


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="genlab-train output directory")
    parser.add_argument("--name", required=True, help="label for the result files")
    parser.add_argument("--n", type=int, default=500, help="samples per guidance scale (a multiple of 10)")
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 2.0])
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "genlab"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    metrics = json.loads((args.run / "metrics.json").read_text())
    best = sorted((args.run / "checkpoints").glob("best-*.ckpt"))[-1]
    checkpoint = read_checkpoint(best)
    cfg = OmegaConf.create(checkpoint["genlab"]["config"])
    model = load_model(checkpoint, cfg.model)
    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.setup("test")
    result: dict = {
        "run": str(args.run), "checkpoint": best.name,
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "status": metrics["status"],  # a run stopped early has its last validation's numbers only
        "metrics": {k: v for k, v in metrics["final"].items() if k.startswith(("val/", "test/"))},
        "conditional": bool(model.conditional),
    }

    # the network's dependence on t and on the class, on the same inputs
    test = datamodule.split_dataset("test")
    x0 = torch.stack([test[i][0] for i in range(len(test))])
    with seeded(0), torch.no_grad():
        xt = model.q_sample(to_unit_range(x0), torch.full((len(x0),), 500), torch.randn(len(x0), *model.data_shape))
        y3 = torch.full((len(x0),), 3) if model.conditional else None
        at10 = model.net(xt, torch.full((len(x0),), 10), y3)
        result["t_sensitivity_10_vs_900"] = relative_change(at10, model.net(xt, torch.full((len(x0),), 900), y3))
        if model.conditional:
            at500 = model.net(xt, torch.full((len(x0),), 500), y3)
            result["class_sensitivity_3_vs_7"] = relative_change(at500, model.net(xt, torch.full((len(x0),), 500), torch.full((len(x0),), 7)))

    classifier_ckpt = torch.load(ensure_classifier(datamodule, args.cache_dir), map_location="cpu", weights_only=True)
    classifier = ClassifierNet(**classifier_ckpt["arch"]).eval()
    classifier.load_state_dict(classifier_ckpt["state_dict"])
    result["classifier_val_accuracy"] = classifier_ckpt["val_accuracy"]

    labels = torch.arange(args.n) % 10
    order = torch.argsort(labels[:100], stable=True)  # the grid: row k = the samples drawn for class k
    for w in args.guidance if model.conditional else [0.0]:
        sampler = DDIMSampler(steps=50, guidance_scale=w)
        with seeded(1):
            images = sampler.sample(model, args.n, labels=labels if model.conditional else None)
        with torch.no_grad():
            probs = classifier(images)[1].softmax(1)
        entry = {
            "confidence": float(probs.max(1).values.mean()),
            "predicted_class_histogram": torch.bincount(probs.argmax(1), minlength=10).tolist(),
        }
        if model.conditional:
            hits = probs.argmax(1) == labels
            entry["class_accuracy"] = float(hits.float().mean())
            entry["per_class_accuracy"] = [round(float(hits[labels == k].float().mean()), 3) for k in range(10)]
            noise = torch.randn(20, *model.data_shape, generator=torch.Generator().manual_seed(2))
            threes = sampler.sample(model, 20, labels=torch.full((20,), 3), noise=noise)
            sevens = sampler.sample(model, 20, labels=torch.full((20,), 7), noise=noise)
            entry["class_3_and_7_identical"] = bool(torch.equal(threes, sevens))
        result[f"guidance_{w:g}"] = entry
        suffix = f"_w{w:g}" if model.conditional else ""
        grid = images[:100][order] if model.conditional else images[:100]
        save_image(grid.float() / 255, RESULTS / f"diffusion_digits_{args.name}{suffix}.png", nrow=10, padding=1)

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"diffusion_digits_{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
