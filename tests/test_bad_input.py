"""Bad input stops before any training with a message naming the key or file and the fix,
and leaves nothing behind that looks like a result."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genlab.entry import entry_point
from genlab.evaluate import evaluate
from genlab.sample import sample
from genlab.samplers.base import Sampler
from genlab.train import train

from conftest import compose_cfg

TRAIN_SECTIONS = ("dataset", "model", "sampler", "callbacks", "logger", "trainer")


class ImplicitOnlySampler(Sampler):
    """A sampler for a family the VAE is not (stands in for e.g. GAN truncation)."""

    families = ("gan",)

    def __init__(self, **options) -> None:
        self.options = options


def fails_cleanly(run, cfg, capsys, *fragments: str) -> str:
    """Run an entry point; it must exit 1 with every fragment in its one-line error, write
    FAILED.json, and leave no metrics, checkpoints or samples."""
    out = Path(cfg.paths.output_dir)
    with pytest.raises(SystemExit) as exc:
        entry_point(run, TRAIN_SECTIONS if run is train else ("sampler",))(cfg)
    assert exc.value.code == 1
    message = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert json.loads((out / "FAILED.json").read_text())["status"] == "failed"
    leftovers = {p.name for p in out.iterdir()} - {"FAILED.json"}
    assert not leftovers & {"metrics.json", "checkpoints", "samples", "samples.npz", "wandb"}, leftovers
    return message


def test_missing_required_key(tmp_path, capsys):
    cfg = compose_cfg(overrides=["dataset=image_folder"], output_dir=tmp_path)
    fails_cleanly(train, cfg, capsys, "dataset.root", "dataset.root=...")


def test_dataset_root_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    cfg = compose_cfg(overrides=["dataset=image_folder", f"dataset.root={missing}"], output_dir=tmp_path / "run")
    fails_cleanly(train, cfg, capsys, "dataset.root", str(missing))


def test_empty_image_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cfg = compose_cfg(overrides=["dataset=image_folder", f"dataset.root={tmp_path / 'empty'}"],
                      output_dir=tmp_path / "run")
    fails_cleanly(train, cfg, capsys, str(tmp_path / "empty"), "empty")


def test_unreadable_image_is_named(tiny_folder, tmp_path, capsys):
    bad = tiny_folder / "bars" / "broken.png"
    bad.write_bytes(b"\x89PNG not really an image")
    cfg = compose_cfg(overrides=["dataset=image_folder", f"dataset.root={tiny_folder}"], output_dir=tmp_path / "run")
    fails_cleanly(train, cfg, capsys, str(bad))


def test_truncated_image_is_named_before_training(tiny_folder, tmp_path, capsys):
    from PIL import Image

    cut = tiny_folder / "blobs" / "cut.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(cut, quality=95)
    cut.write_bytes(cut.read_bytes()[: int(cut.stat().st_size * 0.6)])
    cfg = compose_cfg(overrides=["dataset=image_folder", f"dataset.root={tiny_folder}"], output_dir=tmp_path / "run")
    fails_cleanly(train, cfg, capsys, str(cut), "truncated")


def test_download_without_network_says_how_to_use_local_files(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cfg = compose_cfg(overrides=["dataset=mnist", f"dataset.root={tmp_path / 'data'}"], output_dir=tmp_path / "run")
    message = fails_cleanly(train, cfg, capsys, "dataset.root", "MNIST")
    assert "download" in message.lower()


def test_sampler_that_does_not_serve_the_family(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GENLAB_TRUSTED_MODULES", __name__)  # the config builds the sampler from this module
    cfg = compose_cfg(overrides=[f"sampler._target_={__name__}.ImplicitOnlySampler"], output_dir=tmp_path)
    fails_cleanly(train, cfg, capsys, "'vae'", "sampler=prior")


def test_inception_without_weights_or_network(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cfg = compose_cfg(overrides=["callbacks.fid.extractor=inception"], output_dir=tmp_path)
    fails_cleanly(train, cfg, capsys, "callbacks.fid.weights_path")


@pytest.mark.parametrize("overrides", [["objective=val/bdp"], ["callbacks.bpd=null"]])
def test_an_objective_the_run_does_not_measure(tmp_path, capsys, overrides):
    cfg = compose_cfg(overrides=overrides, output_dir=tmp_path)  # with W&B: no run is started
    fails_cleanly(train, cfg, capsys, "objective=", "val/elbo_bpd")


def test_checkpoint_path_that_does_not_exist(tmp_path, capsys):
    cfg = compose_cfg("eval", overrides=[f"ckpt={tmp_path / 'missing.ckpt'}"], output_dir=tmp_path / "run")
    fails_cleanly(evaluate, cfg, capsys, "ckpt=", "missing.ckpt")


@pytest.mark.parametrize("content", ["text", "foreign"])
def test_file_that_is_not_a_genlab_checkpoint(tmp_path, capsys, content):
    path = tmp_path / "model.ckpt"
    if content == "text":
        path.write_text("hello")
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    for run, name in ((evaluate, "eval"), (sample, "sample")):
        cfg = compose_cfg(name, overrides=[f"ckpt={path}"], output_dir=tmp_path / f"run-{name}")
        fails_cleanly(run, cfg, capsys, str(path), "genlab")


@pytest.mark.slow
def test_cli_unknown_option_lists_the_choices(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "genlab.train", "model=nosuchmodel", f"paths.log_dir={tmp_path}"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "model/nosuchmodel" in result.stderr and "Available options" in result.stderr
    assert "vae" in result.stderr
    assert not list(tmp_path.rglob("metrics.json"))
