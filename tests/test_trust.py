"""Checkpoints and configs are data, never code.

The hostile checkpoints here are crafted the way an attacker would: a real model's state_dict
saved with ``torch.save`` beside a genlab config whose ``_target_`` writes a file. They load with
``weights_only=True``; what must stop them is the allow-list every instantiation goes through.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import genlab.sample
from genlab.checkpoint import StoredModel, read_checkpoint
from genlab.config import CONF_DIR, instantiate
from genlab.entry import entry_point
from genlab.errors import CheckpointError, UntrustedConfig
from genlab.evaluate import evaluate
from genlab.sample import sample
from genlab.train import train
from genlab.trust import check_config_dirs, check_targets, refusal

from conftest import REPO, compose_cfg

TRAIN_SECTIONS = ("dataset", "model", "sampler", "callbacks", "logger", "trainer")
WRITE_TEXT = "pathlib.Path.write_text"


def writes_file(path: Path) -> dict:
    """A config node that, built by hydra.utils.instantiate, writes ``path``: a ``.pth`` file in a
    venv's site-packages would run its line at every Python start."""
    return {"_target_": WRITE_TEXT, "self": {"_target_": "pathlib.Path", "_args_": [str(path)]},
            "data": "import os; os.system('echo owned')\n"}


def saved_run(model: str) -> tuple[dict, dict]:
    """(resolved config, state_dict) of a real genlab model on the digits, as a run saves them
    (the weights as initialised: what matters here is their names and shapes)."""
    cfg = compose_cfg(overrides=[f"model={model}", "logger=none"], output_dir=Path("/nonexistent"))
    return OmegaConf.to_container(cfg, resolve=True), instantiate(cfg.model, "model").state_dict()


def save_checkpoint(path: Path, config: dict, state_dict: dict) -> Path:
    torch.save({"state_dict": state_dict, "epoch": 0, "global_step": 0,
                "genlab": {"version": "0", "family": "x", "config": config, "metrics": {"final": {}, "best": {}}}}, path)
    return path


@pytest.fixture(scope="module")
def vae(tmp_path_factory) -> tuple[dict, dict, Path]:
    """A real VAE's config and weights, and a benign checkpoint of them."""
    config, state = saved_run("vae")
    return config, state, save_checkpoint(tmp_path_factory.mktemp("vae") / "vae.ckpt", config, state)


def _put(config: dict, keys: str, value) -> None:
    *parents, last = keys.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[last] = value


def in_interpolation_grammar(node: dict | list | str) -> str:
    """``node`` written in OmegaConf's interpolation grammar: ``${oc.create:...}`` of it creates the
    node when the config is resolved, so the saved config holds only a string there."""
    if isinstance(node, dict):
        return "{" + ", ".join(f"{k}: {in_interpolation_grammar(v)}" for k, v in node.items()) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(in_interpolation_grammar(v) for v in node) + "]"
    return '"' + str(node).replace("\\", "\\\\").replace('"', '\\"') + '"'


# where the hostile node sits in the saved config -> the key the refusal must name
VARIANTS = {
    "oc_create": lambda c, bad: (_put(c, "model.net", "${oc.create:" + in_interpolation_grammar(bad) + "}"),
                                 "model.net._target_"),
    "sampler": lambda c, bad: (_put(c, "sampler", bad), "sampler._target_"),
    "net": lambda c, bad: (_put(c, "model.net", bad), "model.net._target_"),
    "callback": lambda c, bad: (_put(c, "callbacks.bpd", bad), "callbacks.bpd._target_"),
    "partial": lambda c, bad: (_put(c, "model.optimizer", {**bad, "_partial_": True}), "model.optimizer._target_"),
    "args_list": lambda c, bad: (_put(c, "sampler", {"_target_": "genlab.samplers.prior.PriorSampler", "_args_": [bad]}),
                                 "sampler._args_.0._target_"),
}


def hostile(vae, variant: str, victim: Path) -> tuple[dict, str]:
    config = copy.deepcopy(vae[0])
    _, key = VARIANTS[variant](config, writes_file(victim))
    return config, key


def refused(run, cfg, capsys, *fragments: str) -> str:
    """An entry point stops with exit status 1 and one `genlab: error:` line holding each fragment."""
    with pytest.raises(SystemExit) as exc:
        entry_point(run, TRAIN_SECTIONS if run is train else ("sampler",))(cfg)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genlab: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize("variant", ["sampler", "oc_create", "args_list"])
