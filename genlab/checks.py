"""Value checks that run before any work: sizes and counts, the Trainer's arguments, optimizers.

Each failure is one ConfigError line that names the key, the value, what is accepted and, where
there is one, the fix. Where Lightning or torch can judge a value (a duration, a device list, an
optimizer's hyper-parameters) it is asked, by building what it would build, and its verdict is
reworded; the types come from the Trainer's own signature.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Literal, Union

from omegaconf import DictConfig, OmegaConf

from genlab.errors import ConfigError

# ------------------------------------------------------------------------- sizes and counts


def require_positive(prefix: str, **sizes: Any) -> None:
    """Refuse a size or count (channels, layers, latent dims, samples, ...) that is not an
    integer >= 1; a list of sizes must be non-empty with every entry >= 1. ``prefix`` is the
    config node the values come from (``model``, ``callbacks.bpd``)."""
    for name, value in sizes.items():
        key = f"{prefix}.{name}"
        if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
            entries = list(value)
            if not entries or not all(is_int(v) and v >= 1 for v in entries):
                raise ConfigError(f"{key}={entries} must be a non-empty list of integers >= 1 (sizes)")
        elif not is_int(value) or value < 1:
            raise ConfigError(f"{key}={value!r} must be an integer >= 1 (a size or count): set {key}=1 or more")


def require_fraction(prefix: str, **values: Any) -> None:
    """Refuse a probability or rate (dropout, decay) outside [0, 1)."""
    for name, value in values.items():
        if not _is_number(value) or not 0 <= value < 1:
            raise ConfigError(f"{prefix}.{name}={value!r} must be a number in [0, 1)")


def cpus_available() -> int:
    """The CPUs this process may run on (a cluster job's share, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def is_int(value: Any) -> bool:
    """An integer, and not a bool (YAML's true is no size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (Lightning's and torch's often span several)."""
    return " ".join(str(err).split())


# ------------------------------------------------------------------------- Trainer arguments

#: Trainer arguments genlab passes itself (build_trainer); the config must not set them
SET_BY_GENLAB = {
    "callbacks": "use the callbacks group (callbacks.NAME=...)",
    "logger": "use the logger group (logger=csv|wandb|tensorboard|none)",
    "default_root_dir": "it is the run directory (hydra.run.dir)",
    "plugins": "genlab installs its own checkpoint writer",
}


def _int_rule(least: int, minus_one: bool = False, none: bool = False) -> tuple[Callable[[Any], bool], str]:
    """Integers >= least (and -1 = no limit, null where allowed)."""

    def ok(v: Any) -> bool:
        return (none and v is None) or (is_int(v) and (v >= least or (minus_one and v == -1)))

    text = f"an integer >= {least}" + (" or -1 (no limit)" if minus_one else "") + (" or null" if none else "")
    return ok, text


def _batches_rule(zero: bool) -> tuple[Callable[[Any], bool], str]:
    """limit_*_batches: a number of batches, or a fraction of the split (a float)."""
    least = 0 if zero else 1

    def ok(v: Any) -> bool:
        if v is None or is_int(v):
            return v is None or v >= least
        return isinstance(v, float) and (0.0 <= v <= 1.0) and (zero or v > 0)

    frac = "[0.0, 1.0]" if zero else "(0.0, 1.0]"
    return ok, f"an integer >= {least} (batches) or a float in {frac} (a fraction of the split)"


#: value ranges of the Trainer arguments genlab's configs set (types come from the signature)
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # 0 epochs or steps trains nothing: genlab-eval measures a checkpoint without training
    "max_epochs": _int_rule(1, minus_one=True, none=True),
    "max_steps": _int_rule(1, minus_one=True),
    "min_epochs": _int_rule(0, none=True),
    "min_steps": _int_rule(0, none=True),
    "check_val_every_n_epoch": _int_rule(1, none=True),
    "log_every_n_steps": _int_rule(1, none=True),
    "accumulate_grad_batches": _int_rule(1),
    "num_nodes": _int_rule(1),
    "num_sanity_val_steps": _int_rule(0, minus_one=True, none=True),
    "reload_dataloaders_every_n_epochs": _int_rule(0),
    "limit_train_batches": _batches_rule(zero=False),
    "limit_val_batches": _batches_rule(zero=True),
    "limit_test_batches": _batches_rule(zero=True),
    "limit_predict_batches": _batches_rule(zero=True),
    "overfit_batches": _batches_rule(zero=True),
    "fast_dev_run": (lambda v: isinstance(v, bool) or v >= 0, "true, false or a number of batches >= 0"),
    "gradient_clip_val": (lambda v: v is None or v >= 0, "a number >= 0 or null (no clipping)"),
    "gradient_clip_algorithm": (lambda v: v in (None, "norm", "value"), "norm, value or null"),
}


