"""What a new user meets first (issue 16): a short run that still measures its objective, sample
images on W&B as in the run folder, validation metrics and parameter counts on screen, the
objective that follows the family, and every README command as written."""

import json
import logging
import math
import time

import numpy as np
import pytest
from PIL import Image

from genlab.train import train

from conftest import compose_cfg
from test_sweeps import sweep_cli


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A run of 40 steps (2 epochs) with the default schedule (validation every 10 epochs: never reached)."""
    out = tmp_path_factory.mktemp("short")
    cfg = compose_cfg(overrides=["trainer.max_steps=40", "logger=wandb", "callbacks.fid.num_samples=100",
                                 "callbacks.bpd.max_examples=50", "model.iw_samples=2", "callbacks.samples.n=16",
                                 "test=false"], output_dir=out)
    return out, train(cfg)


def test_a_short_run_validates_once_at_its_end(short_run):
    out, objective = short_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "objective" not in metrics  # measured
    assert math.isfinite(objective) and objective == metrics["best"]["val/bpd"]
    assert [p.name for p in (out / "checkpoints").glob("best-*.ckpt")] == ["best-epoch001-step000040.ckpt"]
    assert len(list((out / "samples").glob("*.png"))) == 1


def test_wandb_sample_images_hold_the_pixels_of_the_run_folder_png(short_run):
    from wandb_records import history, read_records

    out, _ = short_run
    run = next((out / "wandb").glob("offline-run-*"))
    deadline = time.monotonic() + 30  # W&B's service process writes the run file: up to its exit record
    records = read_records(next(run.glob("run-*.wandb")))
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.5)
        records = read_records(next(run.glob("run-*.wandb")))
    rows = [row for row in history(records) if "samples/_type" in row]
    assert len(rows) == 1
    logged = np.asarray(Image.open(next((run / "files" / "media" / "images").glob("samples_*.png"))).convert("RGB"))
    saved = np.asarray(Image.open(next((out / "samples").glob("*.png"))).convert("RGB"))
    assert logged.shape == saved.shape and np.array_equal(logged, saved)
    assert logged.max() == 255 and len(np.unique(logged)) > 10  # not the black 0/1 image W&B made of floats


def test_validation_metrics_config_and_parameter_counts_are_shown(tmp_path, capfd, caplog):
    cfg = compose_cfg(overrides=["trainer.max_steps=3", "logger=none", "callbacks.fid=null", "model.iw_samples=2",
                                 "callbacks.bpd.max_examples=20", "test=false", "callbacks.samples.n=4"],
                      output_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        train(cfg)
    shown = capfd.readouterr()
    text = shown.err + shown.out + "\n".join(r.getMessage() for r in caplog.records)
    # the progress bar (Lightning's rich or tqdm bar) shows the objective while training
    assert "val/bpd:" in text or "val/bpd=" in text
    assert "Total params" in text and "encoder" in text  # Lightning's model summary
    assert "config of this run" in text and "latent_dim: 16" in text and "max_steps: 3" in text


@pytest.mark.slow
def test_a_run_that_never_measures_its_objective_says_so_and_fails_its_sweep(tmp_path):
    cfg = compose_cfg(overrides=["trainer.max_steps=2", "trainer.limit_val_batches=0", "logger=none",
                                 "callbacks.fid=null", "test=false"], output_dir=tmp_path / "single")
    assert math.isnan(train(cfg))
    assert json.loads((tmp_path / "single" / "metrics.json").read_text())["objective"] == "not measured"
    result = sweep_cli(tmp_path / "sweep", "trainer.max_steps=2", "trainer.limit_val_batches=0", "logger=none",
                       "callbacks.fid=null", "test=false", "trainer.enable_progress_bar=false")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "1 of 1 jobs of the sweep failed" in result.stdout + result.stderr
    failed = json.loads((tmp_path / "sweep" / "0" / "FAILED.json").read_text())
    assert failed["error"] == "ObjectiveNotMeasured" and "objective=val/bpd was never measured" in failed["message"]


def test_the_objective_follows_the_family():
    assert compose_cfg(overrides=["model=dcgan"]).objective == "val/fid_classifier"
    assert compose_cfg(overrides=["model=stylegan"]).objective == "val/fid_classifier"
    assert compose_cfg(overrides=["model=dcgan", "dataset=cifar10"]).objective == "val/fid_inception"
    for model in ("vae", "glow", "pixelcnn"):
        assert compose_cfg(overrides=[f"model={model}"]).objective == "val/bpd"
    # a vocoder's likelihood is given each clip's own mel-spectrogram: not -log2 p(x)
    assert compose_cfg(overrides=["experiment=waveglow_fsdd"]).objective == "val/bpd_given_mel"
    assert compose_cfg(overrides=["model=dcgan", "objective=val/is_x"]).objective == "val/is_x"  # command line wins


# ----- every genlab-eval / genlab-sample command of the README, run as written on a tiny checkpoint ---------

#: the checkpoint each README command is meant for (the section it is in), as train overrides of
#: a tiny model; "trained" is the short run above. Tiny sizes replace the README's large ones.
DDPM = "model=ddpm model.timesteps=100 model.channels=8 model.channel_mult=[1] model.attention_resolutions=[]"
README_RUNS = {
    "genlab-eval ckpt=outputs/train/<run>/checkpoints/last.ckpt": "trained",
    "genlab-eval ckpt=... split=val callbacks.fid.num_samples=5000 hardware=ddp_cpu": "trained",
    "genlab-sample ckpt=... n=64 +sampler.temperature=0.8": "trained",
    "genlab-sample ckpt=... n=20 classes=[3,7]": "model=cvae",
    "genlab-sample ckpt=... direction=3:8": "trained",
    "genlab-sample ckpt=... manifold=20": "model=vae model.latent_dim=2",
    "genlab-eval ckpt=... ood=[noise,inverted,digits]": "trained",
    "genlab-sample ckpt=... n=64 sampler=ddpm": DDPM,
    "genlab-sample ckpt=... n=64 +sampler.steps=100 +sampler.eta=1.0":
        DDPM,
    "genlab-sample ckpt=PATH n=64 classes=[3,7] +sampler.temperature=0.8": "experiment=autoregressive_digits",
    "genlab-sample ckpt=... n=64 +sampler.temperature=0.7": "model=glow",
    "genlab-sample ckpt=... interpolate=8 interpolate_steps=10": "model=glow",
    "genlab-sample ckpt=.../last.ckpt grid=style_mixing grid_rows=6 grid_layer=2": "model=stylegan",
    "genlab-sample ckpt=.../last.ckpt grid=truncation grid_psis=[1.0,0.7,0.4,0.0]": "model=stylegan",
    "genlab-sample ckpt=.../last.ckpt n=64 +sampler.psi=0.7": "model=dcgan",
    "genlab-sample ckpt=PATH n=10 classes=[3] +sampler.temperature=0.9": "experiment=wavenet_fsdd dataset.length=64",
    "genlab-sample ckpt=PATH n=64 +sampler.temperature=0.5": "model=hvae",
}
#: what a test machine runs instead (DDP on CPU is tested by test_ddp; FID on 5,000 samples by nothing)
TINY = {"callbacks.fid.num_samples=5000": "callbacks.fid.num_samples=100", "hardware=ddp_cpu": "hardware=cpu"}


def _readme_checkpoint_commands() -> list[str]:
    from conftest import REPO

    lines = [line.split(" #")[0].strip() for line in (REPO / "README.md").read_text().splitlines()]
    return [line for line in lines if line.startswith(("genlab-eval ", "genlab-sample "))]


def _untrained_checkpoint(path, overrides: str):
    """A checkpoint as genlab-train writes it (weights + the run's resolved config), of a model
    built from ``overrides`` and not trained: what the commands need is its format."""
    import torch
    from omegaconf import OmegaConf

    from genlab.config import instantiate

    cfg = compose_cfg(overrides=overrides.split(), output_dir=path.parent)
    model = instantiate(cfg.model, "model")
    torch.save({"state_dict": model.state_dict(),
                "genlab": {"config": OmegaConf.to_container(cfg, resolve=True), "family": model.family}}, path)
    return path


def test_the_readme_lists_exactly_the_checkpoint_commands_this_test_runs():
    assert _readme_checkpoint_commands() == list(README_RUNS)


@pytest.mark.slow
def test_every_readme_eval_and_sample_command_runs_as_written(short_run, tmp_path):
    import shlex

    from genlab.evaluate import evaluate
    from genlab.sample import sample

    trained = next((short_run[0] / "checkpoints").glob("best-*.ckpt"))
    checkpoints = {}
    for i, (line, source) in enumerate(README_RUNS.items()):
        if source not in checkpoints:
            checkpoints[source] = trained if source == "trained" else \
                _untrained_checkpoint(tmp_path / f"ckpt{len(checkpoints)}.ckpt", source)
        words = shlex.split(line)
        overrides = [f"ckpt={checkpoints[source]}" if w.startswith("ckpt=") else TINY.get(w, w) for w in words[1:]]
        out = tmp_path / f"out{i}"
        if words[0] == "genlab-eval" and "ood=" in line:
            metrics = evaluate(compose_cfg("eval", overrides=overrides, output_dir=out))
            assert {"ood/noise/bpd_auroc", "ood/inverted/typicality_aupr", "ood/digits/bpd_fpr95"} <= set(metrics)
        elif words[0] == "genlab-eval":
            metrics = evaluate(compose_cfg("eval", overrides=overrides, output_dir=out))
            split = "val" if "split=val" in line else "test"
            assert math.isfinite(metrics[f"{split}/bpd"]) and math.isfinite(metrics[f"{split}/fid_classifier"]), line
        else:
            sample(compose_cfg("sample", overrides=overrides, output_dir=out))
            if "grid=" in line:  # its own layout (tests/test_stylegan.py); here: written as asked
                name = next(w for w in words if w.startswith("grid=")).split("=")[1]
                assert np.load(out / f"{name}.npz")["images"].dtype == np.uint8, line
                continue
            name = next((k for k in ("interpolation", "direction", "manifold") if k[:6] in line), "samples")
            images = np.load(out / f"{name}.npz")["images"]
            n = {"interpolation": 8 * 10, "direction": 8 * 8, "manifold": 20 * 20}.get(name) or \
                int(next(w for w in words if w.startswith("n=")).split("=")[1])
            assert images.shape[0] == n and images.dtype == np.uint8, line
            if "classes=[3]" in line:
                assert set(np.load(out / "samples.npz")["labels"]) == {3}
            if "classes=[3,7]" in line:
                assert list(np.load(out / "samples.npz")["labels"][:4]) == [3, 7, 3, 7]


# ----- OOD detection with a trained model ----------------------------------------------------------------


def test_a_trained_digits_model_tells_noise_and_inverted_digits_from_digits(short_run, tmp_path):
    """40 steps of training (2 epochs) already separate uniform noise (AUROC 1) and inverted digits (AUROC
    >= 0.99) from the held-out digits by bits/dim and by typicality; the run's own checkpoint as
    the background makes the likelihood ratio ~0 for every set (AUROC near 0.5)."""
    from genlab.evaluate import evaluate

    ckpt = next((short_run[0] / "checkpoints").glob("best-*.ckpt"))
    cfg = compose_cfg("eval", overrides=[f"ckpt={ckpt}", "ood=[noise,inverted,digits]", f"ood_background={ckpt}",
                                         "ood_max_examples=150"], output_dir=tmp_path)
    metrics = evaluate(cfg)
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())["final"]
    assert metrics["ood/noise/bpd_auroc"] == 1.0 and metrics["ood/noise/typicality_auroc"] == 1.0
    assert metrics["ood/inverted/bpd_auroc"] >= 0.99 and metrics["ood/inverted/bpd_fpr95"] <= 0.05
    assert metrics["ood/noise/bpd"] > metrics["ood/test/bpd"] + 2
    assert abs(metrics["ood/digits/bpd_auroc"] - 0.5) < 0.1  # the digits themselves (all splits): no separation
    assert abs(metrics["ood/noise/llr_auroc"] - 0.5) < 0.25  # same model: only the IWAE noise differs
    for score in ("bpd", "typicality", "llr"):
        assert Image.open(tmp_path / f"ood_{score}.png").size[0] > 300


# ----- latent directions and manifolds through genlab-sample -------------------------------------------------


def test_sample_moves_examples_along_a_class_direction(short_run, tmp_path):
    import torch

    from genlab.checkpoint import load_model, read_checkpoint
    from genlab.sample import sample

    ckpt = next((short_run[0] / "checkpoints").glob("best-*.ckpt"))
    sample(compose_cfg("sample", overrides=[f"ckpt={ckpt}", "direction=3:8", "direction_rows=4",
                                            "interpolate_steps=5"], output_dir=tmp_path))
    saved = np.load(tmp_path / "direction.npz")
    assert saved["images"].shape == (4 * 5, 1, 8, 8) and Image.open(tmp_path / "direction.png").size[0] > 5 * 32
    # each row starts at the example's own reconstruction and ends at z + (z_8 - z_3)
    checkpoint = read_checkpoint(ckpt)
    from omegaconf import OmegaConf

    model = load_model(checkpoint, OmegaConf.create(checkpoint["genlab"]["config"]["model"]))
    from genlab.config import instantiate

    data = instantiate(OmegaConf.create(checkpoint["genlab"]["config"]["dataset"]), "dataset").split_dataset("test")
    x = torch.stack([data[int(i)][0] for i in saved["indices"]])
    assert all(data[int(i)][1] == 3 for i in saved["indices"])
    z = model.encode_mean(x)
    first, last = saved["images"].reshape(4, 5, 1, 8, 8)[:, 0], saved["images"].reshape(4, 5, 1, 8, 8)[:, -1]
    assert np.array_equal(first, model.decode_latent(z).numpy())
    assert np.array_equal(last, model.decode_latent(z + torch.from_numpy(saved["direction"])).numpy())


def test_a_2d_latent_vae_draws_its_manifold_and_others_are_refused(tmp_path):
    from genlab.errors import ConfigError
    from genlab.sample import sample

    two_d = _untrained_checkpoint(tmp_path / "vae2.ckpt", "model=vae model.latent_dim=2")
    sample(compose_cfg("sample", overrides=[f"ckpt={two_d}", "manifold=6"], output_dir=tmp_path / "m"))
    saved = np.load(tmp_path / "m" / "manifold.npz")
    assert saved["images"].shape == (36, 1, 8, 8)
    latents = saved["latents"].reshape(6, 6, 2)
    assert (np.diff(latents[0, :, 0]) > 0).all() and (np.diff(latents[:, 0, 1]) < 0).all()  # a plane, row-major
    assert latents[0, 0, 0] == pytest.approx(-1.383, abs=1e-3)  # the 1/12 quantile of N(0, 1)
    sixteen = _untrained_checkpoint(tmp_path / "vae16.ckpt", "model=vae")
    with pytest.raises(ConfigError, match="needs a 2-D latent; this model's has 16"):
        sample(compose_cfg("sample", overrides=[f"ckpt={sixteen}", "manifold=6"], output_dir=tmp_path / "n"))
    gan = _untrained_checkpoint(tmp_path / "gan.ckpt", "model=dcgan")
    with pytest.raises(ConfigError, match="dcgan|gan model has no encoder"):
        sample(compose_cfg("sample", overrides=[f"ckpt={gan}", "direction=3:8"], output_dir=tmp_path / "g"))