def test_the_crafted_payloads_really_write_a_file_without_the_guard(vae, tmp_path, variant):
    victim = tmp_path / "evil.pth"
    config, key = hostile(vae, variant, victim)
    section = key.split(".")[0]
    with contextlib.suppress(Exception):  # the model may refuse the extra argument, after the write
        hydra.utils.instantiate(OmegaConf.create(config)[section])
    assert victim.read_text().startswith("import os")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("route", ["eval", "sample", "ckpt_path"])
def test_a_hostile_checkpoint_is_refused(vae, tmp_path, capsys, variant, route):
    victim = tmp_path / "evil.pth"
    config, key = hostile(vae, variant, victim)
    ckpt = save_checkpoint(tmp_path / "model.ckpt", config, vae[1])
    if route == "ckpt_path":
        cfg = compose_cfg(overrides=["logger=none", f"ckpt_path={ckpt}"], output_dir=tmp_path / "run")
        run = train
    else:
        cfg = compose_cfg(route, overrides=[f"ckpt={ckpt}"], output_dir=tmp_path / "run")
        run = evaluate if route == "eval" else sample
    refused(run, cfg, capsys, key, WRITE_TEXT, str(ckpt))
    assert not victim.exists()
    assert not {"metrics.json", "checkpoints", "samples.npz"} & {p.name for p in (tmp_path / "run").iterdir()}


@pytest.mark.parametrize("variant", ["sampler", "partial", "args_list", "oc_create"])
def test_automatic_resume_of_a_hostile_run_directory_is_refused_and_leaves_it_as_it_is(vae, tmp_path, capsys, variant):
    victim = tmp_path / "evil.pth"
    config, key = hostile(vae, variant, victim)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    save_checkpoint(run_dir / "checkpoints" / "last.ckpt", config, vae[1])
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.json").write_text('{"status": "running"}')
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.rglob("*") if p.is_file()}
    cfg = compose_cfg(overrides=["logger=none"], output_dir=run_dir)
    refused(train, cfg, capsys, key, WRITE_TEXT, str(run_dir / "config_resolved.yaml"))
    assert not victim.exists()
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("variant", VARIANTS)
def test_instantiate_refuses_whatever_the_config_came_from(vae, tmp_path, variant):
    """The one place every build goes through: a hostile node that reached the command's config by
    any way (an override, a config file, a merge) is refused there too."""
    victim = tmp_path / "evil.pth"
    config, key = hostile(vae, variant, victim)
    section = key.split(".")[0]
    node = OmegaConf.create({section: config[section]})[section]
    with pytest.raises(UntrustedConfig, match=key.replace(".", r"\.")):
        instantiate(node, section)
    assert not victim.exists()


