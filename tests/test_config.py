"""Every option of every config group composes and instantiates."""

import functools
import os
import shlex
import re

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from genlab.config import CONF_DIR, build_named, build_sampler, check_config, instantiate
from genlab.errors import ConfigError

from conftest import REPO, compose_cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "image_folder", "fsdd"} <= set(options("dataset"))
    assert {"vae", "cvae"} <= set(options("model"))
    assert {"cpu", "gpu", "ddp", "ddp_cpu", "slurm", "auto"} <= set(options("hardware"))
    assert {"wandb", "tensorboard", "csv", "none"} <= set(options("logger"))
    for group in ("sampler", "callbacks", "experiment", "paths", "hydra"):
        assert options(group), group


@pytest.mark.parametrize("name", options("dataset"))
def test_dataset_options_instantiate(name, tmp_path, tiny_folder):
    overrides = [f"dataset={name}", f"paths.data_dir={tmp_path}"]
    if name == "image_folder":
        overrides.append(f"dataset.root={tiny_folder}")
    cfg = compose_cfg(overrides=overrides, output_dir=tmp_path)
    datamodule = instantiate(cfg.dataset, "dataset")
    # what the config states for the models is what the data has
    assert datamodule.data_shape == tuple(cfg.dataset.data_shape) and datamodule.vocab_size == cfg.dataset.vocab_size


@pytest.mark.parametrize("name", options("model"))
def test_model_options_instantiate_with_their_default_sampler(name, tmp_path):
    audio = name in ("wavenet", "waveglow")  # models of [C, T] data, composed with an audio dataset
    cfg = compose_cfg(overrides=[f"model={name}", *(["dataset=fsdd", "dataset.length=256"] if audio else [])],
                      output_dir=tmp_path)
    required = [k for k, v in _model_defaults(name).items() if v == "???"]
    if required:  # a value only the user has (a second stage's first-stage checkpoint): named
        with pytest.raises(ConfigError, match=f"required config key.*model.{required[0]}"):
            check_config(cfg, ("model",))
        return
    model = instantiate(cfg.model, "model")
    if model.family == "vocoder":  # it vocodes the validation clips it stores when training starts
        model.references_filled.fill_(True)
    sampler = build_sampler(cfg.sampler, model)
    assert model.family in type(sampler).families
    assert sampler.sample(model.eval(), 2).shape == (2, *model.data_shape)


@pytest.mark.parametrize("name", options("sampler"))
def test_sampler_options_instantiate(name, tmp_path):
    cfg = compose_cfg(overrides=[f"sampler={name}"], output_dir=tmp_path)
    assert type(instantiate(cfg.sampler, "sampler")).families


@pytest.mark.parametrize("name", options("hardware"))
def test_hardware_options_compose(name, tmp_path):
    cfg = compose_cfg(overrides=[f"hardware={name}"], output_dir=tmp_path)
    assert cfg.hardware.name == name
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer_kwargs["accelerator"] in ("auto", "cpu", "gpu")
    if name in ("cpu", "ddp_cpu", "auto"):  # the ones this GPU-less machine can build
        import pytorch_lightning as pl

        trainer = pl.Trainer(**trainer_kwargs, logger=False, enable_checkpointing=False)
        assert trainer.num_devices == (2 if name == "ddp_cpu" else 1)


def test_slurm_profile_sets_up_submitit_with_one_task_per_gpu(tmp_path):
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose(
            "train",
            overrides=["hardware=slurm", "hardware.nodes=2", "hardware.gpus_per_node=4"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.trainer.strategy) == (2, 4, "ddp")
    assert launcher.signal_delay_s == cfg.hardware.signal_delay_s


@pytest.mark.parametrize("name", options("logger"))
def test_logger_options_instantiate(name, tmp_path):
    cfg = compose_cfg(overrides=[f"logger={name}"], output_dir=tmp_path)
    loggers = build_named(cfg.get("logger"), "logger")
    assert len(loggers) == (0 if name == "none" else 1)


def test_wandb_is_offline_without_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_cfg(overrides=["logger=wandb"], output_dir=tmp_path)
    assert cfg.logger.wandb.offline is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert compose_cfg(overrides=["logger=wandb"], output_dir=tmp_path).logger.wandb.offline is False


@pytest.mark.parametrize("name", options("callbacks"))
def test_callback_options_instantiate(name, tmp_path):
    cfg = compose_cfg(overrides=[f"callbacks={name}"], output_dir=tmp_path)
    callbacks = build_named(cfg.callbacks, "callbacks")
    assert len(callbacks) == len([v for v in cfg.callbacks.values() if v is not None])


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_options_compose(name, tmp_path):
    cfg = compose_cfg(overrides=[f"experiment={name}"], output_dir=tmp_path)
    assert cfg.model._target_ and cfg.dataset._target_
    assert set(cfg.tags) >= {cfg.dataset.name}


@pytest.mark.parametrize("config_name", ["train", "eval", "sample"])
def test_root_configs_compose_with_hydra_and_paths(config_name, tmp_path):
    with hydra.initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = hydra.compose(config_name, overrides=["+ckpt=x"] if config_name != "train" else [],
                            return_hydra_config=True)
    run_dir = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=False)
    assert cfg.paths.log_dir and cfg.paths.cache_dir
    assert run_dir is None or config_name in run_dir


