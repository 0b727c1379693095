"""The command-line entry: what goes wrong before genlab's own code runs, as one line.

Hydra composes the config and makes the run directory before it calls the entry point, and
prints its own errors there (a stack trace for a config file that does not parse or a run
directory that cannot be made). ``run_cli`` asks Hydra to raise them instead and prints one
``genlab: error:`` line with exit status 1, as entry_point does for genlab's own errors.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import yaml
from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from genlab.checks import one_line
from genlab.lock import cannot_create_run_directory


def run_cli(hydra_main: Callable[[], Any]) -> Any:
    """Run a ``hydra.main`` function. HYDRA_FULL_ERROR=1 set by the user keeps Hydra's own
    reporting (full stack traces) for every error."""
    from genlab.threads import prefer_passive_waiting

    prefer_passive_waiting()  # before torch is imported
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return hydra_main()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing
    try:
        return hydra_main()
    except Exception as err:
        message = None if _raised_by_the_job(err) else explain(err)
        if message is None:
            raise
        print(f"genlab: error: {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        os.environ.pop("HYDRA_FULL_ERROR", None)


def explain(err: BaseException) -> Optional[str]:
    """One line for an error Hydra raises before the entry point runs; None for any other."""
    causes = _chain(err)
    for cause in causes:
        if isinstance(cause, yaml.MarkedYAMLError) and cause.problem_mark is not None:
            mark, start = cause.problem_mark, cause.context_mark
            context = f" ({cause.context} at line {start.line + 1})" if cause.context and start else ""
            return (f"{mark.name} line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: "
                    f"{cause.problem}{context}. Fix the file.")
        if isinstance(cause, yaml.YAMLError):
            return f"a config file is not valid YAML: {one_line(cause)}. Fix the file."
    for cause in causes:
        if isinstance(cause, OSError) and cause.filename:
            return cannot_create_run_directory(Path(cause.filename), cause.strerror)
    if isinstance(err, OverrideParseException):
        reason = err.message.splitlines()[0]
        if reason.startswith("LexerNoViableAltException"):
            reason = "a character it cannot read"
        return (f"cannot parse the command-line override {err.override!r}: {reason}. Quote values with special "
                "characters, e.g. 'key=\"a b\"' (grammar: https://hydra.cc/docs/advanced/override_grammar/basic).")
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        # an unknown option or key, an override that does not parse (without Hydra's search path)
        return one_line(err).split(" Config search path:")[0]
    return None


def _raised_by_the_job(err: BaseException) -> bool:
    """Whether the error comes from inside the entry point (a bug there keeps its stack trace)."""
    import traceback

    entry = str(Path(__file__).with_name("entry.py"))
    return any(frame.filename == entry and frame.name == "run_job" for frame in traceback.extract_tb(err.__traceback__))


def _chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain
