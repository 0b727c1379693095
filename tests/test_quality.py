"""Every shipped ``*_digits`` experiment with a floor (those without one, and where they are
measured instead: ``WITHOUT_A_FLOOR``) does what it promises: trained at a small size, it reaches
a stated FID and bits/dim, and its samples are digits to an independent classifier (the share of
class-k samples called k for conditional models, the mean confidence otherwise).

The harness and the floors are in ``bench/quality.py`` (shared with the benchmarks); each floor's
measured value and the value of the defect it catches are in ``bench/quality.md``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.quality import CASES, Case, Floor, IndependentClassifier, datamodule_of, failures, score_experiment

DIGITS_EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*_digits.yaml"))


@pytest.fixture(scope="module")
def classifier() -> IndependentClassifier:
    return IndependentClassifier(datamodule_of("vae_digits", []))


#: digits experiments added after the floors were set (issues 14 and 15), not yet given one: each
#: floor is a training run of 20-90 s in this suite, which its 15 minutes no longer hold. What they
#: reach is measured in bench/ instead. (The VQ-VAE's two stages: a floor for the prior needs a
#: trained stage 1 first, two runs; hvae_digits has its floor, pixelrnn_digits only for the Row LSTM.)
WITHOUT_A_FLOOR = {
    # a floor on a variant (a case with ``extra`` overrides) does not cover the experiment as shipped
    "pixelrnn_digits": "as shipped (diagonal_bilstm): bench/quality.md, too slow for the suite; "
                       "the Row LSTM variant has a floor (pixelrnn_digits_row)",
    "stylegan_digits": "bench/stylegan.md: FID 2.57 after 30 epochs (102 CPU s), too long for a floor here",
    "vqvae_digits": "bench/families.md",
    "vqvae_prior_digits": "bench/families.md (needs a stage-1 checkpoint)",
}


def test_every_digits_experiment_has_a_floor_or_says_why_not():
    """As shipped: a case that changes the experiment (``extra``) floors that variant only."""
    with_floor = {case.experiment for case in CASES.values() if not case.extra}
    assert not with_floor & set(WITHOUT_A_FLOOR)
    assert sorted(with_floor | set(WITHOUT_A_FLOOR)) == DIGITS_EXPERIMENTS
    assert {case.experiment for case in CASES.values()} <= set(DIGITS_EXPERIMENTS)


def test_a_case_changes_only_how_it_is_measured_unless_it_says_it_is_a_variant():
    """``Case.measure`` keeps a case the experiment as shipped, so it may not touch what is
    trained or which weights are scored (the EMA average in last.ckpt)."""
    Case("vae_digits", 1, Floor(fid=1.0), measure=("callbacks.fid.num_samples=500", "callbacks.bpd.max_examples=9"))
    for override in ("callbacks.ema=null", "callbacks.ema.decay=0.5", "callbacks.cpu_budget.minutes=1", "trainer.max_epochs=2"):
        with pytest.raises(ValueError, match="Case.measure takes"):
            Case("vae_digits", 1, Floor(fid=1.0), measure=(override,))


def test_the_independent_classifier_knows_digits_from_noise(classifier):
    # about what the classifier had on real held-out digits (0.95)
    assert classifier.held_out["n"] == 180
    assert classifier.held_out["accuracy"] >= 0.95 and classifier.held_out["confidence"] >= 0.9
    noise = torch.randint(0, 256, (200, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert classifier.probabilities(noise).max(1).mean() < 0.4
    assert classifier.probabilities(torch.zeros(1, 1, 8, 8, dtype=torch.uint8)).max() < 0.4


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_experiment_meets_its_quality_floor(name, classifier, tmp_path):
    case = CASES[name]
    scores = score_experiment(case.experiment, case.overrides, tmp_path / "run", classifier)
    missed = failures(scores, case.floor)
    assert not missed, f"{name}: {'; '.join(missed)} (scores {scores})"
