"""Writing files so that a reader never sees half of one, and the write failures a user fixes.

Every artifact thinksafe writes goes through these: the content goes to a temporary name unique to this writer
(two runs writing the same file never share one), is fsynced, then renamed over the target, and the directory
is fsynced so the rename itself survives a power cut. A reader sees the old file or the new one, never a part.
Failures a user fixes (disk full, read-only place, a file in the way) become one :class:`UserError` paragraph.
This module sits at the bottom of the layering (it imports only :mod:`thinksafe.errors`): data, model, eval and
the testbed all write through it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from thinksafe.errors import UserError


def temp_path(path: str | Path) -> Path:
    """A hidden sibling of ``path`` that no other writer uses."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def disk_errors(path: str | Path):
    """Turn the write failures a user fixes (disk full, read-only or unwritable place, a file in the way) into
    one :class:`UserError` paragraph naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.errno not in _USER_ERRNOS:
            raise
        what = _USER_ERRNOS[e.errno]
        raise UserError(
            f"{path}: cannot write it: {what} ({e.strerror}). {_USER_FIXES[e.errno]} Files already finished are "
            "kept; run the same command again to continue."
        ) from None


_USER_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a file is in the way of a directory",
    errno.EISDIR: "it is a directory",
    errno.EEXIST: "something is in the way",
}
_USER_FIXES = {
    errno.ENOSPC: "Free space there (or choose another directory).",
    errno.EDQUOT: "Free space there (or choose another directory).",
    errno.EROFS: "Choose a writable directory.",
    errno.EACCES: "Choose a directory you can write to.",
    errno.EPERM: "Choose a directory you can write to.",
    errno.ENOTDIR: "Choose a path whose parents are directories.",
    errno.EISDIR: "Choose a file name, not a directory.",
    errno.EEXIST: "Move it away or choose another path.",
}


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file under ``path`` (or ``path`` itself), then the directories."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if path.is_dir():
        for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
            fsync_dir(d)


def write_atomic(path: str | Path, write) -> None:
    """Write ``path`` whole or not at all: ``write(f)`` fills a temporary file beside it (binary), which is synced
    and renamed over ``path``."""
    path = Path(path)
    with disk_errors(path):
        tmp = temp_path(path)
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def atomic_directory(path: str | Path, replace: bool = False):
    """Yield a fresh temporary directory beside ``path``; when the block succeeds its files are fsynced and it is
    renamed to ``path`` (an existing ``path`` is replaced only with ``replace``, and removed only after the new
    one is in place). When the block fails the temporary directory is removed and ``path`` is untouched."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(path)
        tmp.mkdir()
    try:
        with disk_errors(path):  # what the block writes (save_pretrained …) fails the same way
            yield tmp
        with disk_errors(path):
            fsync_tree(tmp)
            old = None
            if path.exists() or path.is_symlink():
                if not replace:
                    raise FileExistsError(errno.EEXIST, "exists", str(path))
                old = temp_path(path)
                os.rename(path, old)
            os.rename(tmp, path)
            fsync_dir(path.parent)
            if old is not None:
                shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def run_dir(trainer: Any) -> Path:
    """The run's directory (``trainer.log_dir``, else ``default_root_dir``), the same on every rank.

    Under DDP/FSDP ``trainer.log_dir`` is a collective (rank 0 broadcasts its logger's version), so a call made
    by one rank alone — in an ``if trainer.is_global_zero:`` branch — waits for a broadcast the other ranks make
    at a different place, and the run hangs at its end. The first call, from a hook every rank runs (the
    modules' ``setup``), does the broadcast once; the answer is kept on the trainer for every later caller.
    """
    cached = getattr(trainer, "_thinksafe_run_dir", None)
    if cached is None:
        cached = Path(trainer.log_dir or trainer.default_root_dir)
        trainer._thinksafe_run_dir = cached
    return cached
