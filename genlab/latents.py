"""Latent directions and manifolds of the families with an encoder (``GenerativeModel.has_encoder``).

* ``genlab-sample ckpt=... direction=A:B``: the direction z_B - z_A between the mean latents of
  the labelled examples of class A and of class B (Glow's attribute manipulation, Kingma &
  Dhariwal 2018, sec. 5), and a grid that moves examples of class A along it: row i decodes
  z_i + alpha (z_B - z_A) for alpha from 0 to ``direction_scale``.
* ``genlab-sample ckpt=... manifold=N``: for a 2-D latent, an N x N grid decoded from evenly
  spaced quantiles of the N(0, I) prior (Kingma & Welling, 2014, fig. 4).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genlab.errors import ConfigError
from genlab.models.base import GenerativeModel

log = logging.getLogger("genlab")


def require_encoder(model: GenerativeModel, option: str) -> None:
    if not model.has_encoder:
        raise ConfigError(f"{option}: the checkpoint's {model.family} model has no encoder to map data to latents; "
                          "latent directions and manifolds need a VAE, a CVAE or a flow")


def parse_direction(value: Any, num_classes: int) -> tuple[int, int]:
    """``direction=3:8`` -> (3, 8), checked against the model's classes."""
    parts = str(value).split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"direction={value!r}: give two class labels, from and to, as direction=A:B (e.g. direction=3:8)")
    a, b = (int(p) for p in parts)
    if num_classes <= 0 or max(a, b) >= num_classes or a == b:
        known = f"0..{num_classes - 1}" if num_classes > 0 else "none: the dataset is unlabelled"
        raise ConfigError(f"direction={value}: needs two different class labels of the dataset (its labels: {known})")
    return a, b


@torch.no_grad()
def latent_direction(model: GenerativeModel, x: Tensor, y: Tensor, a: int, b: int, chunk: int = 256) -> Tensor:
    """mean latent of the examples labelled b - mean latent of those labelled a: [latent_dim]."""
    means = []
    for label in (a, b):
        xs, ys = x[y == label], y[y == label]
        if len(xs) == 0:
            raise ConfigError(f"direction: no example labelled {label} in the data")
        z = torch.cat([model.encode_mean(xs[i:i + chunk].to(model.device), ys[i:i + chunk].to(model.device))
                       for i in range(0, len(xs), chunk)])
        means.append(z.double().mean(0))
    return (means[1] - means[0]).to(torch.float32)


@torch.no_grad()
def move_along(model: GenerativeModel, x: Tensor, y: Tensor, direction: Tensor, alphas: Tensor) -> Tensor:
    """One row per example: decode(z + alpha * direction) for each alpha; uint8, row-major."""
    x, y = x.to(model.device), y.to(model.device)
    z = model.encode_mean(x, y)
    steps = len(alphas)
    moved = z[:, None, :] + alphas.to(z)[None, :, None] * direction.to(z)[None, None, :]
    return model.decode_latent(moved.reshape(len(x) * steps, -1), y.repeat_interleave(steps)).cpu()


def write_direction(cfg: Any, model: GenerativeModel, data: Any, modality: Any, output_dir: Path) -> Path:
    """direction.png (rows: examples of class A moved toward B; the data's modality writes it) and direction.npz."""
    require_encoder(model, f"direction={cfg.direction}")
    a, b = parse_direction(cfg.direction, model.num_classes)
    x = torch.stack([data[i][0] for i in range(len(data))])
    y = torch.as_tensor([data[i][1] for i in range(len(data))])
    direction = latent_direction(model, x, y, a, b)
    generator = torch.Generator().manual_seed(cfg.seed)
    of_a = torch.nonzero(y == a).flatten()
    rows = of_a[torch.randperm(len(of_a), generator=generator)[: cfg.direction_rows]]
    alphas = torch.linspace(0, float(cfg.direction_scale), cfg.interpolate_steps)
    images = move_along(model, x[rows], y[rows], direction, alphas)
    output_dir.mkdir(parents=True, exist_ok=True)
    modality.save(images, output_dir / "direction", nrow=len(alphas))
    np.savez_compressed(output_dir / "direction.npz", images=images.numpy(), direction=direction.cpu().numpy(),
                        alphas=alphas.numpy(), indices=rows.numpy(), labels=np.array([a, b]))
    log.info("wrote %d examples of class %d moved along z_%d - z_%d (|d| = %.3g) to %s (direction.png, direction.npz)",
             len(rows), a, b, a, float(direction.norm()), output_dir)
    return output_dir


def write_manifold(cfg: Any, model: GenerativeModel, modality: Any, output_dir: Path) -> Path:
    """manifold.png: an N x N grid over a 2-D latent (prior quantiles), and manifold.npz."""
    require_encoder(model, f"manifold={cfg.manifold}")
    if model.latent_dim != 2:
        raise ConfigError(f"manifold={cfg.manifold}: a latent manifold grid needs a 2-D latent; this model's has "
                          f"{model.latent_dim} dimensions (train a VAE with model.latent_dim=2)")
    n = cfg.manifold
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.5 / n, 1 - 0.5 / n, n))
    # rows go down the second latent, columns along the first (as an image of the plane)
    z = torch.stack(torch.meshgrid(quantiles, quantiles.flip(0), indexing="xy"), dim=-1).reshape(n * n, 2)
    labels = torch.zeros(n * n, dtype=torch.long) if model.conditional else None
    with torch.no_grad():
        images = model.decode_latent(z.to(model.device), None if labels is None else labels.to(model.device)).cpu()
    output_dir.mkdir(parents=True, exist_ok=True)
    modality.save(images, output_dir / "manifold", nrow=n)
    np.savez_compressed(output_dir / "manifold.npz", images=images.numpy(), latents=z.numpy())
    log.info("wrote the %dx%d latent manifold to %s (manifold.png, manifold.npz)", n, n, output_dir)
    return output_dir
