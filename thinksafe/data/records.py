"""Read rows of dicts from .jsonl, .json, .csv and .parquet files, with user-facing errors.

Every loader in thinksafe (prompt sets, response sets, benchmarks) reads through :func:`read_records`,
so a malformed file fails the same way everywhere: one paragraph naming the file and, where one row is
at fault, its line number.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinksafe.errors import UserError, at

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Record:
    """One row of a file: its fields and where it came from (``line`` is 1-based; for .json and
    .parquet it is the item/row number)."""

    fields: dict[str, Any]
    path: str
    line: int

    @property
    def where(self) -> str:
        return at(self.path, self.line)


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{at(path, line)}: the file is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}). "
            "Re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from None


def read_records(path: str | Path) -> list[Record]:
    """All rows of a local file. Raises :class:`UserError` for a missing, empty, undecodable or
    malformed file; field-level checks are the caller's."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file. Check the path (relative paths are taken from {Path.cwd()}).")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use one of {', '.join(SUFFIXES)}.")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = _decode(path, path.read_bytes())
    if not text.strip():
        raise UserError(f"{path}: the file is empty; it must hold at least one row.")
    if suffix == ".jsonl":
        rows = _read_jsonl(path, text)
    elif suffix == ".json":
        rows = _read_json(path, text)
    else:
        rows = _read_csv(path, text)
    if not rows:
        raise UserError(f"{path}: the file holds no rows.")
    return rows


def _read_jsonl(path: Path, text: str) -> list[Record]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{at(path, n)}: malformed JSON ({e.msg} at column {e.colno}).") from None
        if not isinstance(obj, dict):
            raise UserError(f"{at(path, n)}: each line must be a JSON object, got {type(obj).__name__}.")
        rows.append(Record(obj, str(path), n))
    return rows


def _read_json(path: Path, text: str) -> list[Record]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{at(path, e.lineno)}: malformed JSON ({e.msg} at column {e.colno}).") from None
    if isinstance(obj, dict):
        # {"data": [...]} / {"train": [...]}: the one list-valued entry holds the rows
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of objects (or an object holding exactly one such list).")
        obj = lists[0]
    if not isinstance(obj, list):
        raise UserError(f"{path}: expected a JSON list of objects, got {type(obj).__name__}.")
    rows = []
    for n, item in enumerate(obj, start=1):
        if not isinstance(item, dict):
            raise UserError(f"{path}: item {n} must be a JSON object, got {type(item).__name__}.")
        rows.append(Record(item, str(path), n))
    return rows


def _read_csv(path: Path, text: str) -> list[Record]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise UserError(f"{path}: the CSV file has no header row.")
    rows = []
    start = reader.line_num + 1
    for fields in reader:
        rows.append(Record({k: v for k, v in fields.items() if k is not None}, str(path), start))
        start = reader.line_num + 1
    return rows


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: cannot read the Parquet file ({e}).") from None
    if table.num_rows == 0:
        raise UserError(f"{path}: the file holds no rows.")
    return [Record(row, str(path), n) for n, row in enumerate(table.to_pylist(), start=1)]


def require_columns(records: list[Record], columns: tuple[str, ...], what: str) -> None:
    """Fail with the file name when the header/first row lacks a needed column (CSV and Parquet have
    one schema for all rows; JSON rows are checked one by one by the caller)."""
    if not records:
        return
    missing = [c for c in columns if c not in records[0].fields]
    if missing:
        have = ", ".join(sorted(records[0].fields)) or "(none)"
        raise UserError(f"{records[0].path}: {what} need the column(s) {', '.join(missing)}; the file has {have}.")


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_source(source: str, split: str = "train", option: str = "data") -> list[Record]:
    """Rows of a local file, or of a hub dataset id (``owner/name``) through ``datasets``. A string that
    names an existing path or carries a data-file suffix is always a file."""
    p = Path(source)
    if p.suffix.lower() in SUFFIXES or p.exists() or not _HUB_ID.match(source):
        return read_records(p)
    try:
        import datasets

        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # offline, unknown id, gated repo, …: all are the user's to fix
        raise UserError(
            f"{option}: cannot load hub dataset {source!r} (split {split!r}): {e}. If it is meant to be a local "
            "file, check the path; offline, download it first and point to the file."
        ) from None
    return [Record(dict(row), f"{source}[{split}]", n) for n, row in enumerate(ds, start=1)]
