"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Every writer goes through :func:`atomic_write`: the bytes land in a temporary file in the *same*
directory (``os.replace`` is atomic only within one file system), are flushed and fsync'ed, then the
temporary file replaces the target.  If anything fails midway the temporary file is removed and the
previous target is untouched.  ``keep_backup`` additionally keeps the previous file as ``<name>.bak``
so a user can roll back a good-but-unwanted save by hand.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

__all__ = ["atomic_write", "atomic_open", "write_bytes", "write_text", "write_json", "write_npz",
           "backup_path"]


_UMASK = os.umask(0)
os.umask(_UMASK)


def backup_path(path: str | os.PathLike) -> Path:
    """Where :func:`atomic_write` keeps the previous version of ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".bak")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, keep_backup: bool = False) -> Iterator[io.BufferedWriter]:
    """Context manager yielding a binary file object; on clean exit it atomically becomes ``path``.

    On an exception inside the block, the temporary file is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        if keep_backup and path.exists():
            # copy (not rename) so that `path` exists at every instant, even if we crash right here
            shutil.copy2(path, backup_path(path))
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[io.BufferedWriter], Any], *,
                 keep_backup: bool = False) -> Path:
    """Call ``writer(fileobj)`` on a temporary file, then atomically move it onto ``path``."""
    with atomic_open(path, keep_backup=keep_backup) as fh:
        writer(fh)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes, *, keep_backup: bool = False) -> Path:
    return atomic_write(path, lambda fh: fh.write(data), keep_backup=keep_backup)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
               keep_backup: bool = False) -> Path:
    return write_bytes(path, text.encode(encoding), keep_backup=keep_backup)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
               keep_backup: bool = False) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n", keep_backup=keep_backup)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *, compressed: bool = False,
              keep_backup: bool = False) -> Path:
    """``np.savez`` to ``path`` atomically (no ``.npz`` suffix is appended: the path is used as given)."""
    save = np.savez_compressed if compressed else np.savez
    return atomic_write(path, lambda fh: save(fh, **dict(arrays)), keep_backup=keep_backup)
