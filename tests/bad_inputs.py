"""Bad inputs as a user types them, each run through a real command's ``main()`` in this process
(Hydra's composition, the run directory, genlab's checks), and what became of each.

The table behind ``test_bad_input.py::test_bad_input`` (each case a test of its own) and
``bench/bad_inputs.py`` (the count: clear errors, tracebacks, silent accepts, hangs), which
also runs against an older checkout. Nothing here trains: reaching ``Trainer.fit`` (or
``test``/``validate``) means the input was accepted, and the run stops there.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

ERROR_PREFIX = "genlab: error:"
RESULTS = {"metrics.json", "checkpoints", "samples", "samples.npz", "samples.png", "wandb"}
MODULES = {"train": "genlab.train", "eval": "genlab.evaluate", "sample": "genlab.sample"}


@dataclass(frozen=True)
class BadInput:
    id: str
    command: str  # train | eval | sample
    args: tuple[str, ...]  # command-line arguments; {name} is a path from make_fixtures
    expect: tuple[str, ...] = ()  # fragments of the one error line ({name} as in args)
    only_without_gpu: bool = False  # bad only on a machine without a GPU


def _train(id: str, *args: str, expect: tuple[str, ...] = (), **kw: bool) -> BadInput:
    return BadInput(id, "train", args, expect, **kw)


CASES: list[BadInput] = [
    # Trainer arguments: wrong type or range, unknown, or the machine lacks it
    _train("trainer_max_epochs_text", "trainer.max_epochs=abc", expect=("trainer.max_epochs='abc'", "integer")),
    _train("trainer_max_epochs_zero", "trainer.max_epochs=0", expect=("trainer.max_epochs=0", ">= 1")),
    _train("trainer_max_steps_float", "trainer.max_steps=1.5", expect=("trainer.max_steps=1.5", "integer")),
    _train("trainer_precision_bogus", "trainer.precision=bogus", expect=("trainer.precision='bogus'", "'bf16-mixed'")),
    _train("trainer_max_time_text", "trainer.max_time=abc", expect=("trainer.max_time='abc'", "DD:HH:MM:SS")),
    _train("trainer_max_time_zero", "trainer.max_time=00:00:00:00", expect=("trainer.max_time", "no time")),
    _train("trainer_max_time_unit", "+trainer.max_time.fortnights=1", expect=("trainer.max_time", "hours: 12")),
    _train("trainer_max_time_number", "trainer.max_time=3600", expect=("trainer.max_time=3600", "DD:HH:MM:SS", "quote")),
    _train("trainer_limit_train_negative", "trainer.limit_train_batches=-1",
           expect=("trainer.limit_train_batches=-1", "fraction")),
    _train("trainer_limit_val_above_one", "trainer.limit_val_batches=1.5", expect=("trainer.limit_val_batches=1.5",)),
    _train("trainer_limit_test_text", "trainer.limit_test_batches=abc", expect=("trainer.limit_test_batches='abc'",)),
    _train("trainer_check_val_zero", "trainer.check_val_every_n_epoch=0",
           expect=("trainer.check_val_every_n_epoch=0", ">= 1")),
    _train("trainer_log_every_zero", "trainer.log_every_n_steps=0", expect=("trainer.log_every_n_steps=0",)),
    _train("trainer_accumulate_zero", "trainer.accumulate_grad_batches=0",
           expect=("trainer.accumulate_grad_batches=0", ">= 1")),
    _train("trainer_clip_negative", "trainer.gradient_clip_val=-1", expect=("trainer.gradient_clip_val=-1", ">= 0")),
    _train("trainer_clip_text", "trainer.gradient_clip_val=abc", expect=("trainer.gradient_clip_val='abc'",)),
    _train("trainer_devices_zero", "hardware=cpu", "trainer.devices=0", expect=("trainer.devices=0", "int > 0")),
    _train("trainer_devices_beyond_cpus", "hardware=cpu", "trainer.devices=4096",
           expect=("trainer.devices=4096", "CPUs")),
    _train("trainer_num_nodes_zero", "+trainer.num_nodes=0", expect=("trainer.num_nodes=0", ">= 1")),
    _train("trainer_key_not_in_config", "trainer.num_nodes=2", expect=("+trainer.num_nodes=2",)),
    _train("trainer_accelerator_bogus", "trainer.accelerator=bogus", expect=("trainer.accelerator='bogus'", "cpu")),
    _train("trainer_strategy_bogus", "+trainer.strategy=bogus", expect=("trainer.strategy='bogus'", "strategy")),
    _train("trainer_deterministic_text", "trainer.deterministic=maybe", expect=("trainer.deterministic='maybe'",)),
    _train("trainer_fast_dev_run_negative", "+trainer.fast_dev_run=-1", expect=("trainer.fast_dev_run=-1",)),
    _train("trainer_misspelt_key", "+trainer.max_epoch=3", expect=("trainer.max_epoch ", "trainer.max_epochs?")),
    _train("trainer_key_genlab_sets", "+trainer.logger=false", expect=("trainer.logger", "logger=")),
    _train("hardware_gpu_without_gpu", "hardware=gpu", expect=("hardware=gpu", "hardware=cpu", "hardware=auto"),
           only_without_gpu=True),
    # optimizers and schedulers: torch's verdict at check time, naming the key
    _train("optimizer_lr_negative", "model.optimizer.lr=-1", expect=("model.optimizer.lr=-1", "> 0")),
    _train("optimizer_lr_text", "model.optimizer.lr=abc", expect=("model.optimizer.lr='abc'",)),
    _train("optimizer_weight_decay_negative", "+model.optimizer.weight_decay=-0.1",
           expect=("model.optimizer.weight_decay=-0.1", ">= 0")),
    _train("optimizer_betas_out_of_range", "+model.optimizer.betas=[1.5,0.9]",
           expect=("model.optimizer.betas=[1.5, 0.9]", "[0, 1)")),
    _train("gan_d_optimizer_eps_negative", "model=dcgan", "objective=val/fid_classifier",
           "model.d_optimizer={{_target_:torch.optim.Adam,_partial_:true,eps:-1}}", expect=("model.d_optimizer.eps=-1",)),
    _train("scheduler_total_steps_negative",
           "model.scheduler={{_target_:torch.optim.lr_scheduler.OneCycleLR,_partial_:true,max_lr:0.01,total_steps:-1}}",
           expect=("model.scheduler", "OneCycleLR", "total_steps")),
    # sizes and counts of the model families
    _train("vae_latent_dim_zero", "model.latent_dim=0", expect=("model.latent_dim=0", ">= 1")),
    _train("vae_channels_empty", "model.channels=[]", expect=("model.channels=[]", "non-empty")),
    _train("vae_channels_zero_entry", "model.channels=[0,64]", expect=("model.channels=[0, 64]",)),
    _train("vae_beta_negative", "model.beta=-1", expect=("model.beta=-1", ">= 0")),
    _train("ddpm_channels_zero", "model=ddpm", "model.channels=0", expect=("model.channels=0",)),
    _train("ddpm_channel_mult_empty", "model=ddpm", "model.channel_mult=[]", expect=("model.channel_mult=[]",)),
    _train("ddpm_timesteps_text", "model=ddpm", "model.timesteps=abc", expect=("model.timesteps='abc'", ">= 2")),
    _train("ddpm_dropout_above_one", "model=ddpm", "model.dropout=1.5", expect=("model.dropout=1.5", "[0, 1)")),
    _train("glow_steps_zero", "model=glow", "model.steps=0", expect=("model.steps=0",)),
    _train("pixelcnn_kernel_text", "model=pixelcnn", "model.kernel_size=abc", expect=("model.kernel_size='abc'",)),
    _train("gated_pixelcnn_layers_zero", "model=gated_pixelcnn", "model.layers=0", expect=("model.layers=0",)),
    _train("ar_transformer_heads_zero", "model=ar_transformer", "model.heads=0", expect=("model.heads=0",)),
    _train("dcgan_latent_dim_zero", "model=dcgan", "objective=val/fid_classifier", "model.latent_dim=0",
           expect=("model.latent_dim=0",)),
    # data
    _train("dataset_batch_size_zero", "dataset.batch_size=0", expect=("dataset.batch_size=0",)),
    _train("dataset_eval_batch_size_negative", "dataset.eval_batch_size=-1", expect=("dataset.eval_batch_size=-1",)),
    _train("dataset_num_workers_1000", "dataset.num_workers=1000", expect=("dataset.num_workers=1000", "CPUs")),
    _train("image_folder_file_loop", "dataset=image_folder", "callbacks.fid.extractor=classifier", "dataset.root={loop_file}",
           expect=("{loop_file}/a/x.png is a symbolic link loop",)),
    _train("image_folder_link_to_parent", "dataset=image_folder", "callbacks.fid.extractor=classifier", "dataset.root={loop_parent}",
           expect=("{loop_parent}/a/up is a symbolic link loop",)),
    _train("image_folder_root_loop", "dataset=image_folder", "callbacks.fid.extractor=classifier", "dataset.root={loop_root}",
           expect=("dataset.root={loop_root}", "leads nowhere")),
    _train("image_folder_float_pixels", "dataset=image_folder", "callbacks.fid.extractor=classifier", "dataset.root={float_folder}",
           expect=("{float_folder}/a/0.tif", "floating-point")),
    # callbacks: sizes and counts
    _train("fid_num_samples_zero", "callbacks.fid.num_samples=0", expect=("callbacks.fid.num_samples=0", ">= 2")),
    _train("bpd_chunk_size_zero", "callbacks.bpd.chunk_size=0", expect=("callbacks.bpd.chunk_size=0",)),
    _train("bpd_max_examples_negative", "callbacks.bpd.max_examples=-1", expect=("callbacks.bpd.max_examples=-1",)),
    _train("sample_grid_n_zero", "callbacks.samples.n=0", expect=("callbacks.samples.n=0",)),
    _train("ema_decay_above_one", "callbacks.ema.decay=2", expect=("callbacks.ema.decay=2", "[0, 1)")),
    # top-level keys and what Hydra reads before genlab runs
    _train("seed_float", "seed=1.5", expect=("seed", "1.5")),
    _train("test_flag_text", "test=maybe", expect=("test='maybe'", "true or false")),
    _train("config_dir_yaml_error", "--config-dir", "{bad_conf}", "model=broken",
           expect=("{bad_conf}/model/broken.yaml line 4", "YAML")),
    _train("run_dir_below_a_file", "hydra.run.dir={a_file}/run", expect=("{a_file} is a file", "hydra.run.dir")),
    _train("log_dir_is_a_file", "paths.log_dir={a_file}", expect=("{a_file} is a file", "paths.log_dir")),
    _train("unknown_option", "model=nosuchmodel", expect=("model/nosuchmodel", "vae")),
    _train("override_does_not_parse", "trainer.max_epochs=[", expect=("'trainer.max_epochs=['",)),
    # genlab-sample's own arguments
    BadInput("sample_classes_empty", "sample", ("ckpt={cvae_ckpt}", "classes=[]"), ("classes=[]", "non-empty")),
    BadInput("sample_classes_out_of_range", "sample", ("ckpt={cvae_ckpt}", "classes=[3,99]"),
             ("classes=[3, 99]", "0..9")),
    BadInput("sample_classes_negative", "sample", ("ckpt={cvae_ckpt}", "classes=[-1]"), ("classes=[-1]",)),
    BadInput("sample_classes_text", "sample", ("ckpt={cvae_ckpt}", "classes=[a]"), ("classes=['a']",)),
    BadInput("sample_classes_not_a_list", "sample", ("ckpt={cvae_ckpt}", "classes=abc"), ("classes='abc'",)),
    BadInput("sample_classes_unconditional", "sample", ("ckpt={vae_ckpt}", "classes=[1]"), ("not conditional",)),
    BadInput("sample_n_negative", "sample", ("ckpt={vae_ckpt}", "n=-5"), ("n=-5", "positive")),
    BadInput("sample_n_zero", "sample", ("ckpt={vae_ckpt}", "n=0"), ("n=0",)),
    BadInput("sample_nrow_zero", "sample", ("ckpt={vae_ckpt}", "nrow=0"), ("nrow=0",)),
    BadInput("sample_interpolate_steps_one", "sample", ("ckpt={vae_ckpt}", "interpolate=1", "interpolate_steps=1"),
             ("interpolate_steps=1",)),
    BadInput("sample_hardware_gpu_without_gpu", "sample", ("ckpt={vae_ckpt}", "hardware=gpu"),
             ("hardware=gpu", "hardware=cpu"), only_without_gpu=True),
    # genlab-eval
    BadInput("eval_limit_test_text", "eval", ("ckpt={vae_ckpt}", "trainer.limit_test_batches=abc"),
             ("trainer.limit_test_batches='abc'",)),
    BadInput("eval_split_unknown", "eval", ("ckpt={vae_ckpt}", "split=train"), ("split='train'",)),
]


# ------------------------------------------------------------------------- fixtures


def make_fixtures(root: Path) -> dict[str, str]:
    """What the cases point at: checkpoints, looping and odd image folders, a broken config
    file, a plain file. Uses only what every genlab checkout has."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    paths = {"cvae_ckpt": str(_checkpoint(root / "cvae.ckpt", "cvae")),
             "vae_ckpt": str(_checkpoint(root / "vae.ckpt", "vae"))}

    def folder(name: str) -> Path:
        path = root / name
        (path / "a").mkdir(parents=True)
        for i in range(12):
            Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(path / "a" / f"{i}.png")
        paths[name] = str(path)
        return path

    loop_file = folder("loop_file")
    os.symlink(loop_file / "a" / "x.png", loop_file / "a" / "x.png")  # a link to itself
    loop_parent = folder("loop_parent")
    os.symlink(loop_parent, loop_parent / "a" / "up")  # a class folder holding a link to the root
    os.symlink(root / "loop_root", root / "loop_root")
    paths["loop_root"] = str(root / "loop_root")
    floats = root / "float_folder" / "a"
    floats.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(np.full((8, 8), i / 12, np.float32)).save(floats / f"{i}.tif")
    paths["float_folder"] = str(floats.parent)

    (root / "bad_conf" / "model").mkdir(parents=True)
    (root / "bad_conf" / "model" / "broken.yaml").write_text("defaults:\n  - vae\nchannels: [16, 32\nlatent_dim: 4\n")
    paths["bad_conf"] = str(root / "bad_conf")
    (root / "a_file").write_text("not a folder\n")
    paths["a_file"] = str(root / "a_file")
    return paths


