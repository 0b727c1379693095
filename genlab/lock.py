"""One owner per run directory: an OS file lock held by rank 0 for the life of the run.

The lock is ``flock`` on ``<run dir>/.genlab.lock``. The kernel drops it when the process ends,
however it ends (``kill -9`` included), so a stale lock never blocks a directory. The file holds
the owner's PID, for the message a second process gets, and is removed when the owner releases
it. ``filelock`` cannot give the holder's PID, and the lock is a single system call.

Holding the lock is not yet owning what the directory holds: an attempt owns it (and records its
failure or interruption there) once the directory is new or the attempt resumed the run in it.
A mistyped command in the directory of a finished run therefore changes nothing there.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from genlab.errors import ConfigError, GenlabError, RunDirectoryLocked
from genlab.utils import global_rank

log = logging.getLogger("genlab")

LOCK_NAME = ".genlab.lock"
#: file systems without flock (some Lustre mounts) answer with one of these
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


class RunDirectory:
    """A run directory this process holds the lock of."""

    def __init__(self, path: Path, fd: Optional[int]) -> None:
        self.path = path
        self._fd = fd
        #: whether this attempt's failure or interruption may be recorded in the directory
        self.owned = not holds_run(path)

    def release(self) -> None:
        _held.pop(self.path, None)
        if self._fd is None:
            return
        # removed while still locked: a process that opened the file meanwhile sees it is gone
        try:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


_held: dict[Path, RunDirectory] = {}


def holds_run(directory: Path) -> bool:
    """Whether a run (finished or not) has recorded anything in ``directory``."""
    return (directory / "metrics.json").is_file() or (directory / "checkpoints" / "last.ckpt").is_file()


def lock_run_directory(directory: str | os.PathLike) -> RunDirectory:
    """Take the lock of ``directory`` (created if missing) or refuse at once, naming the holder.

    Re-entrant within a process. DDP ranks other than 0 are part of rank 0's run: they take
    nothing."""
    path = Path(directory).resolve()
    if path in _held:
        return _held[path]
    if global_rank() != 0:
        held = RunDirectory(path, None)
        held.owned = True  # a rank of the run rank 0 owns; it records nothing itself anyway
        return held
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(cannot_create_run_directory(path, err.strerror)) from None
    lock_file = path / LOCK_NAME
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryLocked(
                f"the run directory {path} is in use by another genlab process ({_holder(lock_file)}); "
                "wait for it to finish, or give this run its own directory (leave hydra.run.dir to its default)"
            ) from None
        except OSError as err:
            os.close(fd)
            if err.errno not in _UNSUPPORTED:
                raise
            log.warning("the file system of %s has no file locks (%s): nothing stops a second process "
                        "from writing into this run directory", path, err.strerror)
            fd = None
            break
        try:  # the previous holder may have removed the file between our open and our lock
            if os.stat(lock_file).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    held = _held[path] = RunDirectory(path, fd)
    return held


def _holder(lock_file: Path) -> str:
    try:
        pid = lock_file.read_text().strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "PID not known yet"


def claim(directory: str | os.PathLike) -> None:
    """This attempt owns the run in ``directory`` from now on (it resumes it or starts it)."""
    held = _held.get(Path(directory).resolve())
    if held is not None:
        held.owned = True


class RunDirectoryGuard(Callback):
    """Hydra callback, before Hydra writes anything into a single run's directory: take its lock,
    and keep Hydra from rewriting ``.hydra/`` of a run that is already there (the attempt may yet
    be refused; genlab records the config it resumes with in ``config_resolved.yaml``)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        try:
            lock_run_directory(run_dir)
        except GenlabError as err:
            from genlab.entry import report_error

            report_error(err)
        if hydra_subdir(str(run_dir)) is None:
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = None


def hydra_subdir(output_dir: Optional[str]) -> Optional[str]:
    """``hydra.output_subdir`` of a job (the resolver ``genlab.hydra_subdir``): ``.hydra``, or None
    for a directory that already holds a run or its ``.hydra/``, which Hydra would otherwise rewrite
    with this attempt's overrides before genlab can refuse them (a job of a sweep run again into
    its sweep directory; a single run is guarded by ``RunDirectoryGuard`` as well)."""
    if output_dir is None:  # composed outside a job: Hydra's default
        return ".hydra"
    path = Path(output_dir)
    return None if holds_run(path) or (path / ".hydra").is_dir() else ".hydra"


def cannot_create_run_directory(path: Path, strerror: str) -> str:
    """Why the run directory ``path`` cannot be made (Hydra makes it, and its log file, before the
    entry point runs; genlab makes it when Hydra did not), and the fix."""
    blocking = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    why = f"{blocking} is a file, not a folder" if blocking else strerror
    return (f"cannot create the run directory {path}: {why}. Choose another run directory "
            "(hydra.run.dir=..., or paths.log_dir=... for where runs go).")
