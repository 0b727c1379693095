"""VQ-VAE: the EMA codebook update against a hand computation, dead-code restarts, the
straight-through gradient, perplexity logged, the EMA-of-weights callback leaving the codebook
alone; the prior: stage 1 refused when it is another model or dataset, causality over the code
map, samples decoded to the data shape; both stages through genlab-train and genlab-sample."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from genlab.callbacks.ema import EMA
from genlab.models.vqvae import VQVAE
from genlab.nets.vq import EMAQuantizer


def test_the_ema_codebook_update_equals_a_hand_computation():
    q = EMAQuantizer(codes=2, dim=1, decay=0.5, eps=0.0, restart_threshold=0.0)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0], [10.0]]))
        q.embed_sum.copy_(q.codebook)
        q.cluster_size.fill_(1.0)
    q.initialised.fill_(True)
    z = torch.tensor([1.0, 2.0, 9.0]).view(3, 1, 1, 1).movedim(0, 2).reshape(1, 1, 3, 1)  # [1, D, 3, 1]
    _, codes, commitment, _ = q.train()(z)
    assert codes.flatten().tolist() == [0, 0, 1]
    # counts: 0.5 * 1 + 0.5 * [2, 1] = [1.5, 1.0]; sums: 0.5 * [0, 10] + 0.5 * [3, 9] = [1.5, 9.5]
    # smoothing with eps = 0 leaves the counts: codes [1.5 / 1.5, 9.5 / 1.0]
    assert q.cluster_size.tolist() == [1.5, 1.0]
    assert q.embed_sum.flatten().tolist() == [1.5, 9.5]
    assert q.codebook.flatten().tolist() == [1.0, 9.5]
    # the commitment is measured against the codes before the update: 1 + 4 + 1
    assert commitment.tolist() == [6.0]


def test_laplace_smoothing_and_a_dead_code_is_restarted_onto_an_encoder_output():
    q = EMAQuantizer(codes=3, dim=2, decay=0.9, eps=0.1, restart_threshold=0.5)
    q.initialised.fill_(True)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]]))
        q.embed_sum.copy_(q.codebook)
        q.cluster_size.copy_(torch.tensor([1.0, 1.0, 0.5]))
    z = torch.tensor([[0.1, 0.0], [4.9, 5.0]]).t().reshape(1, 2, 2, 1)
    q.train()(z)
    n = torch.tensor([0.9 + 0.1, 0.9 + 0.1, 0.45])  # code 2 unused: 0.45 < 0.5, restarted
    smoothed = (n + 0.1) / (n.sum() + 0.3) * n.sum()
    expected = (torch.tensor([[0.9 * 0 + 0.1 * 0.1, 0.0], [0.9 * 5 + 0.1 * 4.9, 0.9 * 5 + 0.1 * 5]])
                / smoothed[:2, None])
    torch.testing.assert_close(q.codebook[:2], expected)
    assert q.cluster_size[2] == 1.0
    assert any(torch.equal(q.codebook[2], row) for row in z.movedim(1, -1).reshape(-1, 2))


def tiny(**kw) -> VQVAE:
    torch.manual_seed(0)
    return VQVAE((1, 8, 8), channels=8, latent_dim=4, codebook_size=8, res_blocks=1, **kw)


def digits_batch(n: int = 32) -> torch.Tensor:
    from genlab.data.digits import DigitsDataModule

    data = DigitsDataModule().split_dataset("train")
    return torch.stack([data[i][0] for i in range(n)])


def test_the_straight_through_gradient_reaches_the_encoder():
    model = tiny().train()
    loss = model.shared_step((digits_batch(8), torch.zeros(8)), "val")  # no trainer: logging is a no-op
    loss.backward()
    first_encoder_conv = model.encoder[0].weight.grad
    assert first_encoder_conv is not None and first_encoder_conv.abs().sum() > 0
    # the reconstruction term alone reaches it too (through the quantiser, not the commitment)
    model.zero_grad()
    z_q, *_ = model.quantizer(model.encode(digits_batch(8)))
    (-model.decode_latents(z_q).log_prob(digits_batch(8)).sum()).backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.quantizer.parameters())  # the codebook is not optimised


class Recorder(pl.Callback):
    """After the EMA's update of each step: the metrics, and which states the average shares."""

    def __init__(self, ema: EMA) -> None:
        self.ema, self.same_weights, self.same_codebook = ema, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.metrics = dict(trainer.callback_metrics)
        average = self.ema._average_model.module
        self.same_weights.append(torch.equal(average.encoder[0].weight, pl_module.encoder[0].weight))
        self.same_codebook.append(all(torch.equal(getattr(average.quantizer, name), getattr(pl_module.quantizer, name))
                                      for name in ("codebook", "cluster_size", "embed_sum")))


