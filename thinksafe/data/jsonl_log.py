"""Append-only JSONL files that survive SIGKILL.

Rows are appended a chunk at a time with one ``write`` + ``fsync``. A run killed mid-write leaves at worst a
torn last line or a group of rows cut short; :meth:`JsonlLog.recover` drops exactly those (rewriting the file
atomically), so a restarted run redoes only what is missing — nothing lost, nothing duplicated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from thinksafe.errors import UserError
from thinksafe.files import disk_errors, write_bytes_atomic


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
