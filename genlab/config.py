"""Config checks and instantiation shared by the entry points.

Everything here runs before any training, so that a bad config fails in seconds with a
message that names the key, what is wrong and the fix.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import logging
import os
import secrets
import types
import typing
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from genlab.checks import check_optimizers, check_trainer
from genlab.cluster import best_precision, data_workers, rank_log_file
from genlab.errors import ConfigError, GenlabError
from genlab.lock import hydra_subdir
from genlab.trust import check_targets

log = logging.getLogger(__name__)

# Installed from a wheel, the configs ship as genlab/conf; in a checkout (and an editable
# install) they are the repository's conf/.
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONF_DIR = _PACKAGED_CONF if _PACKAGED_CONF.is_dir() else Path(__file__).resolve().parent.parent / "conf"

# One id per process: it is the same every time the run directory is resolved in this
# process, and differs between two runs started in the same second.
_RUN_ID = f"{os.getpid()}{secrets.token_hex(2)}"


def wandb_offline() -> bool:
    """Offline unless W&B credentials exist (WANDB_MODE, when set, decides)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def _default_fid_extractor(data_shape: Any, num_classes: Any = 0) -> str:
    """callbacks.fid.extractor when the config names none: what the data's modality says
    (genlab.modalities, each importing torch only where its methods need it)."""
    from genlab.modalities import modality_of_shape

    shape = [int(d) for d in data_shape]
    return modality_of_shape(shape).default_extractor(shape, int(num_classes or 0))


def sweep_group() -> Optional[str]:
    """The sweep directory's name in a multirun job (the W&B group of the sweep's runs), else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


def optuna_direction(objective_mode: str) -> str:
    """Optuna's study direction for ``objective_mode`` (min or max)."""
    directions = {"min": "minimize", "max": "maximize"}
    if objective_mode not in directions:
        raise ConfigError(f"objective_mode={objective_mode!r}: use min or max")
    return directions[objective_mode]


def register_resolvers() -> None:
    for name, fn in {
        "genlab.run_id": lambda: _RUN_ID,
        "genlab.best_precision": best_precision,
        "genlab.data_workers": data_workers,
        "genlab.rank_log_file": rank_log_file,
        "genlab.wandb_offline": wandb_offline,
        "genlab.default_fid_extractor": _default_fid_extractor,
        "genlab.sweep_group": sweep_group,
        "genlab.optuna_direction": optuna_direction,
        "genlab.hydra_subdir": hydra_subdir,
    }.items():
        if not OmegaConf.has_resolver(name):
            # cached: a requeued job (a new process) resolves the run directory it started with
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "genlab.run_id")


register_resolvers()


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                found.append(path)
            elif not OmegaConf.is_interpolation(node, key):
                found += _missing_keys(node._get_node(key), path + ".")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            found += _missing_keys(node._get_node(i), f"{prefix}{i}.")
    return found


def check_config(cfg: DictConfig, sections: tuple[str, ...]) -> None:
    """Fail on a required key left as ??? or a value that does not resolve, or a key that the
    class to be built does not take, naming the key; then check the values (genlab.checks):
    ``trainer.*`` and the model's optimizers, when those sections are asked for."""
    for section in sections:
        if section not in cfg:
            continue
        missing = _missing_keys(cfg[section], f"{section}.")
        if missing:
            keys = ", ".join(missing)
            example = missing[0]
            raise ConfigError(
                f"required config key(s) not set: {keys}. Set them on the command line, "
                f"e.g. `{example}=...`."
            )
        try:
            OmegaConf.to_container(cfg[section], resolve=True)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or section
            raise ConfigError(f"config key '{key}' cannot be resolved: {err.msg}") from None
        if isinstance(cfg[section], DictConfig):
            check_keys(cfg[section], section)
    for key in ("seed",):
        if key in cfg and (not isinstance(cfg[key], int) or isinstance(cfg[key], bool)):
            raise ConfigError(f"config key '{key}' must be an integer, got {cfg[key]!r}")
    for key in ("test",):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r} must be true or false")
    if "trainer" in sections and "trainer" in cfg:
        check_trainer(cfg)
    if "model" in sections and isinstance(cfg.get("model"), DictConfig):
        check_optimizers(cfg.model, instantiate)


