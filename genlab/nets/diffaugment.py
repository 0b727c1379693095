"""Differentiable augmentation for GANs (DiffAugment, Zhao et al., 2020).

The discriminator sees real and generated images through the same random, differentiable
transformations, in its own training step and in the generator's, so that it cannot memorise a
small training set while the generator still learns the un-augmented distribution (the
gradients flow back through the transformations). Images are in [-1, 1], [B, C, H, W].
A policy is a list of ``color``, ``translation``, ``cutout`` (or one comma-separated string).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def _rand(x: Tensor, *shape: int) -> Tensor:
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype)


def color(x: Tensor) -> Tensor:
    """Random brightness (a shift in [-0.5, 0.5), DiffAugment's own, which works on images in
    [-1, 1] as genlab's GANs do), saturation (x0..x2) and contrast (x0.5..x1.5), per image."""
    x = x + (_rand(x, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, 1, 1, 1) * 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, 1, 1, 1) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift each image by up to ``ratio`` of its size in x and y, filling with zeros."""
    b, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-sw, sw + 1, (b, 1, 1), device=x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    gy = (gy.unsqueeze(0) + dy).clamp(-1, h)  # -1 and h index the zero padding
    gx = (gx.unsqueeze(0) + dx).clamp(-1, w)
    padded = F.pad(x, [1, 1, 1, 1])
    index = ((gy + 1) * (w + 2) + (gx + 1)).view(b, 1, h * w).expand(-1, x.shape[1], -1)
    return padded.flatten(2).gather(2, index).view_as(x)


def cutout(x: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero one square of ``ratio`` times the image size at a random place in each image."""
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device) - ch // 2
    ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device) - cw // 2
    gy = torch.arange(h, device=x.device).view(1, h, 1)
    gx = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (gy >= oy) & (gy < oy + ch) & (gx >= ox) & (gx < ox + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


AUGMENTATIONS: dict[str, Callable[[Tensor], Tensor]] = {"color": color, "translation": translation, "cutout": cutout}


def parse_policy(policy: Optional[Union[str, Sequence[str]]]) -> list[str]:
    """The augmentations of a policy (a list, or a comma-separated string; None or empty = none);
    ValueError names unknown ones."""
    parts = (policy or "").split(",") if isinstance(policy, str) or policy is None else list(policy)
    names = [str(p).strip() for p in parts if str(p).strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; use a comma-separated list of {list(AUGMENTATIONS)}")
    return names


def diff_augment(x: Tensor, policy: list[str]) -> Tensor:
    for name in policy:
        x = AUGMENTATIONS[name](x)
    return x