def test_perplexity_is_logged_and_the_ema_callback_does_not_average_the_codebook_again(tmp_path):
    model, ema = tiny(), EMA(decay=0.9)
    recorder = Recorder(ema)
    x = digits_batch(64)
    trainer = pl.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[ema, recorder], default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(TensorDataset(x, torch.zeros(64)), batch_size=16))
    perplexity = float(recorder.metrics["train/perplexity"])
    assert 1.0 <= perplexity <= 8.0
    # the weights are averaged; the codebook, an EMA of its own, is the current one at every step
    assert not any(recorder.same_weights[1:]) and len(recorder.same_weights) == 6
    assert all(recorder.same_codebook)


# ----- the prior (stage 2) ------------------------------------------------------------------------
def _stage1_checkpoint(path, overrides, state_dict=None):
    """A checkpoint as genlab-train writes it (the state and the run's resolved config)."""
    from omegaconf import OmegaConf

    from conftest import compose_cfg
    from genlab.config import instantiate

    cfg = compose_cfg(overrides=overrides, output_dir=path.parent)
    if state_dict is None:
        torch.manual_seed(0)
        state_dict = instantiate(cfg.model, "model").state_dict()
    torch.save({"state_dict": state_dict, "genlab": {"config": OmegaConf.to_container(cfg, resolve=True)}}, path)
    return path


VQ_TINY = ["model.channels=8", "model.latent_dim=4", "model.codebook_size=8", "model.res_blocks=1"]


def test_the_prior_refuses_a_stage1_of_another_model_or_dataset_naming_both(tmp_path):
    from genlab.errors import CheckpointError
    from genlab.models.vqvae import VQVAEPrior

    vae = _stage1_checkpoint(tmp_path / "vae.ckpt", ["model=vae", "model.channels=[8]", "model.latent_dim=2"])
    with pytest.raises(CheckpointError, match=r"model.vqvae_ckpt=.*vae.ckpt holds a genlab.models.vae.VAE model, "
                                              r"not a VQ-VAE \(genlab.models.vqvae.VQVAE\)"):
        VQVAEPrior([1, 8, 8], vqvae_ckpt=str(vae), dataset="digits")
    mnist = _stage1_checkpoint(tmp_path / "mnist.ckpt", ["model=vqvae", "dataset=mnist", *VQ_TINY])
    with pytest.raises(CheckpointError, match=r"trained on dataset=mnist \(images \[1, 28, 28\]\), but this run's "
                                              r"data is dataset=digits \(images \[1, 8, 8\]\)"):
        VQVAEPrior([1, 8, 8], vqvae_ckpt=str(mnist), dataset="digits")


