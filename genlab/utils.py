"""Small helpers the entry points and callbacks share."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator, TypeVar


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the outer RNG state afterwards."""
    import torch

    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (changing it, even for
    an instant, would race with files other threads create)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files ``atomic_file`` writes beside ``path`` (left over when a process is
    killed while writing)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` comes from a full disk (or quota). torch.save reports it as a RuntimeError
    ("[enforce fail at inline_container.cc] ... unexpected pos") raised while handling the
    file's OSError, so the whole chain of causes is looked at."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` and rename it over ``path`` once fully written and
    synced: readers (and a crash) see the old content or the new one, never half of it.

    The file gets the mode a plain ``open`` would give it: an existing file's own mode, else
    0666 less the umask (``mkstemp`` alone would make every result private, 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        file_mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        file_mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (see ``atomic_file``)."""
    with atomic_file(path) as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {dotted.key: leaf value}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


_F = TypeVar("_F", bound=Callable[..., Any])


def global_rank() -> int:
    """This process's rank as Lightning knows it (0 outside distributed training); Lightning is
    imported here, not at start-up."""
    from pytorch_lightning.utilities import rank_zero_only

    return rank_zero_only.rank


def on_rank_zero(fn: _F) -> _F:
    """Lightning's ``rank_zero_only`` without importing Lightning before the call."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if global_rank() == 0 else None

    return wrapped  # type: ignore[return-value]
