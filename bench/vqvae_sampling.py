"""Sampling time per image at 28x28: VQ-VAE + Transformer prior (49 codes drawn one by one with a
key/value cache, then one decoder pass) against PixelCNN (784 sub-pixels, each a pass over the
window that can reach it) at the sizes of the shipped MNIST experiments, side by side in one
process on one thread. The PixelCNN is untrained: its sampling cost does not depend on its weights.
    python bench/vqvae_sampling.py PRIOR_CKPT [N]
"""

from __future__ import annotations

import sys
import time

import torch

from genlab.checkpoint import load_model, read_checkpoint
from genlab.models.autoregressive import PixelCNN
from genlab.samplers.autoregressive import AutoregressiveSampler
from genlab.samplers.codes import CodeSampler


def per_image(sample, n: int) -> float:
    start = time.perf_counter()
    images = sample(n)
    assert images.shape[0] == n
    return (time.perf_counter() - start) / n


def main() -> None:
    torch.set_num_threads(1)
    path, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 16
    from omegaconf import OmegaConf

    checkpoint = read_checkpoint(path)
    prior = load_model(checkpoint, OmegaConf.create(checkpoint["genlab"]["config"]["model"]), f"ckpt={path}")
    pixelcnn = PixelCNN([1, 28, 28], channels=64, blocks=5, head_channels=256).eval()  # conf/model/pixelcnn.yaml
    torch.manual_seed(0)
    rounds = []
    for _ in range(2):  # interleaved, so both see the same machine load
        rounds.append((per_image(lambda k: CodeSampler().sample(prior, k), n),
                       per_image(lambda k: AutoregressiveSampler().sample(pixelcnn, k), n)))
    vq = min(r[0] for r in rounds)
    pc = min(r[1] for r in rounds)
    print(f"per image, batch of {n}, best of 2 interleaved rounds: VQ-VAE + prior {vq * 1000:.1f} ms, "
          f"PixelCNN {pc * 1000:.1f} ms, ratio {pc / vq:.1f}x")


if __name__ == "__main__":
    main()
