"""What averaging the discriminator too cost when the shared EMA callback averaged the whole GAN
(before issue 13; it now averages the generator only, the model's ``averaged_module``).

    OMP_NUM_THREADS=1 python bench/gan_ema_cost.py

Times, side by side in one process on the CIFAR-10-sized DCGAN (default widths), one EMA update
of the whole GAN (what genlab.callbacks.ema.EMA did), one of the generator alone (what it does), and one
training batch (a D step and a G step on 64 images), each the median of several repeats.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from genlab.models.gan import GAN


def median_seconds(fn, repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = GAN((3, 32, 32), latent_dim=128)
    g_opt = torch.optim.Adam(model.generator.parameters(), 2e-4, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(model.discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(64, 3, 32, 32) * 2 - 1

    def train_batch() -> None:
        fake = model.generator(model.prior_latents(64))
        d_loss = model.d_loss_fn(model.discriminator(real), model.discriminator(fake.detach()))
        d_opt.zero_grad()
        d_loss.backward()
        d_opt.step()
        g_loss = model.g_loss_fn(model.discriminator(model.generator(model.prior_latents(64))))
        g_opt.zero_grad()
        g_loss.backward()
        g_opt.step()

    whole = AveragedModel(model, avg_fn=get_ema_avg_fn(0.999), use_buffers=True)
    generator = AveragedModel(model.generator, avg_fn=get_ema_avg_fn(0.999), use_buffers=True)
    t_step = median_seconds(train_batch, repeats=5)
    t_whole = median_seconds(lambda: whole.update_parameters(model), repeats=21)
    t_gen = median_seconds(lambda: generator.update_parameters(model.generator), repeats=21)
    n_g = sum(p.numel() for p in model.generator.parameters())
    n_d = sum(p.numel() for p in model.discriminator.parameters())
    print(f"parameters: generator {n_g:,}, discriminator {n_d:,}")
    print(f"training batch (64 images, D + G step): {t_step * 1e3:.1f} ms")
    print(f"EMA update, whole GAN: {t_whole * 1e3:.2f} ms ({100 * t_whole / t_step:.2f}% of a batch)")
    print(f"EMA update, generator only: {t_gen * 1e3:.2f} ms ({100 * t_gen / t_step:.2f}% of a batch)")


if __name__ == "__main__":
    main()