def test_the_prior_is_causal_over_the_code_map_and_its_samples_decode_to_the_data_shape(tmp_path):
    from genlab.models.vqvae import VQVAEPrior
    from genlab.samplers.codes import CodeSampler

    ckpt = _stage1_checkpoint(tmp_path / "vq.ckpt", ["model=vqvae", "dataset=digits", *VQ_TINY])
    torch.manual_seed(0)
    model = VQVAEPrior([1, 8, 8], vqvae_ckpt=str(ckpt), dataset="digits", dim=16, depth=2, heads=2).eval()
    assert model.prior.vocab_size == 8 and model.stage1["dataset"] == "digits"
    codes = torch.randint(0, 8, (1, 1, 4, 4), dtype=torch.uint8)
    embedded = model.prior.embed(codes).detach().requires_grad_(True)
    logits = model.prior.logits_from_embedded(embedded).view(1, 8, 16)
    for i in range(16):
        (grad,) = torch.autograd.grad(logits[0, :, i].sum(), embedded, retain_graph=True)
        reach = grad[0, 0].abs().sum(-1).flatten()  # per code position
        assert (reach[i:] == 0).all() and (i == 0 or reach[i - 1] > 0)
    samples = CodeSampler(temperature=1.0).sample(model, 3)
    assert samples.shape == (3, 1, 8, 8) and samples.dtype == torch.uint8
    bits = model.nll_bits(digits_batch(4))
    assert bits.shape == (4,) and torch.isfinite(bits).all()


def _genlab_train(args: list[str]) -> None:
    """``genlab-train ARGS`` in this process (Hydra writes the run's .hydra/ as on the command line)."""
    import sys

    from genlab.train import main

    argv, sys.argv = sys.argv, ["genlab-train", *args]
    try:
        main()
    finally:
        sys.argv = argv


@pytest.mark.slow
def test_both_stages_train_on_digits_are_scored_and_sample_and_the_prior_records_its_stage1(tmp_path):
    import csv
    import json
    import shutil

    import numpy as np

    from conftest import compose_cfg
    from genlab.report import main as report_main
    from genlab.sample import sample

    fast = ["trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1", "callbacks.bpd.max_examples=64",
            "callbacks.samples.n=4", "callbacks.fid.num_samples=64", "callbacks.fid.chunk_size=64", "logger=none"]
    stage1 = tmp_path / "vq"
    _genlab_train(["experiment=vqvae_digits", *VQ_TINY, *fast, f"hydra.run.dir={stage1}"])
    first = json.loads((stage1 / "metrics.json").read_text())["final"]
    assert first["test/bpd"] < 8.0 and 1.0 <= first["test/perplexity"] <= 8.0
    ckpt = stage1 / "checkpoints" / "last.ckpt"
    stage2 = tmp_path / "prior"
    _genlab_train(["experiment=vqvae_prior_digits", f"model.vqvae_ckpt={ckpt}", "model.dim=16", "model.depth=1",
                   "model.heads=2", *fast, f"hydra.run.dir={stage2}"])
    metrics = json.loads((stage2 / "metrics.json").read_text())
    recorded = metrics["stands_on"]["stage1"]
    assert recorded["run_dir"] == str(stage1.resolve())
    assert recorded["ckpt"] == str(ckpt.resolve())
    # the learned prior's bound is below stage 1's uniform-prior bound (the same decoder term)
    assert metrics["final"]["test/bpd"] < first["test/bpd"]
    assert np.isfinite(metrics["final"]["test/fid_classifier"])
    sample(compose_cfg("sample", overrides=[f"ckpt={stage2 / 'checkpoints' / 'last.ckpt'}", "n=4"],
                       output_dir=tmp_path / "s"))
    images = np.load(tmp_path / "s" / "samples.npz")["images"]
    assert images.shape == (4, 1, 8, 8) and images.dtype == np.uint8

    # genlab-report traces the prior to the stage-1 run it stands on, and says when that
    # checkpoint is no longer the one it was trained on
    def stands_on() -> dict[str, str]:
        assert report_main([str(stage1), str(stage2), "--out", str(tmp_path / "report")]) == 0
        with (tmp_path / "report" / "report.csv").open() as f:
            return {row["job"]: row["stands on"] for row in csv.DictReader(f)}

    traced = f"stage1: job vq, last.ckpt sha256 {recorded['sha256'][:12]}"
    assert stands_on() == {"vq": "", "prior": traced}
    assert traced in (tmp_path / "report" / "report.md").read_text()
    assert traced in (tmp_path / "report" / "dashboard" / "index.html").read_text()
    shutil.copy(stage2 / "checkpoints" / "last.ckpt", ckpt)  # another file where stage 1's was
    assert stands_on()["prior"] == f"{traced} (the file there has changed since: not the one this run stands on)"
