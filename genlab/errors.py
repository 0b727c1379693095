"""Errors that stop a run before work is wasted. Each message names the key or file and the fix."""


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


class Preempted(GenlabError):
    """The cluster warned that the job will be stopped; the run checkpointed and stopped."""
