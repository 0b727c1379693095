"""Likelihood-based out-of-distribution detection: ``genlab-eval ckpt=... ood=[noise,inverted,...]``.

The held-out split of the model's own data is the in-distribution set; each ``ood`` entry is
another set of the same shape. Every example gets three scores, each larger = more unusual:

* ``bpd``: its bits/dim, -log2 p(x) / D (the naive test: low likelihood = out of distribution);
* ``typicality``: |mean bits/dim of a batch of M examples - H|, where H, the model's entropy
  rate, is estimated as the mean bits/dim of a second held-out split (Nalisnick et al., 2019,
  "Detecting out-of-distribution inputs to deep generative models using typicality"); M =
  ``ood_batch`` (1 scores each example alone, as a point test);
* ``llr``: -log2 p(x) + log2 p_bg(x) in bits, the negative log likelihood ratio against a
  background model ``ood_background`` (Ren et al., 2019), where one is given.

For each OOD set and score: AUROC, AUPR (the OOD set is the positive class) and the false
positive rate on in-distribution data at 95% true positive rate, by scikit-learn's own metrics.
A conditional model is scored by its marginal p(x) = mean over classes of p(x | y).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor
from torch.utils.data import Dataset

from genlab.checks import is_int
from genlab.config import CONF_DIR, instantiate
from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel
from genlab.utils import seeded

log = logging.getLogger("genlab")

#: OOD sets made from the in-distribution data itself, not from a dataset option
SYNTHETIC = ("inverted", "noise")
SCORES = ("bpd", "typicality", "llr")


def ood_names(value: Any) -> list[str]:
    """``ood=noise``, ``ood=[noise,inverted]`` or ``ood='noise,inverted'`` as a list of names."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        names = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, ListConfig)):
        names = [str(v).strip() for v in value]
    else:
        names = []
    datasets = sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml"))
    known = [*SYNTHETIC, *datasets]
    bad = [n for n in names if n.split(":", 1)[0] not in known]
    if not names or bad:
        raise ConfigError(
            f"ood=[{','.join(names)}]: {', '.join(map(repr, bad)) or 'no name'} is not an OOD set; use a list of "
            f"{', '.join(SYNTHETIC)} or a dataset option ({', '.join(datasets)}; NAME:ROOT gives its "
            "root folder), e.g. ood=[noise,inverted,image_folder:/data/cifar10/test]"
        )
    return names


def check_settings(cfg: DictConfig) -> None:
    if not is_int(cfg.ood_max_examples) or cfg.ood_max_examples < 2:
        raise ConfigError(f"ood_max_examples={cfg.ood_max_examples!r} must be an integer >= 2 (examples per set)")
    if not is_int(cfg.ood_batch) or cfg.ood_batch < 1:
        raise ConfigError(f"ood_batch={cfg.ood_batch!r} must be an integer >= 1 (M of the typicality test)")


# ----------------------------------------------------------------------------- the statistics


def typicality(bpd: np.ndarray, entropy: float, m: int = 1) -> np.ndarray:
    """|mean of each consecutive batch of m scores - entropy| (a last partial batch is dropped)."""
    batches = len(bpd) // m
    return np.abs(bpd[: batches * m].reshape(batches, m).mean(1) - entropy)