def _group_choice(key: str) -> str:
    """' (model=pixelcnn, experiment=...)': the choices behind a key, when Hydra knows them."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return ""
    choices = HydraConfig.get().runtime.choices
    named = [f"{group}={choices[group]}" for group in (key.split(".")[0], "experiment") if choices.get(group)]
    return f" ({', '.join(named)})" if named else ""


def _kind(annotation: Any) -> Optional[str]:
    """"list" or "value" for a parameter annotated with a sequence or a scalar type, else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = {_kind(a) for a in typing.get_args(annotation) if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if annotation in (int, float, str, bool):
        return "value"
    if (typing.get_origin(annotation) or annotation) in (list, tuple, collections.abc.Sequence):
        return "list"
    return None


def _foreign_keys(node: Any, key: str) -> list[tuple[str, str]]:
    """(path, why) of each key in ``node`` (and the nodes nested in it) that the constructor
    its ``_target_`` names does not take, or takes as a list where the config gives one value (or
    the reverse). Targets that take ``**kwargs`` accept any key."""
    found = []
    for child in node.keys():
        if not str(child).startswith("_") and isinstance(node._get_node(child), DictConfig):
            found += _foreign_keys(node[child], f"{key}.{child}")
    if not isinstance(node.get("_target_"), str):
        return found
    try:
        target = hydra.utils.get_object(node._target_)
        parameters = inspect.signature(target).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return found  # instantiate names what is wrong with the target itself
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return found
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # an annotation that does not evaluate: no type check
        hints = {}
    for name in node.keys():
        if str(name).startswith("_"):
            continue
        path = f"{key}.{name}"
        if name not in parameters or parameters[name].kind not in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                                   inspect.Parameter.KEYWORD_ONLY):
            close = difflib.get_close_matches(str(name), [p for p in parameters if not p.startswith("_")], n=1)
            hint = f" (did you mean {key}.{close[0]}?)" if close else ""
            found.append((path, f"not a setting of {node._target_}{hint}"))
            continue
        value = node[name]  # resolved: check_config resolves every value before this check
        given = "list" if isinstance(value, ListConfig) else None if value is None or isinstance(value, DictConfig) \
            else "value"
        wanted = _kind(hints.get(name))
        if given and wanted and given != wanted:
            found.append((path, f"{node._target_} takes "
                                + ("one value where the config gives a list" if wanted == "value"
                                   else "a list where the config gives one value")))
    return found


def check_keys(node: DictConfig, key: str) -> None:
    """Refuse keys the class to be built does not take, or takes in another shape (a key mistyped,
    or one that an experiment sets for its own model when ``model=`` picks another), naming them
    and how to drop them."""
    foreign = _foreign_keys(node, key)
    if not foreign:
        return
    paths = [path for path, _ in foreign]
    what = "; ".join(f"{path}: {why}" for path, why in foreign)
    one = len(paths) == 1
    raise ConfigError(
        f"{what}{_group_choice(key)}. An experiment sets {'it' if one else 'them'} for the {key} it was "
        f"written for, or {'it is' if one else 'they are'} mistyped: drop {'it' if one else 'them'} "
        f"with `{' '.join('~' + p for p in paths)}` on the command line."
    )


def instantiate(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate with errors that name the config key. Every object genlab builds
    from a config comes through here: each ``_target_`` in ``node`` (and in config ``kwargs``) must
    be on genlab's allow-list (``genlab.trust``), whatever the config's source."""
    check_targets(node, "the config of this command", key)
    for name, value in kwargs.items():
        check_targets(value, "the config of this command", f"{key}.{name}")
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except Exception as err:  # Hydra wraps constructor errors; unwrap genlab's own
        cause = err
        while cause.__cause__ is not None and not isinstance(cause, GenlabError):
            cause = cause.__cause__
        if isinstance(cause, GenlabError):
            raise cause from None
        raise ConfigError(f"cannot build '{key}' from its config: {err}") from err


def compatible_samplers(family: str) -> list[str]:
    """Names of the sampler options (conf/sampler/*.yaml) that serve a model family."""
    names = []
    for path in sorted((CONF_DIR / "sampler").glob("*.yaml")):
        target = OmegaConf.load(path).get("_target_")
        if target is None:
            continue
        cls = hydra.utils.get_class(target)
        if family in getattr(cls, "families", ()):
            names.append(path.stem)
    return names


def build_sampler(cfg: Optional[DictConfig], model: Any) -> Any:
    """Instantiate the sampler and refuse one that does not serve the model's family."""
    if cfg is None:
        raise ConfigError("no sampler chosen: set `sampler=NAME` "
                          f"(for this model: {', '.join(compatible_samplers(model.family))})")
    sampler = instantiate(cfg, "sampler")
    sampler.check(model, compatible_samplers(model.family))
    return sampler


def build_named(cfg: Optional[DictConfig], key: str) -> list[Any]:
    """Instantiate every entry of a dict of configs (callbacks, loggers); null entries are off.

    An entry without ``_target_`` is settings for an entry the chosen group does not have (an
    experiment tuning ``callbacks.fid`` under ``callbacks=minimal``): it is left out, and said."""
    if not cfg:
        return []
    built = []
    for name, sub in cfg.items():
        if sub is None:
            continue
        if not isinstance(sub, DictConfig) or "_target_" not in sub:
            log.warning("%s.%s has settings but no _target_ (not part of the chosen %s group): left out",
                        key, name, key)
            continue
        built.append(instantiate(sub, f"{key}.{name}"))
    return built