def test_the_cli_refuses_a_hostile_checkpoint(vae, tmp_path):
    victim = tmp_path / "evil.pth"
    config, _ = hostile(vae, "sampler", victim)
    ckpt = save_checkpoint(tmp_path / "model.ckpt", config, vae[1])
    result = subprocess.run([sys.executable, "-m", "genlab.sample", f"ckpt={ckpt}", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("genlab: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "sampler._target_" in lines[0] and WRITE_TEXT in lines[0] and str(ckpt) in lines[0]
    assert not victim.exists()


@pytest.mark.parametrize("target", [
    WRITE_TEXT, "builtins.exec", "os.system", "subprocess.Popen",
    "genlab.config.os.system",  # genlab's prefix, another module's function
    "genlab.config.Path",  # genlab's prefix, another module's class
    "genlab.models.vae.VAE.load_from_checkpoint",  # a method of an allowed class
    "genlab.utils.atomic_file",  # genlab's own, but a function
    "genlab.errors.ConfigError",  # genlab's own class, none of the bases
    "torch.optim.lr_scheduler.torch.save",
    "genlab.__builtins__",
    "${oc.env:EVIL}",
])
def test_targets_that_are_refused(target):
    assert refusal(target) is not None


@pytest.mark.parametrize("target", [
    "genlab.models.vae.VAE", "genlab.nets.unet.UNet", "genlab.samplers.prior.PriorSampler",
    "genlab.data.ImageFolderDataModule", "genlab.callbacks.fid.FIDCallback", "genlab.loggers.ResumableCSVLogger",
    "genlab.models.diffusion.LinearWarmup", "torch.optim.AdamW", "torch.optim.lr_scheduler.CosineAnnealingLR",
    "torch.nn.SiLU", "pytorch_lightning.callbacks.EarlyStopping", "pytorch_lightning.loggers.CSVLogger",
])
def test_targets_that_are_allowed(target):
    assert refusal(target) is None


def test_a_module_outside_the_allow_list_is_never_imported(tmp_path, monkeypatch):
    (tmp_path / "side_effect_mod.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass X: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "not one genlab builds from" in refusal("side_effect_mod.X")
    assert not (tmp_path / "imported").exists() and "side_effect_mod" not in sys.modules


def test_own_classes_are_built_when_their_module_is_trusted(tmp_path, monkeypatch):
    (tmp_path / "mylab_callbacks.py").write_text(
        "import pytorch_lightning as pl\nclass Mine(pl.Callback):\n    pass\ndef helper():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert refusal("mylab_callbacks.Mine") is not None
    monkeypatch.setenv("GENLAB_TRUSTED_MODULES", "mylab_callbacks")
    assert refusal("mylab_callbacks.Mine") is None
    assert "not a class" in refusal("mylab_callbacks.helper")


# --- --config-dir ------------------------------------------------------------------------------

def config_dir(root: Path, files: dict[str, dict | str]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return root


@pytest.mark.parametrize("name, content, key", [
    ("sampler/evil.yaml", None, "_target_"),
    ("experiment/evil.yaml", "hydra", "hydra.callbacks.evil._target_"),  # built by Hydra before genlab runs
])
def test_a_hostile_config_dir_is_refused_before_hydra_reads_it(tmp_path, name, content, key):
    victim = tmp_path / "evil.pth"
    payload = writes_file(victim)
    if content == "hydra":
        payload = "# @package _global_\n" + yaml.safe_dump({"hydra": {"callbacks": {"evil": payload}}})
    root = config_dir(tmp_path / "conf", {name: payload})
    for argv in (["--config-dir", str(root)], [f"--config-dir={root}"], ["-cd", str(root)],
                 [f"hydra.searchpath=[file://{root}]"]):
        with pytest.raises(UntrustedConfig) as err:
            check_config_dirs([*argv, "ckpt=x.ckpt"], Path(genlab.sample.__file__))
        assert f"{key}: '{WRITE_TEXT}' in the config file {root / name}" in str(err.value)
    assert not victim.exists()


def test_a_hostile_file_behind_a_symlinked_group_folder_is_found(tmp_path):
    elsewhere = config_dir(tmp_path / "elsewhere", {"evil.yaml": writes_file(tmp_path / "evil.pth")})
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "sampler").symlink_to(elsewhere)  # Hydra reads sampler/evil.yaml through it
    (tmp_path / "conf" / "loop").symlink_to(tmp_path / "conf")  # and a loop, which must not hang the check
    with pytest.raises(UntrustedConfig, match="sampler/evil.yaml"):
        check_config_dirs(["--config-dir", str(tmp_path / "conf")], Path(genlab.sample.__file__))


def test_the_cli_refuses_a_hostile_config_dir(vae, tmp_path):
    victim = tmp_path / "evil.pth"
    root = config_dir(tmp_path / "conf", {"sampler/evil.yaml": writes_file(victim)})
    result = subprocess.run([sys.executable, "-m", "genlab.sample", "--config-dir", str(root), f"ckpt={vae[2]}",
                             "sampler=evil", "n=4", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("genlab: error:") == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(root / "sampler" / "evil.yaml") in result.stderr and WRITE_TEXT in result.stderr
    assert not victim.exists() and not (tmp_path / "run").exists()


def test_the_guard_catches_a_hostile_config_dir_even_without_the_pre_check(vae, tmp_path):
    victim = tmp_path / "evil.pth"
    root = config_dir(tmp_path / "conf", {"sampler/evil.yaml": writes_file(victim)})
    cfg = compose_cfg("sample", overrides=[f"hydra.searchpath=[file://{root}]", "sampler=evil", f"ckpt={vae[2]}"],
                      output_dir=tmp_path / "run")
    with pytest.raises(SystemExit):
        entry_point(sample, ())(cfg)
    assert not victim.exists()


def test_a_legitimate_config_dir_still_works(vae, tiny_folder, tmp_path):
    root = config_dir(tmp_path / "conf", {
        "dataset/my_images.yaml": {"_target_": "genlab.data.ImageFolderDataModule", "name": "my_images",
                                   "root": str(tiny_folder), "channels": 3, "image_size": 8, "num_classes": 2,
                                   "batch_size": 8, "eval_batch_size": 8, "num_workers": 0, "val_fraction": 0.25,
                                   "test_fraction": 0.25, "seed": "${seed}", "in_memory": True},
        "sampler/my_prior.yaml": {"_target_": "genlab.samplers.prior.PriorSampler", "temperature": 0.5,
                                  "pixels": "mean", "classes": None},
    })
    check_config_dirs(["--config-dir", str(root), "dataset=my_images"], Path(genlab.sample.__file__))
    cfg = compose_cfg(overrides=[f"hydra.searchpath=[file://{root}]", "dataset=my_images", "logger=none"],
                      output_dir=tmp_path / "run")
    datamodule = instantiate(cfg.dataset, "dataset")
    datamodule.check()
    assert datamodule.split_dataset("train")[0][0].shape == (3, 8, 8)

    result = subprocess.run([sys.executable, "-m", "genlab.sample", "--config-dir", str(root), f"ckpt={vae[2]}",
                             "sampler=my_prior", "n=4", f"hydra.run.dir={tmp_path / 'samples'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "samples" / "samples.npz")["images"].shape == (4, 1, 8, 8)


# --- everything genlab ships passes ------------------------------------------------------------

GROUPS = ("model", "sampler", "callbacks", "logger", "dataset", "experiment", "hardware", "hparams_search")


def test_every_file_under_conf_passes_as_it_is():
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        check_targets(OmegaConf.to_container(OmegaConf.load(path)), str(path))


@pytest.mark.parametrize("group", GROUPS)
def test_every_shipped_option_composes_to_an_allowed_config(group):
    names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    assert names
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for name in names:
            for config_name in ("train", "eval", "sample") if group in ("sampler", "hardware") else ("train",):
                cfg = compose(config_name, overrides=[f"{group}={name}"], return_hydra_config=True)
                source = f"{config_name} {group}={name}"
                for section in cfg:  # every section genlab builds from, resolved where it can be
                    if section != "hydra" and not OmegaConf.is_missing(cfg, section):
                        check_targets(cfg[section], source, section)
                # the sweep summary; Hydra's own launchers and sweepers come from its plugins, not conf/
                check_targets(cfg.hydra.callbacks, source, "hydra.callbacks")


# --- a checkpoint of another model or size -----------------------------------------------------

def test_eval_of_a_checkpoint_with_another_size_names_both(vae, tmp_path, capsys):
    cfg = compose_cfg("eval", overrides=[f"ckpt={vae[2]}", "+model.latent_dim=32"], output_dir=tmp_path / "run")
    line = refused(evaluate, cfg, capsys, f"ckpt={vae[2]}", "genlab.models.vae.VAE",
                   "model.latent_dim: 16 in the checkpoint, 32 here", "Drop those overrides")
    assert "size mismatch" not in line


def test_sample_with_another_model_option_names_both(vae, tmp_path, capsys):
    cfg = compose_cfg("sample", overrides=[f"ckpt={vae[2]}", "+model=glow"],
                      output_dir=tmp_path / "run")
    refused(sample, cfg, capsys, "genlab.models.vae.VAE", "genlab.models.flow.Flow")


def test_ckpt_path_of_another_model_is_refused_before_anything_is_built(tmp_path, capsys):
    config, state = saved_run("glow")
    glow = save_checkpoint(tmp_path / "glow.ckpt", config, state)
    cfg = compose_cfg(overrides=["model=vae", "logger=none", f"ckpt_path={glow}"], output_dir=tmp_path / "run")
    refused(train, cfg, capsys, f"ckpt_path={glow}", "genlab.models.flow.Flow", "genlab.models.vae.VAE")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ckpt_path_of_another_size_is_refused_before_fit(vae, tmp_path, capsys):
    cfg = compose_cfg(overrides=["model=vae", "model.latent_dim=32", "logger=none", f"ckpt_path={vae[2]}"],
                      output_dir=tmp_path / "run")
    refused(train, cfg, capsys, f"ckpt_path={vae[2]}", "model.latent_dim: 16 in the checkpoint, 32 here")
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_weights_of_the_same_model_fit(vae):
    cfg = compose_cfg(overrides=["model=vae", "logger=none", "model.optimizer.lr=1e-4"])
    stored = StoredModel.of(read_checkpoint(vae[2]), "ckpt_path=x")
    stored.check_fits(instantiate(cfg.model, "model"), cfg.model)  # another lr: the weights still fit
    with pytest.raises(CheckpointError, match="do not fit"):
        other = compose_cfg(overrides=["model=vae", "logger=none", "model.channels=[16,32]"])
        stored.check_fits(instantiate(other.model, "model"), other.model)


class _RunsCode:
    """Unpickling this writes ``victim``: what a hostile "weights" file can do to a plain pickle load."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self):
        return exec, (f"open({str(self.victim)!r}, 'w').write('owned')",)


def test_a_checkpoint_cannot_point_fid_at_a_pickle_that_runs_code(vae, tmp_path, capsys):
    """genlab-eval takes callbacks.fid.weights_path from the checkpoint's run (conf/callbacks/eval.yaml)
    and torch-fidelity loads that file with weights_only=False: the file is checked as data first."""
    victim = tmp_path / "evil.pth"
    payload = tmp_path / "inception.pth"
    torch.save({"weights": _RunsCode(victim)}, payload)
    torch.load(payload, weights_only=False)  # the payload is real: a plain load runs it
    assert victim.read_text() == "owned"
    victim.unlink()

    config = copy.deepcopy(vae[0])
    _put(config, "callbacks.fid", {"extractor": "inception", "weights_path": str(payload)})
    ckpt = save_checkpoint(tmp_path / "model.ckpt", config, vae[1])
    cfg = compose_cfg("eval", overrides=[f"ckpt={ckpt}", "callbacks.fid.num_samples=8"], output_dir=tmp_path / "run")
    refused(evaluate, cfg, capsys, f"callbacks.fid.weights_path={payload}", "not a plain file")
    assert not victim.exists()
    assert not {"metrics.json"} & {p.name for p in (tmp_path / "run").iterdir()}


def test_a_config_dir_search_with_its_own_optuna_sampler_is_not_refused(tmp_path):
    """The Optuna sweeper builds its sampler from hydra.sweeper.sampler._target_ (its plugin's own
    configs name optuna.samplers classes): a search of one's own in a --config-dir may do the same.
    A function from optuna is still refused."""
    search = {"defaults": [{"override /hydra/sweeper": "optuna"}],
              "hydra": {"sweeper": {"n_trials": 2, "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 0},
                                    "params": {"model.beta": "interval(0.5, 1.0)"}}}}
    root = config_dir(tmp_path / "conf", {"hparams_search/mine.yaml": "# @package _global_\n" + yaml.safe_dump(search)})
    argv = ["--config-dir", str(root), "-m", "hparams_search=mine"]
    check_config_dirs(argv, Path(genlab.sample.__file__))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{root}]", "hparams_search=mine"],
                      return_hydra_config=True)
    sampler = hydra.utils.instantiate(cfg.hydra.sweeper.sampler)  # what the sweeper builds
    assert type(sampler).__name__ == "TPESampler"

    search["hydra"]["sweeper"]["sampler"]["_target_"] = "optuna.delete_study"
    root = config_dir(tmp_path / "conf2", {"hparams_search/mine.yaml": "# @package _global_\n" + yaml.safe_dump(search)})
    with pytest.raises(UntrustedConfig, match="optuna.delete_study"):
        check_config_dirs(["--config-dir", str(root), "-m", "hparams_search=mine"], Path(genlab.sample.__file__))


def test_a_checkpoints_config_cannot_read_the_environment_of_whoever_opens_it(monkeypatch):
    """A value of the stored config that calls oc.env is left out: genlab-eval writes the run's
    config (config_resolved.yaml, a logger's hyperparameters) and must not put secrets in it."""
    from omegaconf import OmegaConf

    from genlab.checkpoint import saved_config

    monkeypatch.setenv("GENLAB_TEST_SECRET", "hunter2")
    stored = {"genlab": {"config": {"tags": ["${oc.env:GENLAB_TEST_SECRET}", "mine"],
                                    "dataset": {"root": "${ oc.env:GENLAB_TEST_SECRET}", "name": "digits"},
                                    "objective": "val/fid_${oc.select:callbacks.fid.extractor,none}"}}}
    resolved = OmegaConf.to_container(saved_config(stored), resolve=True)
    assert "hunter2" not in str(resolved)
    assert resolved["tags"] == [None, "mine"] and resolved["dataset"]["name"] == "digits"
    assert resolved["objective"] == "val/fid_none"  # in-config lookups still work