def detection_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR (OOD = positive, larger score = more OOD) and the FPR at 95% TPR."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    scores = np.r_[in_scores, out_scores]
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "aupr": float(average_precision_score(labels, scores)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


# ----------------------------------------------------------------------------- the data


def _subset(x: Tensor, n: int, seed: int) -> Tensor:
    if len(x) <= n:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def _images(dataset: Dataset) -> Tensor:
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def ood_set(name: str, cfg: DictConfig, in_dist: Tensor, vocab_size: int = 256) -> Tensor:
    """The examples of one OOD entry, shaped like the in-distribution data (values 0..vocab_size-1)."""
    if name == "inverted":
        return (vocab_size - 1) - in_dist
    if name == "noise":
        generator = torch.Generator().manual_seed(cfg.seed)
        return torch.randint(0, vocab_size, in_dist.shape, generator=generator, dtype=in_dist.dtype)
    option, _, root = name.partition(":")
    # genlab's own dataset option, converted to the in-distribution data's settings where it has
    # them: the keys its data_shape is stated from (images: channels and size; audio: the length)
    node = OmegaConf.merge({"paths": cfg.paths, "seed": cfg.seed},
                           {"dataset": OmegaConf.load(CONF_DIR / "dataset" / f"{option}.yaml")})
    shape_keys = re.findall(r"\$\{dataset\.(\w+)\}", str(OmegaConf.to_container(node.dataset).get("data_shape")))
    like_model = {key: cfg.dataset[key] for key in (*shape_keys, "vocab_size")
                  if key in cfg.dataset and key in node.dataset}
    like_model["num_classes"] = 0
    if root:
        like_model["root"] = root
    dataset_cfg = OmegaConf.merge(node.dataset, like_model)
    if OmegaConf.is_missing(dataset_cfg, "root"):
        raise ConfigError(f"ood={name}: the {option} dataset needs its folder: write it as {option}:ROOT, "
                          f"e.g. ood=[{option}:/data/cifar10/test]")
    resolved = OmegaConf.to_container(OmegaConf.merge(node, {"dataset": dataset_cfg}), resolve=True)["dataset"]
    datamodule = instantiate(OmegaConf.create(resolved), f"ood ({name})")
    datamodule.check()
    data = torch.cat([_images(datamodule.split_dataset(split)) for split in ("train", "val", "test")])
    if data.shape[1:] != in_dist.shape[1:]:
        raise ConfigError(f"ood={name}: its data has the shape {list(data.shape[1:])}, the model's "
                          f"{list(in_dist.shape[1:])}; use a set of the model's modality")
    return _subset(data, cfg.ood_max_examples, cfg.seed)


# ----------------------------------------------------------------------------- the scores


@torch.no_grad()
def bits_per_dim(model: GenerativeModel, x: Tensor, chunk: int = 100) -> np.ndarray:
    """-log2 p(x) / D per example; a conditional model's marginal over its classes."""
    out = []
    for start in range(0, len(x), chunk):
        xb = x[start:start + chunk].to(model.device)
        nll = model.marginal_nll_bits(xb) if model.conditional else model.nll_bits(xb)
        out.append(nll.double().cpu() / xb[0].numel())
    return torch.cat(out).numpy()


def save_histograms(scores: dict[str, dict[str, np.ndarray]], folder: Path) -> list[Path]:
    """One PNG per score: the distribution of each set's scores, in-distribution first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for score, by_set in scores.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        values = np.concatenate(list(by_set.values()))
        bins = np.linspace(np.percentile(values, 0.5), np.percentile(values, 99.5), 60)
        for label, v in by_set.items():
            ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, alpha=0.5, density=True, label=label)
        ax.set_xlabel({"bpd": "bits/dim", "typicality": "|bits/dim - H| (typicality)",
                       "llr": "-log2 p(x) + log2 p_background(x), bits"}[score])
        ax.set_ylabel("density")
        ax.legend()
        fig.tight_layout()
        path = folder / f"ood_{score}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def detect(cfg: DictConfig, model: GenerativeModel, datamodule: Any, background: Optional[GenerativeModel],
           output_dir: Path) -> dict[str, float]:
    """Score the held-out split and every OOD set; the metrics (flat keys ``ood/<set>/<score>_<metric>``)."""
    names = ood_names(cfg.ood)
    if model.likelihood is None:
        raise ConfigError(f"ood=[{','.join(names)}]: the {model.family} family has no likelihood to score data with; "
                          "likelihood-based OOD detection needs a model with one (every family but GANs)")
    n = cfg.ood_max_examples
    reference = "train" if cfg.split == "val" else "val"  # estimates H, apart from the scored split
    in_dist = _subset(_images(datamodule.split_dataset(cfg.split)), n, cfg.seed)
    sets = {name: ood_set(name, cfg, in_dist, model.vocab_size) for name in names}
    metrics: dict[str, float] = {}
    scores: dict[str, dict[str, np.ndarray]] = {"bpd": {}, "typicality": {}}
    with seeded(cfg.seed):
        entropy = float(bits_per_dim(model, _subset(_images(datamodule.split_dataset(reference)), n, cfg.seed)).mean())
        bpd = {cfg.split: bits_per_dim(model, in_dist), **{k: bits_per_dim(model, v) for k, v in sets.items()}}
        if background is not None:
            scores["llr"] = {}
            background_bpd = {cfg.split: bits_per_dim(background, in_dist),
                              **{k: bits_per_dim(background, v) for k, v in sets.items()}}
    metrics[f"ood/entropy_bpd_{reference}"] = entropy
    for label, values in bpd.items():
        dims = in_dist[0].numel()
        scores["bpd"][label] = values
        scores["typicality"][label] = typicality(values, entropy, cfg.ood_batch)
        if background is not None:
            scores["llr"][label] = (values - background_bpd[label]) * dims  # bits
        metrics[f"ood/{_key(label)}/bpd"] = float(values.mean())
    for name in names:
        for score, by_set in scores.items():
            for metric, value in detection_metrics(by_set[cfg.split], by_set[name]).items():
                metrics[f"ood/{_key(name)}/{score}_{metric}"] = value
    save_histograms({score: {("in: " if k == cfg.split else "") + _key(k): v for k, v in by_set.items()}
                     for score, by_set in scores.items()}, output_dir)
    for name in names:
        log.info("OOD %s vs %s: AUROC bits/dim %.3f, typicality %.3f%s", name, cfg.split,
                 metrics[f"ood/{_key(name)}/bpd_auroc"], metrics[f"ood/{_key(name)}/typicality_auroc"],
                 f", likelihood ratio {metrics[f'ood/{_key(name)}/llr_auroc']:.3f}" if background is not None else "")
    return metrics


def _key(name: str) -> str:
    """A set's name in a metric key: ``image_folder:/data/cifar/test`` -> ``image_folder_test``."""
    option, _, root = name.partition(":")
    return f"{option}_{Path(root).name}" if root else option