@functools.lru_cache(maxsize=1)
def _trainer_hints() -> dict[str, Any]:
    import pytorch_lightning as pl

    hints = typing.get_type_hints(pl.Trainer.__init__)
    return {name: hints.get(name, Any) for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self"}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a value read from YAML fits a type hint (classes it cannot be an instance of: no)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Union:
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, Sequence, Iterable):
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin in (dict, Mapping):
        return isinstance(value, dict) and all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    return False  # an object (a Strategy, a timedelta): the config cannot hold one


def _describe(hint: Any) -> str:
    """A type hint in words, leaving out what a config cannot hold."""
    words: list[str] = []
    literals: list[Any] = []

    def walk(h: Any) -> None:
        origin, args = typing.get_origin(h), typing.get_args(h)
        if origin is Union:
            for a in args:
                walk(a)
        elif origin is Literal:
            literals.extend(args)
        elif h is type(None):
            words.append("null")
        elif h in (bool, int, float, str):
            words.append({bool: "true or false", int: "an integer", float: "a number", str: "a string"}[h])
        elif origin in (list, Sequence):
            words.append("a list of integers" if args and args[0] is int else "a list")
        elif origin in (dict, Mapping):
            words.append("a mapping such as {hours: 2}")

    walk(hint)
    if literals:
        words.insert(0, "one of " + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in literals))
    null_last = sorted(dict.fromkeys(words), key=lambda w: w == "null")
    return ", ".join(null_last[:-1]) + (" or " if len(null_last) > 1 else "") + null_last[-1]


def check_trainer(cfg: DictConfig) -> None:
    """Check ``cfg.trainer`` key by key before Lightning sees it: known names, the types of
    the Trainer's signature, the ranges genlab relies on, the duration, the hardware."""
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(trainer, dict)
    hints = _trainer_hints()
    for key, value in trainer.items():
        if key in SET_BY_GENLAB:
            raise ConfigError(f"trainer.{key} is set by genlab, not by the config: {SET_BY_GENLAB[key]}")
        if key not in hints:
            near = difflib.get_close_matches(key, list(hints), n=1)
            hint = f"did you mean trainer.{near[0]}? " if near else ""
            raise ConfigError(
                f"trainer.{key} is not an argument of Lightning's Trainer: {hint}Remove it or correct the name."
            )
        if key != "max_time" and not _matches(value, hints[key]):  # max_time: Lightning's Timer judges
            raise ConfigError(f"trainer.{key}={value!r} is not valid: use {_describe(hints[key])}")
        if key in RANGES and not RANGES[key][0](value):
            raise ConfigError(f"trainer.{key}={value!r} is not valid: use {RANGES[key][1]}")
    _check_max_time(trainer.get("max_time"))
    accelerator = _check_accelerator(trainer.get("accelerator", "auto"), cfg)
    _check_devices(accelerator, trainer.get("devices", "auto"))
    _check_combination(trainer)


def _check_combination(trainer: dict[str, Any]) -> None:
    """Lightning's accelerator connector (what the Trainer builds first) judges how the
    hardware settings combine, e.g. precision=16-mixed on a CPU or an unknown strategy."""
    from pytorch_lightning.trainer.connectors.accelerator_connector import _AcceleratorConnector

    names = [n for n in inspect.signature(_AcceleratorConnector).parameters if n in trainer]
    try:
        _AcceleratorConnector(**{n: trainer[n] for n in names})
    except Exception as err:  # MisconfigurationException, ValueError, TypeError, ...
        given = ", ".join(f"trainer.{n}={trainer[n]!r}" for n in names)
        raise ConfigError(f"Lightning refuses {given}: {one_line(err)}") from None


def _check_max_time(value: Any) -> None:
    """Parsed by Lightning's own Timer (what the Trainer builds from max_time); must be > 0."""
    if value is None:
        return
    from pytorch_lightning.callbacks import Timer

    accepted = 'a duration "DD:HH:MM:SS" (e.g. "00:12:00:00" for 12 hours), a mapping such as {hours: 12}, or null'
    if _is_number(value):  # a YAML file reads a bare 1:00:00:00 as a number (base 60)
        raise ConfigError(f"trainer.max_time={value!r} is a number, not a duration: use {accepted} "
                          "(in a YAML file quote the duration: a bare 1:00:00:00 is read as a number)")
    try:
        seconds = Timer(duration=value)._duration
    except Exception as err:  # Lightning: MisconfigurationException; timedelta: TypeError
        raise ConfigError(f"trainer.max_time={value!r} is not a duration ({one_line(err)}): use {accepted}") from None
    if not seconds or seconds <= 0:
        raise ConfigError(f"trainer.max_time={value!r} is no time at all: use {accepted}")


def _hardware(cfg: DictConfig) -> str:
    hardware = cfg.get("hardware")
    name = hardware.get("name") if isinstance(hardware, DictConfig) else None
    return f"hardware={name}" if name else "the hardware config"


