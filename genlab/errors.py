"""Errors that stop a run before work is wasted. Each message names the key or file and the fix."""

import signal


class GenlabError(Exception):
    """Base class: the entry points print these as one clear line instead of a traceback."""


class ConfigError(GenlabError):
    """A config key is missing, unknown or has a value that cannot work."""


class UntrustedConfig(ConfigError):
    """A checkpoint or config names code genlab does not build (a ``_target_`` off the allow-list)."""


class DataError(GenlabError):
    """A dataset cannot be found, read or downloaded."""


class CheckpointError(GenlabError):
    """A checkpoint path does not exist or is not a genlab checkpoint."""


class RunDirectoryInUse(ConfigError):
    """The run directory already holds a run; nothing may be written into it."""


class TrainingDiverged(GenlabError):
    """A loss became NaN or inf; the run stops at that step and keeps its last good checkpoint."""


class ObjectiveNotMeasured(GenlabError):
    """A sweep job trained but never measured the objective the sweep compares: not a success."""


class Preempted(GenlabError):
    """The cluster warned that the job will be stopped; the run checkpointed and stopped."""


class RunDirectoryLocked(RunDirectoryInUse):
    """Another process holds the run directory's lock (it is training or evaluating there)."""


class Interrupted(BaseException):
    """SIGTERM or SIGINT stopped the run (a training run checkpoints first). A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way swallows it; the entry point
    records it and exits with status 128 + the signal number."""

    def __init__(self, signum: int, message: str = "") -> None:
        self.signum = int(signum)
        self.signal_name = signal.Signals(signum).name
        super().__init__(message or f"the run was interrupted by {self.signal_name}")
