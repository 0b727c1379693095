"""Bad input stops before any training with a message naming the key or file and the fix,
and leaves nothing behind that looks like a result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.entry import entry_point
from genlab.evaluate import evaluate
from genlab.sample import sample
from genlab.samplers.base import Sampler
from genlab.train import train

from bad_inputs import CASES, BadInput, make_fixtures, run
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


# ----------------------------------------------------------------------------------------
# The table of bad inputs (tests/bad_inputs.py), each through its command's real main():
# Hydra's composition and run directory, then genlab's checks. bench/bad_inputs.py counts them.


@pytest.fixture(scope="module")
def bad_input_fixtures(tmp_path_factory) -> dict[str, str]:
    return make_fixtures(tmp_path_factory.mktemp("bad-input-fixtures"))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input(case: BadInput, bad_input_fixtures, tmp_path):
    if case.only_without_gpu and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    outcome = run(case, bad_input_fixtures, tmp_path / "logs")
    assert outcome.kind == "clear", (outcome.kind, outcome.stderr)
    for fragment in case.expect:
        assert fragment.format(**bad_input_fixtures) in outcome.message, (fragment, outcome.message)
    assert not outcome.leftovers, outcome.leftovers
    run_dirs = [p for p in (tmp_path / "logs").glob("*/*") if p.is_dir()]
    assert outcome.failed_records == len(run_dirs)  # a run directory that was made says it failed


def test_sixteen_bit_pngs_are_scaled_to_eight_bits(tmp_path):
    """PIL's own conversion of 16-bit grey clips at 255; genlab scales 65535 -> 255."""
    from PIL import Image

    from genlab.data import ImageFolderDataModule

    values = np.array([0, 257, 32896, 65535, 1000, 40000, 65280, 128], dtype=np.uint16).reshape(2, 4)
    (tmp_path / "imgs").mkdir()
    for i in range(10):
        Image.fromarray(np.tile(values, (2, 1))).save(tmp_path / "imgs" / f"{i}.png")  # 4x4, mode I;16
    assert Image.open(tmp_path / "imgs" / "0.png").mode == "I;16"
    data = ImageFolderDataModule(root=str(tmp_path / "imgs"), channels=1, image_size=4, batch_size=2,
                                 val_fraction=0.2, test_fraction=0.2)
    x, _ = data.split_dataset("train")[0]
    expected = np.round(np.tile(values, (2, 1)) / 257).astype(np.uint8)
    assert x.shape == (1, 4, 4) and x.dtype == torch.uint8
    assert x[0].numpy().tolist() == expected.tolist()
    assert x[0, 0].tolist() == [0, 1, 128, 255] and x[0, 1].tolist() == [4, 156, 254, 0]
    rgb = ImageFolderDataModule(root=str(tmp_path / "imgs"), channels=3, image_size=4)
    assert rgb.split_dataset("train")[0][0][:, 0].tolist() == [[0, 1, 128, 255]] * 3


def _cli(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    module = {"train": "genlab.train", "sample": "genlab.sample"}[command]
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("genlab: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cli_trainer_argument_of_the_wrong_type(tmp_path):
    result = _cli("train", "trainer.max_epochs=abc", f"paths.log_dir={tmp_path}", "logger=none", cwd=REPO)
    _one_error_line(result, "trainer.max_epochs='abc'")
    (failed,) = tmp_path.glob("train/*/FAILED.json")
    assert json.loads(failed.read_text())["status"] == "failed"
    assert not list(tmp_path.rglob("metrics.json")) and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.slow
def test_cli_yaml_syntax_error_in_a_config_dir(tmp_path):
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "mine.yaml").write_text("defaults:\n  - vae\nlatent_dim: [4\nbeta: 1\n")
    result = _cli("train", "--config-dir", str(tmp_path / "conf"), "model=mine", f"paths.log_dir={tmp_path / 'logs'}",
                  cwd=REPO)
    _one_error_line(result, f"{tmp_path / 'conf' / 'model' / 'mine.yaml'} line 4", "YAML")
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow
def test_cli_run_directory_below_a_file(tmp_path):
    (tmp_path / "results").write_text("a file where a folder was meant\n")
    result = _cli("train", f"hydra.run.dir={tmp_path / 'results' / 'run1'}", cwd=REPO)
    _one_error_line(result, f"{tmp_path / 'results'} is a file", "hydra.run.dir=")
    assert (tmp_path / "results").read_text() == "a file where a folder was meant\n"


@pytest.mark.slow
def test_cli_sample_with_an_empty_class_list(bad_input_fixtures, tmp_path):
    result = _cli("sample", f"ckpt={bad_input_fixtures['cvae_ckpt']}", "classes=[]", f"paths.log_dir={tmp_path}",
                  cwd=REPO)
    _one_error_line(result, "classes=[]", "non-empty")
    assert not list(tmp_path.rglob("samples.*"))


def _options(group: str) -> list[str]:
    from genlab.config import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_shipped_experiments_pass_the_checks(experiment, tmp_path):
    """No false refusals: every experiment's settings (trainer, optimizers) pass as shipped."""
    from genlab.config import _missing_keys, check_config

    cfg = compose_cfg(overrides=[f"experiment={experiment}"], output_dir=tmp_path)
    # what an experiment leaves to the user (a second stage's stage-1 checkpoint), given
    given = [f"{key}=user.ckpt" for key in _missing_keys(cfg.model, "model.")]
    check_config(compose_cfg(overrides=[f"experiment={experiment}", *given], output_dir=tmp_path), TRAIN_SECTIONS)


@pytest.mark.parametrize("overrides", [
    ["trainer.max_time=00:12:00:00"], ["+trainer.max_time.hours=2"], ["trainer.limit_train_batches=5"],
    ["trainer.limit_val_batches=0"], ["trainer.max_epochs=-1", "trainer.max_steps=10"], ["+trainer.num_nodes=1"],
    ["trainer.precision=bf16-mixed"], ["trainer.gradient_clip_val=0.5", "+trainer.gradient_clip_algorithm=value"],
    ["hardware=cpu"], ["hardware=ddp_cpu"], ["+model.optimizer.betas=[0.5,0.9]", "+model.optimizer.weight_decay=0"],
    ["model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:10}"],
], ids=lambda o: " ".join(o))
def test_good_values_pass_the_checks(overrides, tmp_path):
    from genlab.checks import cpus_available
    from genlab.config import check_config

    if "hardware=ddp_cpu" in overrides and cpus_available() < 2:
        pytest.skip("two CPU processes need two CPUs")

    check_config(compose_cfg(overrides=overrides, output_dir=tmp_path), TRAIN_SECTIONS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("hardware", ["gpu", "ddp"])
def test_gpu_hardware_passes_the_checks_where_there_is_a_gpu(hardware, tmp_path):
    from genlab.config import check_config

    check_config(compose_cfg(overrides=[f"hardware={hardware}"], output_dir=tmp_path), TRAIN_SECTIONS)