def _checkpoint(path: Path, model: str) -> Path:
    """An untrained model saved the way genlab-train saves one (the config and the weights)."""
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from genlab.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "model.latent_dim=4", "model.channels=[8]",
                                          f"paths.output_dir={path.parent}"])
    net = instantiate(cfg.model)
    config = OmegaConf.to_container(cfg, resolve=True)
    torch.save({"state_dict": net.state_dict(),
                "genlab": {"version": "0", "family": net.family, "config": config, "metrics": {}}}, path)
    return path


# ------------------------------------------------------------------------- running one


@dataclass
class Outcome:
    kind: str  # clear | traceback | unclear | accepted | hung
    message: str  # the genlab: error: line (without the prefix), or what happened
    stderr: str
    leftovers: list[str]  # files that look like results
    failed_records: int  # FAILED.json files written


class _WorkStarted(BaseException):
    """Raised where training or evaluation would start: the input got through."""


@contextlib.contextmanager
def _stop_at_work() -> Iterator[None]:
    import pytorch_lightning as pl

    saved = {name: getattr(pl.Trainer, name) for name in ("fit", "validate", "test")}

    def started(*args: object, **kwargs: object) -> None:
        raise _WorkStarted()

    try:
        for name in saved:
            setattr(pl.Trainer, name, started)
        yield
    finally:
        for name, fn in saved.items():
            setattr(pl.Trainer, name, fn)