def test_two_runs_in_the_same_second_get_different_directories(tmp_path):
    import subprocess
    import sys

    code = ("from genlab.config import _RUN_ID; print(_RUN_ID)")
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout for _ in range(2)}
    assert len(ids) == 2


def test_a_missing_required_key_is_named(tmp_path):
    cfg = compose_cfg(overrides=["dataset=image_folder"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"dataset\.root.*dataset\.root=\.\.\."):
        check_config(cfg, ("dataset",))


def test_an_unknown_group_option_lists_the_available_ones(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match=r"(?s)model/nosuchmodel.*Available options.*vae"):
        compose_cfg(overrides=["model=nosuchmodel"], output_dir=tmp_path)


def test_settings_for_a_callback_the_group_lacks_are_left_out(caplog, tmp_path):
    cfg = compose_cfg(overrides=["experiment=vae_mnist", "callbacks=minimal"], output_dir=tmp_path)
    assert "_target_" not in cfg.callbacks.fid  # the experiment tunes fid, minimal has none
    with caplog.at_level("WARNING"):
        callbacks = build_named(cfg.callbacks, "callbacks")
    assert sorted(type(cb).__name__ for cb in callbacks) == ["BitsPerDim", "LastCheckpoint", "ModelCheckpoint"]
    assert "callbacks.fid has settings but no _target_" in caplog.text


@pytest.mark.parametrize("model", ["vae", "ddpm", "pixelcnn", "gated_pixelcnn", "ar_transformer", "dcgan"])
def test_a_conditional_model_needs_a_labelled_dataset(model):
    cfg = compose_cfg(overrides=[f"model={model}", "model.conditional=true", "dataset.num_classes=0"])
    with pytest.raises(ConfigError, match="model.conditional=true needs a labelled dataset"):
        instantiate(cfg.model, "model")


# ----- model= inside an experiment ----------------------------------------------------------------
def _drop_hint(message: str) -> list[str]:
    """The keys a one-line key error says to drop: `~model.a ~model.b` -> [model.a, model.b]."""
    assert "\n" not in message
    hint = re.search(r"[Dd]rop (?:it|them) with `([^`]*)`", message)
    assert hint, message
    return [word.removeprefix("~") for word in hint.group(1).split()]


@functools.lru_cache
def _model_defaults(name: str) -> dict:
    return OmegaConf.to_container(compose_cfg(overrides=[f"model={name}"]).model)


def _shape(value) -> str:
    return "list" if isinstance(value, list) else "dict" if isinstance(value, dict) else "value"


def _build(cfg) -> None:
    check_config(cfg, ("model",))
    model = instantiate(cfg.model, "model")
    model.check_trainer(cfg.trainer)
    build_sampler(cfg.sampler, model)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_model_inside_every_experiment_builds_or_names_the_keys_to_drop(experiment, tmp_path):
    """``experiment=E model=M``: it builds, or one ConfigError line names exactly the keys E sets
    under ``model:`` that M's own config lacks or holds in another shape (a list for one value),
    with the `~model.key` that drops them, and dropping them builds (or is refused in one line that
    names a trainer, model or dataset setting the model cannot honour, e.g. trainer.gradient_clip_val
    for the GAN, dataset.data_shape for an image model in an audio experiment)."""
    tuned = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml")).get("model", {})
    built = []
    for name in options("model"):
        defaults = _model_defaults(name)
        if "???" in defaults.values():  # needs a stage-1 checkpoint: built with one in test_vqvae.py
            built.append(name)
            continue
        foreign = sorted(f"model.{k}" for k, v in tuned.items()
                         if k not in defaults or (defaults[k] is not None and _shape(v) != _shape(defaults[k])))
        cfg = compose_cfg(overrides=[f"experiment={experiment}", f"model={name}"], output_dir=tmp_path)
        if not foreign:
            try:
                _build(cfg)
            except ConfigError as refused:  # data of another kind (audio for an image model, or back),
                # or classes asked of an unconditional family
                assert re.match(r"dataset\.data_shape=\[[^]]*\] has \d axes|model\.conditional=true: model=\w+ is "
                                r"unconditional", str(refused)), str(refused)
                continue
            built.append(name)
            continue
        with pytest.raises(ConfigError) as err:
            _build(cfg)
        assert sorted(_drop_hint(str(err.value))) == foreign, (name, str(err.value))
        with open_dict(cfg):
            for key in foreign:
                del cfg.model[key.removeprefix("model.")]
        try:
            _build(cfg)
        except ConfigError as refused:  # a setting (or data: audio for an image model) it refuses, with its fix
            message = str(refused)
            assert "\n" not in message and re.match(r"(trainer|model|dataset)\.\w+", message), message
    own = OmegaConf.load(CONF_DIR / "experiment" / f"{experiment}.yaml").defaults
    assert any(f"override /model: {name}" in OmegaConf.to_yaml(own) for name in built)  # its own model builds


def test_switching_the_model_of_an_experiment_on_the_command_line_fails_in_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "genlab.train", "experiment=autoregressive_digits", "model=pixelcnn", "logger=none",
         f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("genlab: error:")]
    assert len(errors) == 1 and "model.layers" in errors[0], result.stderr[-2000:]
    assert "(model=pixelcnn, experiment=autoregressive_digits)" in errors[0]
    assert _drop_hint(errors[0]) == ["model.layers"]
    assert not (tmp_path / "run" / "checkpoints").exists()
    # with the key dropped, the pairing works: the command gets past every check
    cfg = compose_cfg(overrides=["experiment=autoregressive_digits", "model=pixelcnn", "~model.layers"],
                      output_dir=tmp_path / "ok")
    _build(cfg)


