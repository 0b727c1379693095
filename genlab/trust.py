"""Checkpoints and configs are data: what a config may build.

A ``_target_`` anywhere in a config (nested, in a list, in Hydra's ``_args_``, with or without
``_partial_``) must name a *class* that is genlab's own model, net, sampler, datamodule or
callback, or one of the library families genlab's configs use: torch optimizers and LR
schedulers, torch.nn modules, Lightning callbacks and loggers, Hydra plugins, Optuna samplers
(an hparams_search sweep). Anything else (a
function such as ``pathlib.Path.write_text``, a class from another module) is refused with a
message that names the key, the target and where it came from.

The check is by module prefix first, so that a target outside these families is refused
before anything is imported (importing a module runs its code); only then is the target
resolved and checked to be a class that subclasses the family's base. Every instantiation goes
through ``genlab.config.instantiate``, which applies this check; the places that read stored
configs (checkpoints, a run directory's ``config_resolved.yaml``, ``--config-dir`` files) check
them again as they read them, to name the file.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from genlab.errors import UntrustedConfig

#: module prefix -> the bases (dotted names, imported only when a target of that family is
#: checked) a target's class must derive from. The prefix is checked on the target string (before
#: any import) and again on the module that really defines the class (a re-export from another
#: module, e.g. ``genlab.config.Path``, is refused).
FAMILIES: dict[str, tuple[str, ...]] = {
    "genlab": (
        "torch.nn.Module",  # models (LightningModule) and nets
        "pytorch_lightning.LightningDataModule",
        "genlab.samplers.base.Sampler",
        "pytorch_lightning.Callback",
        "pytorch_lightning.loggers.Logger",
        "hydra.experimental.callback.Callback",  # the sweep summary (conf/hydra)
    ),
    "torch.optim": ("torch.optim.Optimizer", "torch.optim.lr_scheduler.LRScheduler"),
    "torch.nn": ("torch.nn.Module",),
    "pytorch_lightning.callbacks": ("pytorch_lightning.Callback",),
    "pytorch_lightning.loggers": ("pytorch_lightning.loggers.Logger",),
    # launchers and sweepers a --config-dir may configure (hydra/launcher/*.yaml)
    "hydra_plugins": ("hydra.plugins.plugin.Plugin",),
    # the Optuna sweeper's sampler (hydra.sweeper.sampler._target_, as its plugin's own configs set it)
    "optuna.samplers": ("optuna.samplers.BaseSampler",),
}

#: genlab classes conf/ uses that derive from none of the bases above (checked by exact name)
EXTRA: frozenset[str] = frozenset({"genlab.models.diffusion.LinearWarmup"})

#: Module prefixes (comma-separated) of the user's own classes that configs may build as well, e.g.
#: ``GENLAB_TRUSTED_MODULES=mylab.models,mylab.callbacks``; their classes must derive from the same
#: bases as genlab's own. An environment variable, never a config key: a config cannot trust itself.
TRUST_ENV = "GENLAB_TRUSTED_MODULES"

_ALLOWED = ("genlab's own models, nets, samplers, datamodules and callbacks, torch optimizers and "
            "LR schedulers, torch.nn modules, Lightning callbacks and loggers, Hydra plugins and Optuna samplers")


def _families() -> dict[str, tuple[str, ...]]:
    trusted = (prefix.strip() for prefix in os.environ.get(TRUST_ENV, "").split(","))
    return {**FAMILIES, **{prefix: FAMILIES["genlab"] for prefix in trusted if prefix}}


def _family(dotted: str, families: dict[str, tuple[str, ...]]) -> Optional[str]:
    return next((prefix for prefix in families if dotted == prefix or dotted.startswith(prefix + ".")), None)


def refusal(target: str) -> Optional[str]:
    """Why ``target`` may not be built (a short clause), or None when it may."""
    return _refusal(target, tuple(_families().items()))


@functools.lru_cache(maxsize=None)
def _refusal(target: str, family_items: tuple[tuple[str, tuple[str, ...]], ...]) -> Optional[str]:
    families = dict(family_items)
    if "${" in target:
        return "an interpolation, not a literal class path"
    if _family(target, families) is None:
        return f"module {target.split('.')[0]!r} is not one genlab builds from"
    if any(not part or part.startswith("_") for part in target.split(".")):
        return "a private or special name"
    from hydra._internal.utils import _locate  # what hydra.utils.instantiate itself uses

    try:
        obj = _locate(target)
    except Exception as err:  # noqa: BLE001 - any import failure means: cannot be built
        return f"it cannot be imported ({err.__cause__ or err!r})"
    if not inspect.isclass(obj):
        return f"it is a {type(obj).__name__}, not a class"
    family = _family(obj.__module__, families)
    if family is None:
        return f"it is defined in {obj.__module__}, outside the allowed modules"
    if target in EXTRA and family == "genlab":
        return None
    if not issubclass(obj, tuple(_locate(base) for base in families[family])):
        return f"a {family} class that derives from none of {', '.join(families[family])}"
    return None


def _targets(tree: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(key, value) of every ``_target_`` in a plain dict/list tree, with dotted keys."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from _targets(value, path)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _targets(value, f"{prefix}.{i}" if prefix else str(i))


def _resolved(node: Any) -> Any:
    """A DictConfig/ListConfig as plain data, each value resolved where it can be (an
    interpolation can create a node with a ``_target_``: ``${oc.create:...}``) and left as written
    where it cannot (the caller reports what does not resolve)."""
    if not isinstance(node, (DictConfig, ListConfig)):
        return node
    keys = list(node.keys()) if isinstance(node, DictConfig) else range(len(node))
    values = []
    for key in keys:
        try:
            values.append(_resolved(node[key]))
        except Exception:  # noqa: BLE001 - a resolver may raise anything; the raw value is checked
            values.append(OmegaConf.to_container(node, resolve=False)[key])
    return dict(zip(keys, values)) if isinstance(node, DictConfig) else values


def check_targets(tree: Any, source: str, prefix: str = "") -> None:
    """Refuse a config (a DictConfig, or the plain dict/list of a stored one) with a
    ``_target_`` anywhere that is not allow-listed. ``source`` says where the config came from."""
    for key, target in _targets(_resolved(tree), prefix):
        why = refusal(target) if isinstance(target, str) else f"a {type(target).__name__}, not a class path"
        if why is not None:
            raise UntrustedConfig(
                f"{key}: {target!r} in {source} is not something genlab builds ({why}). Checkpoints and "
                f"configs are data: a _target_ may only name {_ALLOWED}. Nothing was built or run; remove "
                "that key, or use a checkpoint or config from a source you trust (classes of your own: name "
                f"their modules in the environment variable {TRUST_ENV})."
            )


# --- config directories named on the command line -------------------------------------------

_FILE_URL = re.compile(r"file://([^,\]'\"\s]+)")


def _search_dirs(argv: Sequence[str], entry_file: Path) -> list[Path]:
    """The config directories a command line adds to genlab's own conf/: ``--config-dir``,
    ``--config-path`` and ``file://`` entries of a ``hydra.searchpath`` override."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(list(argv))  # Hydra's own parser: the same reading of argv
    dirs = []
    if args.config_dir is not None:
        dirs.append(Path(args.config_dir).expanduser().absolute())
    if args.config_path is not None:
        path = Path(args.config_path).expanduser()
        dirs.append(path if path.is_absolute() else (entry_file.parent / path).resolve())
    for override in args.overrides:
        if override.lstrip("+~").startswith("hydra.searchpath"):
            dirs += [Path(p) for p in _FILE_URL.findall(override)]
    return dirs


