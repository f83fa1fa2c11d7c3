"""Prompt sets in the SafeChain schema: ``instruction`` (str) and ``label`` (one of :data:`LABELS`).

Sources are local files (.jsonl, .json, .csv, .parquet) or hub dataset ids (``UWNSL/SafeChain``) read
through ``datasets``; several can be mixed, each with its own limit, subsampled deterministically with
its own seed. Every row is validated before anything is written anywhere.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinksafe.data.records import Record, read_source, require_columns
from thinksafe.errors import UserError
from thinksafe.rows import LABELS, is_harmful


@dataclass
class PromptSource:
    """One prompt file or hub dataset."""

    path: str
    """A local file (.jsonl/.json/.csv/.parquet) or a hub dataset id such as ``UWNSL/SafeChain``."""
    limit: int | None = None
    """Keep at most this many rows, drawn without replacement with ``seed`` (None: all)."""
    seed: int = 0
    """Seed of the subsampling; the same seed always keeps the same rows."""
    split: str = "train"
    """Split of a hub dataset (ignored for files)."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise UserError(f"data.prompts: limit for {self.path} must be ≥ 1 or null, got {self.limit}.")


@dataclass(frozen=True)
class PromptRow:
    """A validated prompt. ``where`` points at the source row (``file:line`` or ``hub-id[row]``)."""

    instruction: str
    label: str
    where: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def harmful(self) -> bool:
        return is_harmful(self.label)


def as_sources(prompts: str | PromptSource | list[str | PromptSource] | list[dict]) -> list[PromptSource]:
    """Normalise the ``data.prompts`` option (a path, a list of paths, or PromptSource entries)."""
    items = prompts if isinstance(prompts, list) else [prompts]
    if not items:
        raise UserError("data.prompts is empty: give at least one prompt file or hub dataset id.")
    out = []
    for item in items:
        if isinstance(item, PromptSource):
            out.append(item)
        elif isinstance(item, str):
            out.append(PromptSource(item))
        elif isinstance(item, dict):
            out.append(PromptSource(**item))
        else:
            raise UserError(f"data.prompts: cannot read entry {item!r}; give a path/hub id or {{path, limit, seed}}.")
    return out


def _validate(rec: Record) -> PromptRow:
    f = rec.fields
    for key in ("instruction", "label"):
        if key not in f or f[key] is None:
            raise UserError(f"{rec.where}: missing field {key!r} (SafeChain schema: instruction, label).")
    inst, label = f["instruction"], f["label"]
    if not isinstance(inst, str):
        raise UserError(f"{rec.where}: 'instruction' must be a string, got {type(inst).__name__}.")
    if not inst.strip():
        raise UserError(f"{rec.where}: 'instruction' is empty or whitespace only.")
    if label not in LABELS:
        raise UserError(f"{rec.where}: unknown label {label!r}; expected one of {', '.join(LABELS)}.")
    meta = {k: v for k, v in f.items() if k not in ("instruction", "label")}
    return PromptRow(inst, label, rec.where, meta)


def load_source(source: PromptSource) -> list[PromptRow]:
    records = read_source(source.path, source.split, "data.prompts")
    if Path(source.path).suffix.lower() in (".csv", ".parquet"):
        require_columns(records, ("instruction", "label"), "prompt sets (SafeChain schema)")
    rows = [_validate(r) for r in records]
    if source.limit is not None and source.limit < len(rows):
        keep = sorted(random.Random(source.seed).sample(range(len(rows)), source.limit))
        rows = [rows[i] for i in keep]
    return rows


def load_prompts(prompts: str | PromptSource | list) -> list[PromptRow]:
    """Every row of every source, validated, in source order."""
    rows: list[PromptRow] = []
    for source in as_sources(prompts):
        rows.extend(load_source(source))
    return rows