def _check_accelerator(name: Any, cfg: DictConfig) -> str:
    """The accelerator Lightning will use ("auto" resolved); refuse one this machine lacks."""
    from lightning_fabric.utilities.device_parser import _select_auto_accelerator
    from pytorch_lightning.accelerators import AcceleratorRegistry

    if not isinstance(name, str):
        return "cpu"  # an Accelerator object (not from a config): Lightning's to judge
    known = ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]
    if name not in known:
        raise ConfigError(
            f"trainer.accelerator={name!r} is not an accelerator: use one of {', '.join(known)} "
            "(or pick a hardware option: hardware=cpu, gpu, auto, ddp, ...)"
        )
    if name == "auto":
        return _select_auto_accelerator()
    backends = ["cuda", "mps"] if name == "gpu" else [name]
    available = [b for b in backends if AcceleratorRegistry[b]["accelerator"].is_available()]
    if not available:
        raise ConfigError(
            f"{_hardware(cfg)} needs a {name.upper() if name != 'gpu' else 'GPU'} (trainer.accelerator={name}), "
            "but torch finds none on this machine: use hardware=cpu, or hardware=auto (a GPU where there is one, "
            "else the CPU)"
        )
    return available[0]


def _check_devices(accelerator: str, devices: Any) -> None:
    """Parsed by the accelerator's own device parser; CPU processes capped at the CPUs."""
    from pytorch_lightning.accelerators import AcceleratorRegistry

    if devices == "auto" or accelerator not in AcceleratorRegistry:
        return
    try:
        count = AcceleratorRegistry[accelerator]["accelerator"].parse_devices(devices)
    except Exception as err:  # TypeError, ValueError, MisconfigurationException
        raise ConfigError(
            f"trainer.devices={devices!r} is not valid for the {accelerator} accelerator: {one_line(err)}"
        ) from None
    if accelerator == "cpu" and isinstance(count, int) and count > cpus_available():
        raise ConfigError(
            f"trainer.devices={devices} starts {count} processes on the {cpus_available()} CPUs this "
            f"process may use: set trainer.devices to at most {cpus_available()}"
        )


# ------------------------------------------------------------------------- optimizers

#: what torch's optimizers accept for their common settings, for the message
OPTIMIZER_VALUES = {
    "lr": "a number > 0",
    "weight_decay": "a number >= 0",
    "eps": "a number >= 0",
    "momentum": "a number >= 0",
    "betas": "two numbers in [0, 1), e.g. [0.9, 0.999]",
}


def check_optimizers(model_cfg: DictConfig, build: Callable[[DictConfig, str], Any]) -> None:
    """Build each optimizer and learning-rate scheduler of ``model_cfg`` (its ``_partial_``
    entries) on a stand-in parameter, as the model will, so that torch's verdict on their
    settings comes before training, naming the key. ``build`` instantiates a config node."""
    import torch
    from torch.optim.lr_scheduler import LRScheduler

    dummy = [torch.nn.Parameter(torch.zeros(1))]
    for name, node in model_cfg.items():
        if not isinstance(node, DictConfig) or "_target_" not in node or not node.get("_partial_"):
            continue
        factory = build(node, f"model.{name}")
        cls = getattr(factory, "func", None)
        if not isinstance(cls, type):
            continue
        if issubclass(cls, torch.optim.Optimizer):
            lr = node.get("lr")
            if _is_number(lr) and lr <= 0:
                raise ConfigError(f"model.{name}.lr={lr} is not valid: the learning rate must be a number > 0")
            _probe(name, node, cls, build, lambda f: f(params=dummy))
        elif issubclass(cls, LRScheduler):
            _probe(name, node, cls, build, lambda f: f(optimizer=torch.optim.SGD(dummy, lr=0.1)))


def _probe(name: str, node: DictConfig, cls: type, build: Callable[[DictConfig, str], Any],
           construct: Callable[[Any], Any]) -> None:
    """Construct from ``node``; on failure find the one setting whose removal makes it work."""
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    try:
        construct(build(node, f"model.{name}"))
        return
    except Exception as err:  # torch raises ValueError, TypeError, ...
        failure = err
    for key in [k for k in node if not str(k).startswith("_")]:
        trial = OmegaConf.masked_copy(node, [k for k in node if k != key])
        try:
            construct(build(trial, f"model.{name}"))
        except Exception:
            continue
        accepted = OPTIMIZER_VALUES.get(str(key), "a value it accepts")
        raise ConfigError(
            f"model.{name}.{key}={node[key]!r} is refused by {cls.__module__}.{cls.__name__} "
            f"({one_line(failure)}): use {accepted}"
        )
    raise ConfigError(f"model.{name} cannot build {cls.__module__}.{cls.__name__}: {one_line(failure)}")