def _yaml_files(directory: Path) -> Iterator[Path]:
    """Every .yaml file Hydra could read under ``directory``, through symlinked folders too (once)."""
    seen = set()
    for root, dirs, files in os.walk(directory, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield from (Path(root) / name for name in sorted(files) if name.endswith(".yaml"))


def check_config_dirs(argv: Sequence[str], entry_file: Path) -> None:
    """Refuse a command whose extra config directories hold a file with a ``_target_`` that is not
    allow-listed, before Hydra reads them (Hydra builds its callbacks, launcher and sweeper from
    them before genlab's code runs). A directory that sets ``hydra.searchpath`` is followed."""
    pending, seen = _search_dirs(argv, entry_file), set()
    while pending:
        directory = pending.pop()
        if directory in seen or not directory.is_dir():
            continue  # a missing directory is Hydra's to report
        seen.add(directory)
        for path in _yaml_files(directory):
            try:
                loaded = OmegaConf.load(path)
                tree = OmegaConf.to_container(loaded)
            except Exception:  # noqa: BLE001 - a file that does not parse cannot build anything
                continue
            check_targets(loaded, f"the config file {path}")
            searchpath = ((tree or {}).get("hydra") or {}).get("searchpath") if isinstance(tree, dict) else None
            for entry in searchpath or []:
                pending += [Path(p) for p in _FILE_URL.findall(str(entry))]


def command_line_is_trusted(entry_file: str) -> None:
    """For an entry point's ``main``: check the config directories of ``sys.argv``; a refusal is
    one ``genlab: error:`` line and exit status 1, before Hydra starts."""
    try:
        check_config_dirs(sys.argv[1:], Path(entry_file))
    except UntrustedConfig as err:
        print(f"genlab: error: {err}", file=sys.stderr)
        sys.exit(1)


#: a resolver call in a YAML value: ``${oc.env:NAME}``, ``${genlab.run_id:}`` (its name)
_RESOLVER_CALL = re.compile(r"\$\{\s*([A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)*)\s*:")


def inert(tree: Any) -> Any:
    """Stored data (a run folder's YAML, a checkpoint's config) without the values that call
    resolvers other than ``oc.select`` and genlab's own (what genlab and Hydra write): such a file
    is data, and ``${oc.env:SECRET}`` in it must not put the reader's environment into what genlab
    writes, logs or shows. Such values are left out (None)."""
    if isinstance(tree, dict):
        return {key: inert(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [inert(value) for value in tree]
    if isinstance(tree, str) and any(name != "oc.select" and not name.startswith("genlab.")
                                     for name in _RESOLVER_CALL.findall(tree)):
        return None
    return tree
