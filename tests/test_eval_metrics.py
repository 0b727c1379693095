"""Standard errors and the marginal bits/dim of conditional models (the bits/dim callback)."""

import math

import pytest
import torch

from genlab.callbacks.bpd import BitsPerDim
from genlab.models.base import GenerativeModel


class NoisyBits(GenerativeModel):
    """-log2 p(x) estimated as mu + sigma * N(0, 1) per example: a Monte Carlo estimate whose
    variance is known. A conditional one costs ``1 + label`` bits on one dimension."""

    family = "toy"
    likelihood = "bound"

    def __init__(self, sigma: float = 0.0, num_classes: int = 0, conditional: bool = False) -> None:
        super().__init__((1, 1, 1), num_classes, conditional=conditional)
        self.sigma = sigma

    def nll_bits(self, x, y=None):
        base = x.flatten(1).double().sum(1) / 100
        if y is not None:
            base = base + 1 + y.double()
        return base + self.sigma * torch.randn(x.shape[0], dtype=torch.float64)


def dataset(n: int, labels=None):
    x = torch.full((n, 1, 1, 1), 50, dtype=torch.uint8)
    return [(x[i], int(labels[i]) if labels is not None else -1) for i in range(n)]


def test_the_stderr_matches_the_known_spread_and_the_spread_of_repeated_estimates():
    sigma, n = 2.0, 400
    data = dataset(n)
    means, stderrs = [], []
    for seed in range(60):  # 60 independent evaluations of the same split
        values = BitsPerDim(chunk_size=100, seed=1000 * seed).measure(NoisyBits(sigma), data)
        means.append(values["bpd"])
        stderrs.append(values["bpd_stderr"])
    known = sigma / math.sqrt(n)
    # each stderr estimates sigma / sqrt(n): relative error ~ 1 / sqrt(2 (n - 1)) = 3.5%; 5 of them
    assert all(s == pytest.approx(known, rel=0.18) for s in stderrs)
    assert sum(stderrs) / len(stderrs) == pytest.approx(known, rel=0.03)
    # and it is what the estimates really do: the spread of 60 means (within 2.5 x its ~9% error)
    spread = torch.tensor(means).std().item()
    assert spread == pytest.approx(known, rel=0.25)
    assert sum(means) / len(means) == pytest.approx(0.5, abs=4 * known / math.sqrt(60))


def test_marginal_bits_of_a_conditional_model_are_the_log_sum_over_classes():
    model = NoisyBits(num_classes=3, conditional=True)
    labels = [0, 1, 2, 2]
    values = BitsPerDim().measure(model, dataset(4, labels))
    # per example -log2 p(x|y) = 0.5 + 1 + y: 1.5, 2.5, 3.5, 3.5 bits on one dimension
    assert values["bpd_conditional"] == pytest.approx((1.5 + 2.5 + 3.5 + 3.5) / 4)
    # -log2 p(x) = -log2 (1/3) (2^-1.5 + 2^-2.5 + 2^-3.5), the same for every example
    by_hand = -math.log2((2 ** -1.5 + 2 ** -2.5 + 2 ** -3.5) / 3)
    assert values["bpd"] == pytest.approx(by_hand, abs=1e-9)
    assert values["bpd_stderr"] == pytest.approx(0.0, abs=1e-9)
    # what holds for every example: min_y -log2 p(x|y) <= -log2 p(x) <= -log2 p(x|y) - log2 p(y)
    marginal = model.marginal_nll_bits(dataset(1)[0][0][None]).item()
    assert 1.5 <= marginal <= 3.5 + math.log2(3)
    # not "marginal >= conditional" for every label: given y=1 (2.5 bits) the marginal is smaller
    assert marginal > 1.5 and marginal < 2.5


def test_an_unconditional_model_logs_no_conditional_bits():
    assert set(BitsPerDim().measure(NoisyBits(1.0), dataset(5))) == {"bpd", "bpd_stderr"}
    assert BitsPerDim().metric_names(NoisyBits(num_classes=2, conditional=True)) == [
        "val/bpd", "val/bpd_stderr", "val/bpd_conditional", "val/bpd_conditional_stderr"]


def test_grey_labelled_datasets_default_to_the_offline_classifier_extractor():
    from conftest import compose_cfg

    for experiment, extractor in (("flow_glow_mnist", "classifier"), ("ddpm_mnist", "classifier"),
                                  ("ddpm_cifar10", "inception")):
        cfg = compose_cfg(overrides=[f"experiment={experiment}"])
        assert cfg.callbacks.fid.extractor == extractor, experiment
    cfg = compose_cfg(overrides=["dataset=fashion_mnist"])
    assert cfg.callbacks.fid.extractor == "classifier"


def test_the_report_shows_standard_errors_and_fid_floors_but_plots_only_fid():
    from genlab.report import Job, default_metrics, fid_bpd_points, table

    values = {"val/bpd": 1.5, "val/bpd_stderr": 0.02, "val/fid_classifier": 3.0,
              "val/fid_classifier_floor": 0.9, "val/fid_classifier_ref_size": 1437.0}
    jobs = [Job("0", {}, "completed", model="vae", final=values, best=values)]
    metrics = default_metrics(jobs)
    assert metrics == ["val/bpd", "val/bpd_stderr", "val/fid_classifier", "val/fid_classifier_floor",
                       "val/fid_classifier_ref_size"]
    header, rows = table(jobs, metrics)
    assert rows[0][header.index("val/bpd_stderr (final)")] == 0.02
    assert fid_bpd_points(jobs) == {"classifier": [("vae", 1.5, 3.0)]}
