"""WaveNet and WaveGlow end to end on the real FSDD clips: train (WAVs, bits per sample, the
spoken-digit metric), then genlab-eval and genlab-sample from the checkpoints; WaveGlow under
hardware=ddp_cpu. Short runs on short clips (1,024 samples: the length the audio tests' cached
classifier was trained for)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from genlab.evaluate import evaluate
from genlab.sample import sample
from genlab.train import train

from conftest import SHARED_DATA, compose_cfg

FSDD = SHARED_DATA / "fsdd"
REPO = Path(__file__).resolve().parents[1]
DATA = [f"dataset.root={FSDD}", "dataset.download=false", "dataset.length=1024", "dataset.batch_size=8"]
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=3", "trainer.check_val_every_n_epoch=1",
         "callbacks.bpd.max_examples=40", "callbacks.fid.num_samples=20", "callbacks.fid.chunk_size=20",
         "callbacks.samples.n=3", "logger=none", "trainer.enable_progress_bar=false"]
TINY = {
    "wavenet": ["model.channels=8", "model.skip_channels=8", "model.layers_per_stack=4", "model.stacks=1"],
    "waveglow": ["model.steps=2", "model.hidden=8", "model.layers=2", "model.references=4"],
}

pytestmark = pytest.mark.skipif(not (FSDD / "recordings.tar.gz").is_file(), reason=f"FSDD not present at {FSDD}")


def _train(family: str, out, *extra: str) -> dict:
    cfg = compose_cfg(overrides=[f"experiment={family}_fsdd", *DATA, *SHORT, *TINY[family], *extra], output_dir=out)
    train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    final = metrics["final"]
    bpd = "bpd_given_mel" if family == "waveglow" else "bpd"  # a vocoder's likelihood is given the clip's mel
    for key in ("train/loss", f"val/{bpd}", f"test/{bpd}"):
        assert math.isfinite(final[key]), key
    assert 0 < final[f"test/{bpd}"] < 9  # bits per sample of 8-bit audio; untrained is about 8
    if family == "waveglow":  # never under the name of -log2 p(x)
        assert "test/bpd" not in final and "bpd_given_mel" in metrics["not_applicable"]["bpd"]
    rate, pcm = wavfile.read(out / "samples" / "epoch000-step000003-002.wav")
    assert rate == cfg.dataset.sample_rate and pcm.dtype == np.int16 and pcm.shape == (1024,)
    assert (out / "samples" / "epoch000-step000003.png").is_file()
    return final


def _sample(ckpt, out, *extra: str) -> np.ndarray:
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt}", "n=4", *extra], output_dir=out))
    assert len(list(out.glob("*.wav"))) == 4
    return np.load(out / "samples.npz")["images"]


@pytest.mark.slow
def test_wavenet_trains_on_fsdd_then_evaluates_and_samples_digits_from_its_checkpoint(tmp_path):
    final = _train("wavenet", tmp_path / "run")
    assert math.isfinite(final["val/fid_classifier"]) and 0 <= final["val/class_acc_classifier"] <= 1  # conditional: the share classified as asked
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    # the likelihood is exact: genlab-eval on the same weights gives the same bits per sample
    again = evaluate(compose_cfg("eval", overrides=[f"ckpt={ckpt}", "callbacks.fid=null", "trainer.limit_test_batches=1",
                                                    "callbacks.bpd.max_examples=40"], output_dir=tmp_path / "eval"))
    assert again["test/bpd"] == pytest.approx(final["test/bpd"], rel=1e-5)
    threes = _sample(ckpt, tmp_path / "threes", "classes=[3]")
    assert threes.shape == (4, 1, 1024) and threes.dtype == np.uint8
    np.testing.assert_array_equal(np.load(tmp_path / "threes" / "samples.npz")["labels"], [3, 3, 3, 3])


@pytest.mark.slow
def test_waveglow_trains_on_fsdd_then_vocodes_its_stored_held_out_clips(tmp_path):
    _train("waveglow", tmp_path / "run", "callbacks.fid=null")  # the metric's path is WaveNet's test
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert bool(state["references_filled"]) and (state["reference_labels"] >= 0).all()
    assert state["references"].shape == (4, 1, 1024) and state["references"].float().std() > 1
    cold = _sample(ckpt, tmp_path / "cold", "+sampler.temperature=0")
    warm = _sample(ckpt, tmp_path / "warm")
    assert cold.shape == (4, 1, 1024) and not np.array_equal(cold, warm)
    # vocoded from the mel of the stored clips: the loud parts of a sample are where the clip is loud
    loud = (np.abs(state["references"].numpy().astype(float) - 128) > 20)
    assert np.abs(cold.astype(float) - 128)[loud].mean() > np.abs(cold.astype(float) - 128)[~loud].mean()


@pytest.mark.slow
def test_waveglow_trains_with_ddp_cpu_into_one_run_directory(tmp_path):
    # run from tmp_path, so that a directory made by another rank would show up there
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "genlab.train", "experiment=waveglow_fsdd", "hardware=ddp_cpu", *DATA, *SHORT,
         *TINY["waveglow"], "callbacks.fid=null", "trainer.limit_train_batches=2", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no second directory from the other rank
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 < metrics["final"]["test/bpd_given_mel"] < 9
