"""Likelihood-based OOD detection (genlab.ood): the detection metrics, the typicality statistic,
the OOD sets and their refusals. A trained model's scores: tests/test_ux.py."""

import math

import numpy as np
import pytest
import torch

from genlab.errors import ConfigError
from genlab.ood import detection_metrics, ood_names, typicality


def test_a_perfect_separator_scores_auroc_1_and_no_false_positives():
    metrics = detection_metrics(np.array([0.1, 0.5, 0.9]), np.array([1.0, 2.0]))
    assert metrics == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    reversed_ = detection_metrics(np.array([1.0, 2.0]), np.array([0.1, 0.5, 0.9]))  # OOD scored lower
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0


def test_auroc_is_the_share_of_ood_in_pairs_ranked_above():
    # pairs (in, out) with out > in: 1.5 beats 0 and 1; 3 beats 0, 1 and 2: 5 of 6
    assert detection_metrics(np.array([0.0, 1.0, 2.0]), np.array([1.5, 3.0]))["auroc"] == pytest.approx(5 / 6)


def test_identical_distributions_give_auroc_near_one_half():
    rng = np.random.default_rng(0)
    n = 2000
    auroc = detection_metrics(rng.normal(size=n), rng.normal(size=n))["auroc"]
    # under the null the AUROC (Mann-Whitney U / n^2) has sd sqrt((2n + 1) / (12 n^2)) = 0.0091: 4 sd
    assert abs(auroc - 0.5) < 4 * math.sqrt((2 * n + 1) / (12 * n * n))


def test_typicality_statistic_by_hand():
    bpd = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert typicality(bpd, 2.5).tolist() == [1.5, 0.5, 0.5, 1.5, 2.5]  # M = 1: |x - H|
    # M = 2: batch means 1.5 and 3.5 (the fifth example makes no whole batch): |1.5 - 2.5|, |3.5 - 2.5|
    assert typicality(bpd, 2.5, m=2).tolist() == [1.0, 1.0]
    # a set more likely than the data but atypical is flagged by typicality, not by bits/dim
    in_dist, too_likely = np.array([4.9, 5.0, 5.1, 5.0]), np.array([2.0, 2.1, 1.9, 2.0])
    assert detection_metrics(in_dist, too_likely)["auroc"] == 0.0
    assert detection_metrics(typicality(in_dist, 5.0), typicality(too_likely, 5.0))["auroc"] == 1.0


def test_ood_sets_are_named_or_refused_in_one_line():
    assert ood_names("noise") == ["noise"]
    assert ood_names("noise,inverted") == ["noise", "inverted"]
    assert ood_names(["digits", "image_folder:/data/cifar/test"]) == ["digits", "image_folder:/data/cifar/test"]
    with pytest.raises(ConfigError, match=r"'nosie' is not an OOD set.*inverted, noise.*image_folder"):
        ood_names(["nosie"])


def test_a_dataset_option_without_its_folder_is_refused_naming_the_form(tmp_path):
    from genlab.ood import ood_set

    from conftest import compose_cfg

    cfg = compose_cfg("eval", overrides=["ckpt=x", "+dataset.channels=1", "+dataset.image_size=8"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"ood=image_folder: the image_folder dataset needs its folder.*image_folder:ROOT"):
        ood_set("image_folder", cfg, torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    digits = ood_set("digits", cfg, torch.zeros(4, 1, 8, 8, dtype=torch.uint8))  # the 1,797 digits, all splits
    assert digits.shape == (1000, 1, 8, 8) and digits.dtype == torch.uint8  # ood_max_examples of them


def test_an_audio_dataset_option_takes_the_models_clip_length(tmp_path):
    """The settings an OOD option's data_shape is stated from follow the model's data (audio: the
    clip length), not image keys alone."""
    from genlab.ood import ood_set

    from conftest import SHARED_DATA, compose_cfg

    root = SHARED_DATA / "fsdd"
    if not (root / "recordings.tar.gz").is_file():
        pytest.skip(f"FSDD not present at {root}")
    cfg = compose_cfg("eval", overrides=["ckpt=x", "+dataset.length=64", "ood_max_examples=10"], output_dir=tmp_path)
    clips = ood_set(f"fsdd:{root}", cfg, torch.zeros(4, 1, 64, dtype=torch.uint8))
    assert clips.shape == (10, 1, 64) and clips.dtype == torch.uint8
