"""VQ-VAE (van den Oord et al., 2017): ``model=vqvae``, and its learned prior, ``model=vqvae_prior``.

Stage 1, ``VQVAE``: an encoder maps the image to a grid of vectors, each replaced by its nearest
code of an EMA-learned codebook (``genlab.nets.vq``); the decoder gives a distribution over the
discrete 8-bit pixels. The gradient passes the quantiser straight through to the encoder; a
commitment loss beta ||z_e - sg(e)||^2 keeps the encoder near its codes. With the uniform prior
over codes that stage 1 implies, -log2 p(x) <= -log2 p(x | z(x)) + n log2 K (n codes per image,
K codes): a bound, and a loose one.

Stage 2, ``VQVAEPrior``: genlab's causal Transformer (``ARTransformer``, reused as it is, with
the codebook as its vocabulary) learns p(z) over the code maps of a frozen, trained VQ-VAE named
by ``model.vqvae_ckpt``. bits/dim is the bound -log2 p(z(x)) - log2 p(x | z(x)) with the
encoder's deterministic code z(x) (the same bound with the learned prior in place of the uniform
one). Samples: codes drawn from the prior, decoded.

Both serve ``sampler=codes`` through ``sample_codes`` and ``decode_codes``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch
import torch.nn as nn
from omegaconf import OmegaConf
from torch import Tensor

from genlab.checks import require_fraction, require_positive
from genlab.errors import CheckpointError, ConfigError
from genlab.models.autoregressive import ARTransformer
from genlab.models.base import LOG2, GenerativeModel
from genlab.nets.hvae import ResidualCell
from genlab.nets.likelihoods import PIXEL_LIKELIHOODS, to_unit_range
from genlab.nets.vq import EMAQuantizer
from genlab.utils import file_sha256


class VQVAE(GenerativeModel):
    family = "vqvae"
    likelihood = "bound"
    step_metrics = ("loss", "recon_bpd", "commitment", "perplexity", "bound_bpd")
    #: the EMA callback copies the codebook, which is an EMA already, instead of averaging it
    self_averaging: ClassVar[tuple[str, ...]] = ("quantizer",)

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        conditional: bool = False,
        channels: int = 64,
        latent_dim: int = 16,
        codebook_size: int = 64,
        downsamples: int = 1,
        res_blocks: int = 2,
        beta: float = 0.25,
        decay: float = 0.99,
        likelihood: str = "logistic",
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        if conditional:
            raise ConfigError("model.conditional=true: model=vqvae is unconditional; set model.conditional=false")
        super().__init__(data_shape, num_classes, optimizer, scheduler, conditional, vocab_size)
        require_positive("model", channels=channels, latent_dim=latent_dim, codebook_size=codebook_size,
                         downsamples=downsamples, res_blocks=res_blocks)
        require_fraction("model", decay=decay)
        if beta < 0:
            raise ConfigError(f"model.beta={beta} must be >= 0 (the weight of the commitment loss)")
        if likelihood not in PIXEL_LIKELIHOODS:
            raise ConfigError(f"model.likelihood={likelihood!r} is not known; use one of {sorted(PIXEL_LIKELIHOODS)}")
        self.beta = float(beta)
        self.codebook_size = int(codebook_size)
        self.pixel_dist = PIXEL_LIKELIHOODS[likelihood]
        c, h, w = self.data_shape
        for _ in range(downsamples):
            h, w = (h + 1) // 2, (w + 1) // 2
        #: the shape of one code map
        self.code_shape = (h, w)
        down = [nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(downsamples)]
        up = [nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1) for _ in range(downsamples)]
        self.encoder = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1), *[m for d in down for m in (nn.SiLU(), d)],
            *[ResidualCell(channels) for _ in range(res_blocks)], nn.SiLU(), nn.Conv2d(channels, latent_dim, 1))
        self.quantizer = EMAQuantizer(codebook_size, latent_dim, decay)
        self.decoder = nn.Sequential(
            nn.Conv2d(latent_dim, channels, 3, padding=1), *[ResidualCell(channels) for _ in range(res_blocks)],
            *[m for u in up for m in (nn.SiLU(), u)], nn.SiLU(),
            nn.Conv2d(channels, c * self.pixel_dist.params_per_channel, 3, padding=1))

    # ----- the primitives ---------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """The encoder's continuous output z_e [B, D, h, w]."""
        return self.encoder(to_unit_range(x).to(self.quantizer.codebook.dtype))

    def encode_codes(self, x: Tensor) -> Tensor:
        """The deterministic code map z(x) [B, h, w] (the nearest code of each z_e vector)."""
        z = self.encode(x)
        return self.quantizer.nearest(z.movedim(1, -1).reshape(-1, z.shape[1]).float()).view(z.shape[0], *z.shape[2:])

    def decode_latents(self, z_q: Tensor) -> Any:
        out = self.decoder(z_q)[:, :, : self.data_shape[1], : self.data_shape[2]]
        return self.pixel_dist(out, self.data_shape[0])

    def decode_codes(self, codes: Tensor) -> Any:
        """p(x | z) for code maps [B, h, w]."""
        return self.decode_latents(self.quantizer.lookup(codes.long()))

    def sample_codes(self, n: int, temperature: float = 1.0) -> Tensor:
        """Codes from stage 1's own prior: uniform over the codebook (what its bound assumes)."""
        return torch.randint(0, self.codebook_size, (n, *self.code_shape), device=self.quantizer.codebook.device)

    def codes_bits(self) -> float:
        """-log2 of the uniform prior's probability of one code map."""
        return math.prod(self.code_shape) * math.log2(self.codebook_size)

    # ----- training ---------------------------------------------------------------------
    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, _ = batch
        z_q, _, commitment, perplexity = self.quantizer(self.encode(x))
        recon = -self.decode_latents(z_q).log_prob(x).flatten(1).sum(1)
        to_bpd = 1.0 / (self.num_dims * LOG2)
        commitment = commitment / z_q[0].numel()  # mean squared distance per latent component
        loss = (recon * to_bpd + self.beta * commitment).mean()
        if stage == "train":
            self.check_finite(loss=loss, recon=recon, commitment=commitment)
        self.log_stage(stage, {"loss": loss, "recon_bpd": recon.mean() * to_bpd, "commitment": commitment.mean(),
                               "perplexity": perplexity,
                               "bound_bpd": recon.mean() * to_bpd + self.codes_bits() / self.num_dims}, x.shape[0])
        return loss

    @torch.no_grad()
    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Upper bound -log2 p(x | z(x)) + n log2 K: the uniform prior over code maps."""
        recon = -self.decode_codes(self.encode_codes(x)).log_prob(x).flatten(1).sum(1) / LOG2
        return recon + self.codes_bits()


class VQVAEPrior(GenerativeModel):
    family = "vqvae"
    likelihood = "bound"
    step_metrics = ("loss",)
    averaged_module = "prior"  # the VQ-VAE is frozen

    def __init__(
        self,
        data_shape: Sequence[int],
        vqvae_ckpt: Optional[str] = None,
        dataset: str = "",
        num_classes: int = 0,
        conditional: bool = False,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        vocab_size: int = 256,
    ) -> None:
        if conditional:
            raise ConfigError("model.conditional=true: model=vqvae_prior is unconditional; set model.conditional=false")
        super().__init__(data_shape, num_classes, optimizer, scheduler, conditional, vocab_size)
        self.vqvae, self.stage1 = self._load_stage1(vqvae_ckpt, dataset)
        self.vqvae.requires_grad_(False)
        h, w = self.vqvae.code_shape
        self.prior = ARTransformer([1, h, w], dim=dim, depth=depth, heads=heads,
                                   vocab_size=self.vqvae.codebook_size)

    def _load_stage1(self, vqvae_ckpt: Optional[str], dataset: str) -> tuple[VQVAE, dict[str, Any]]:
        """The frozen stage-1 VQ-VAE, read through genlab's safe checkpoint reader and checked
        against this run's data; and the record of the run it came from."""
        from genlab.checkpoint import load_model, read_checkpoint

        key = "model.vqvae_ckpt"
        if not vqvae_ckpt:
            raise ConfigError(f"{key} is not set: name the checkpoint of a trained VQ-VAE "
                              "(model.vqvae_ckpt=RUN_DIR/checkpoints/last.ckpt of a model=vqvae run)")
        path = Path(vqvae_ckpt).expanduser().resolve()
        checkpoint = read_checkpoint(path, key)
        config = checkpoint["genlab"].get("config", {})
        model_cfg, data_cfg = config.get("model") or {}, config.get("dataset") or {}
        theirs = model_cfg.get("_target_")
        wanted = f"{VQVAE.__module__}.{VQVAE.__name__}"
        if theirs != wanted:
            raise CheckpointError(
                f"{key}={path} holds a {theirs} model, not a VQ-VAE ({wanted}): the prior is trained on the "
                "codes of a model=vqvae run; name the checkpoint of one")
        their_data, their_shape = data_cfg.get("name"), [int(s) for s in model_cfg.get("data_shape", [])]
        if their_data != dataset or their_shape != list(self.data_shape):
            raise CheckpointError(
                f"{key}={path} is a VQ-VAE trained on dataset={their_data} (images {their_shape}), but this "
                f"run's data is dataset={dataset} (images {list(self.data_shape)}): train the prior on the "
                f"stage-1 data (dataset={their_data}) or name a VQ-VAE trained on dataset={dataset}")
        vqvae = load_model(checkpoint, OmegaConf.create(model_cfg), f"{key}={path}")
        record = {
            "ckpt": str(path),
            "run_dir": str(path.parent.parent) if path.parent.name == "checkpoints" else str(path.parent),
            "sha256": file_sha256(path),
            "dataset": their_data,
            "metrics": checkpoint["genlab"].get("metrics", {}).get("final", {}),
        }
        return vqvae, record

    def stands_on(self) -> dict[str, Any]:
        return {"stage1": self.stage1}

    def train(self, mode: bool = True) -> "VQVAEPrior":
        super().train(mode)
        self.vqvae.eval()  # frozen: its codebook never moves
        return self

    # ----- the primitives ---------------------------------------------------------------
    def sample_codes(self, n: int, temperature: float = 1.0) -> Tensor:
        from genlab.samplers.autoregressive import AutoregressiveSampler

        return AutoregressiveSampler(temperature).sample(self.prior, n)[:, 0].long()

    def decode_codes(self, codes: Tensor) -> Any:
        return self.vqvae.decode_codes(codes)

    def codes_of(self, x: Tensor) -> Tensor:
        """The deterministic code maps of x as the prior's data [B, 1, h, w]."""
        with torch.no_grad():
            return self.vqvae.encode_codes(x)[:, None].to(self.prior.value_dtype)

    # ----- training ---------------------------------------------------------------------
    def shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, _ = batch
        loss = self.prior.nll_bits(self.codes_of(x)).mean() / self.num_dims  # -log2 p(z) per image dim
        if stage == "train":
            self.check_finite(loss=loss)
        self.log_stage(stage, {"loss": loss}, x.shape[0])
        return loss

    @torch.no_grad()
    def nll_bits(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Upper bound -log2 p(z(x)) - log2 p(x | z(x)), z(x) the encoder's deterministic code."""
        codes = self.codes_of(x)
        recon = -self.vqvae.decode_codes(codes[:, 0]).log_prob(x).flatten(1).sum(1) / LOG2
        return self.prior.nll_bits(codes) + recon