class _Hung(BaseException):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Hung()


def run(case: BadInput, fixtures: dict[str, str], log_dir: Path, timeout_s: int = 120) -> Outcome:
    """Run the case's command in this process, as `genlab-<command> <args>` would."""
    args = [a.format(**fixtures) for a in case.args]
    flags = [a for i, a in enumerate(args) if a.startswith("--") or (i and args[i - 1].startswith("--"))]
    overrides = [a for a in args if a not in flags]
    module = importlib.import_module(MODULES[case.command])
    argv = sys.argv
    sys.argv = [f"genlab-{case.command}", *flags, "logger=none" if case.command == "train" else "seed=0",
                f"paths.log_dir={log_dir}", *overrides]
    stderr = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout_s)
    try:
        with _stop_at_work(), contextlib.redirect_stderr(stderr):
            module.main()
        kind, code = "accepted", None
    except _WorkStarted:
        kind, code = "accepted", None
    except _Hung:
        kind, code = "hung", None
    except SystemExit as exit_:
        kind, code = "exit", exit_.code
    except Exception as err:  # raised through the command: a stack trace for the user
        kind, code = "traceback", None
        stderr.write(f"Traceback (most recent call last): {type(err).__name__}: {err}\n")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        sys.argv = argv
    text = stderr.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    message = errors[0][len(ERROR_PREFIX):].strip() if errors else (lines[-1] if lines else kind)
    if kind == "exit":
        if "Traceback" in text:
            kind = "traceback"
        elif code == 1 and len(errors) == 1 and len(lines) == 1:
            kind = "clear"
        else:
            kind = "unclear"
    found = list(log_dir.rglob("*")) if log_dir.exists() else []
    return Outcome(kind, message, text, sorted(str(p) for p in found if p.name in RESULTS),
                   sum(p.name == "FAILED.json" for p in found))