def test_a_mistyped_key_of_any_built_class_is_named(tmp_path):
    cfg = compose_cfg(overrides=["model=vae", "+model.optimizer.lrr=0.1", "+sampler.tempreature=2"],
                      output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"model\.optimizer\.lrr: not a setting of torch\.optim\.Adam.*~model\.optimizer\.lrr"):
        check_config(cfg, ("model",))
    with pytest.raises(ConfigError, match=r"sampler\.tempreature: not a setting of .*PriorSampler \(did you mean sampler\.temperature\?\).*`~sampler\.tempreature`"):
        check_config(cfg, ("sampler",))


def _readme_commands() -> list[tuple[str, list[str]]]:
    """(config name, overrides) of every genlab-train/eval/sample line in README.md's code blocks;
    a sweep's comma lists are taken at their first value (compose builds one job)."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = re.sub(r"<[^>]*>", "RUN", line)  # placeholders: outputs/train/<run>/...
        words = shlex.split(os.path.expandvars(line.split(" #")[0].strip())) if re.match(r"\s*genlab-(train|eval|sample)\b", line) else []
        if not words:
            continue
        config = {"genlab-train": "train", "genlab-eval": "eval", "genlab-sample": "sample"}[words[0]]
        overrides = [re.sub(r"^([^=\[]+)=([^,\[]+),.*$", r"\1=\2", w) for w in words[1:] if w != "-m"]
        commands.append((config, overrides))
    return commands


def test_every_readme_command_composes():
    """The commands README.md shows compose as written (a missing +, a renamed key or option fails)."""
    commands = _readme_commands()
    assert len(commands) > 20
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for config, overrides in commands:
            compose(config, overrides=overrides)  # raises, naming the override, where one does not fit


DEFAULT_EXTRACTOR_PROBE = """
import json, sys
from hydra import compose, initialize_config_dir
from genlab.config import CONF_DIR, register_resolvers
register_resolvers()
cases = {"digits": [], "mnist": [], "fashion_mnist": [], "cifar10": [], "fsdd": [], "fsdd_unlabelled": ["dataset.num_classes=0"],
         "image_folder": ["dataset.root=x"], "image_folder_grey_labelled": ["dataset.root=x", "dataset.channels=1", "dataset.num_classes=4"],
         "image_folder_grey": ["dataset.root=x", "dataset.channels=1"], "cifar10_unlabelled": ["dataset.num_classes=0"]}
out = {}
with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
    for name, extra in cases.items():
        dataset = next(d for d in ("image_folder", "fashion_mnist", "digits", "mnist", "cifar10", "fsdd") if name.startswith(d))
        cfg = compose("train", overrides=[f"dataset={dataset}", *extra])
        out[name] = cfg.callbacks.fid.extractor
print(json.dumps({"extractors": out, "imported": [m for m in ("torch", "pytorch_lightning", "torchvision") if m in sys.modules]}))
"""


def test_the_default_fid_extractor_is_the_modalitys_and_resolves_without_torch():
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", DEFAULT_EXTRACTOR_PROBE], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    # Inception for colour or unlabelled pictures; genlab's classifier for grey labelled images
    # and for audio (which Inception cannot measure), as before the modalities decided it
    assert found["extractors"] == {
        "digits": "classifier", "mnist": "classifier", "fashion_mnist": "classifier", "cifar10": "inception",
        "fsdd": "classifier", "fsdd_unlabelled": "classifier", "image_folder": "inception",
        "image_folder_grey_labelled": "classifier", "image_folder_grey": "inception", "cifar10_unlabelled": "inception",
    }
    assert found["imported"] == []


def test_each_modality_states_its_dimensions_and_an_unknown_shape_is_named():
    from genlab.modalities import modalities, modality_of_shape

    assert sorted(cls.data_dims for cls in modalities()) == [2, 3]
    assert modality_of_shape([1, 4000]).name == "audio" and modality_of_shape([3, 8, 8]).name == "image"
    with pytest.raises(ValueError, match=r"data_shape=\[1, 2, 3, 4\] is the shape of 0 modalities"):
        modality_of_shape([1, 2, 3, 4])
