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
        rows = []
        for line in raw[:end].splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    # only a torn write can produce this; treat the rest as lost
                    break
        groups: dict[Any, list[dict]] = {}
        for row in rows:
            groups.setdefault(row[group_key], []).append(row)
        kept = [row for row in rows if complete(row[group_key], groups[row[group_key]])]
        if len(kept) != len(rows) or end != len(raw):
            self._rewrite(kept)
        return kept

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(_encode(r) for r in rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def append(self, rows: Iterable[dict]) -> None:
        data = b"".join(_encode(r) for r in rows)
        if not data:
            return
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


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
