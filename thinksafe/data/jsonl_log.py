"""Append-only JSONL files that survive SIGKILL.

Rows are appended a chunk at a time with one ``write`` + ``fsync``. A run killed mid-write leaves at worst a
torn last line or a group of rows cut short; :meth:`JsonlLog.recover` drops exactly those (rewriting the file
atomically), so a restarted run redoes only what is missing — nothing lost, nothing duplicated.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from contextlib import contextmanager
from typing import Any

from thinksafe.errors import UserError


class JsonlLog:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def recover(self, group_key: str, complete: Callable[[Any, list[dict]], bool]) -> list[dict]:
        """Read the rows, keeping only groups (rows sharing ``row[group_key]``) that ``complete(key, rows)``
        accepts; rewrite the file if anything was dropped. Returns the kept rows in file order."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1  # a torn last line (no newline yet) is dropped
        rows, ends, damaged, offset = [], [], False, 0
        for line in raw[:end].split(b"\n"):
            offset += len(line) + 1
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                row = None
            if not isinstance(row, dict) or group_key not in row:
                # a torn write, or damage from outside: the file is cut here and every row after it is redone
                # (rows after a bad line cannot be trusted to be what this run wrote)
                damaged = True
                break
            rows.append(row)
            ends.append(offset)
        groups: dict[Any, list[dict]] = {}
        for row in rows:
            groups.setdefault(row[group_key], []).append(row)
        keep = [complete(row[group_key], groups[row[group_key]]) for row in rows]
        kept = [row for row, k in zip(rows, keep) if k]
        if damaged or len(kept) != len(rows) or end != len(raw):
            prefix = keep.index(False) if False in keep else len(keep)
            if all(not k for k in keep[prefix:]):
                # what is dropped is the end of the file: cut it there, in place (needs no free space, which
                # matters after the disk filled up mid-append)
                with disk_errors(self.path):
                    os.truncate(self.path, ends[prefix - 1] if prefix else 0)
                    fd = os.open(self.path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            else:
                self._rewrite(kept)
        return kept

    def verify(self) -> list[dict]:
        """Every row of a finished log; a line that does not parse is a :class:`UserError` naming it."""
        rows = []
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise UserError(f"{self.path}: cannot read it ({e.strerror}).") from None
        for n, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise UserError(f"{self.path}:{n}: the line is damaged (not a JSON object).")
            rows.append(row)
        if raw and not raw.endswith(b"\n"):
            raise UserError(f"{self.path}: the last line is cut short.")
        return rows

    def _rewrite(self, rows: list[dict]) -> None:
        write_bytes_atomic(self.path, b"".join(_encode(r) for r in rows))

    def append(self, rows: Iterable[dict]) -> None:
        data = b"".join(_encode(r) for r in rows)
        if not data:
            return
        with disk_errors(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)


def _encode(row: dict) -> bytes:
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def read_jsonl(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------------ atomic writes
# Every artifact thinksafe writes goes through these: the content goes to a temporary name unique to this writer
# (two runs writing the same file never share one), is fsynced, then renamed over the target, and the directory
# is fsynced so the rename itself survives a power cut. A reader sees the old file or the new one, never a part.


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


_USER_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                errno.EPERM: "permission denied", errno.ENOTDIR: "a file is in the way of a directory",
                errno.EISDIR: "it is a directory", errno.EEXIST: "something is in the way"}
_USER_FIXES = {errno.ENOSPC: "Free space there (or choose another directory).",
               errno.EDQUOT: "Free space there (or choose another directory).",
               errno.EROFS: "Choose a writable directory.", errno.EACCES: "Choose a directory you can write to.",
               errno.EPERM: "Choose a directory you can write to.",
               errno.ENOTDIR: "Choose a path whose parents are directories.",
               errno.EISDIR: "Choose a file name, not a directory.", errno.EEXIST: "Move it away or choose another path."}


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


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    with disk_errors(path):
        tmp = temp_path(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)


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
