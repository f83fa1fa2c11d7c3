"""Existing (prompt, response) sets to train on: ThinkSafe's own output, SafeChain, STAR-1, DirectRefusal.

The format is told by the columns:

* SafeChain: ``instruction``, ``response`` and ``label`` (or ``prompt_label``), one of ``prompts.LABELS``.
* thinksafe's own sets: an output directory of ``thinksafe generate`` (or of a fit's data stage), or its
  ``samples.jsonl`` (``prompt``, ``response``, ``label``, ``kept``); only the kept rows are read.
* STAR-1 (``UCSC-VLAA/STAR-1``): ``question``, ``response``, ``category``, ``source``, ``score``; every prompt is
  harmful, so rows get ``vanilla_harmful``.
* DirectRefusal (``TianshengHuang/DirectRefusal``, the Safety-Tax baseline): one ``refusal`` column holding
  ``Question: … Answer: …``; rows get ``vanilla_harmful`` and the fixed short reasoning
  ``<think>\\nI should not answer this question!\\n</think>\\n\\n`` before the answer, as ThinkSafe's own code
  builds them.

Responses are normalised to the full form the trainer expects: SafeChain stores R1 completions without the
opening ``<think>`` (the R1 template pre-fills it), so a response that closes a think block it never opened gets
``<think>\\n`` in front; ``</think>`` followed by a single newline gets a second one, the layout Qwen3 and R1
produce themselves.
"""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from thinksafe.data.records import Record, read_source
from thinksafe.errors import UserError
from thinksafe.rows import CLOSE, LABELS, OPEN, is_harmful

ResponseFormat = Literal["safechain", "thinksafe", "star1", "direct_refusal"]

DIRECT_REFUSAL_THINK = f"{OPEN}\nI should not answer this question!\n{CLOSE}\n\n"
_QUESTION_ANSWER = re.compile(r"Question:\s*(.+?)\s*Answer:\s*(.+)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class ResponseRow:
    """A validated training row. ``where`` points at the source row (``file:line`` or ``hub-id[split]:n``)."""

    prompt: str
    response: str
    label: str
    where: str
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def harmful(self) -> bool:
        return is_harmful(self.label)


def detect_format(fields: dict[str, Any], where: str) -> ResponseFormat:
    """The response-set format told by a row's columns."""
    if "refusal" in fields:
        return "direct_refusal"
    if {"prompt", "response", "label", "kept"} <= fields.keys():
        return "thinksafe"
    if "response" in fields and "instruction" in fields:
        return "safechain"
    if "response" in fields and "question" in fields:
        return "star1"
    have = ", ".join(sorted(fields)) or "(none)"
    raise UserError(
        f"{where}: cannot tell the response-set format from the columns ({have}). Expected instruction+response+label "
        "(SafeChain), prompt+response+label+kept (thinksafe generate's samples.jsonl), question+response (STAR-1) "
        "or refusal (DirectRefusal)."
    )


def normalize_response(response: str) -> str:
    """Full-form reasoning response: opening ``<think>`` restored, ``</think>`` followed by a blank line."""
    if CLOSE in response and OPEN not in response:
        response = f"{OPEN}\n{response}"
    return re.sub(rf"{re.escape(CLOSE)}\n(?!\n)", f"{CLOSE}\n\n", response)


def _text(rec: Record, key: str) -> str:
    value = rec.fields.get(key)
    if value is None:
        raise UserError(f"{rec.where}: missing field {key!r}.")
    if not isinstance(value, str):
        raise UserError(f"{rec.where}: {key!r} must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise UserError(f"{rec.where}: {key!r} is empty or whitespace only.")
    return value


def _row(rec: Record, fmt: ResponseFormat) -> ResponseRow:
    f = rec.fields
    if fmt == "direct_refusal":
        match = _QUESTION_ANSWER.search(_text(rec, "refusal"))
        if match is None:
            raise UserError(f"{rec.where}: a DirectRefusal 'refusal' field must read 'Question: … Answer: …'.")
        meta = {k: v for k, v in f.items() if k != "refusal"}
        return ResponseRow(
            match.group(1).strip(), DIRECT_REFUSAL_THINK + match.group(2).strip(), "vanilla_harmful", rec.where, meta
        )
    if fmt == "star1":
        meta = {k: v for k, v in f.items() if k not in ("question", "response")}
        return ResponseRow(
            _text(rec, "question"), normalize_response(_text(rec, "response")), "vanilla_harmful", rec.where, meta
        )
    if fmt == "thinksafe":  # the set's own rows: already in full form, checked by the data stage
        meta = {k: v for k, v in f.items() if k not in ("prompt", "response", "label")}
        if f["label"] not in LABELS:
            raise UserError(f"{rec.where}: unknown label {f['label']!r}; expected one of {', '.join(LABELS)}.")
        return ResponseRow(_text(rec, "prompt"), _text(rec, "response"), f["label"], rec.where, meta)
    key = "label" if f.get("label") is not None else "prompt_label"
    label = f.get(key)
    if label is None:
        raise UserError(f"{rec.where}: missing field 'label' (SafeChain schema: instruction, response, label).")
    if label not in LABELS:
        raise UserError(f"{rec.where}: unknown {key} {label!r}; expected one of {', '.join(LABELS)}.")
    meta = {k: v for k, v in f.items() if k not in ("instruction", "response", key)}
    return ResponseRow(_text(rec, "instruction"), normalize_response(_text(rec, "response")), label, rec.where, meta)


def load_responses(
    source: str | list[str], limit: int | None = None, seed: int = 0, split: str = "train"
) -> list[ResponseRow]:
    """Every row of a response set (local .jsonl/.json/.csv/.parquet file, thinksafe output directory or hub
    dataset id), validated; a list of sources gives their rows one after the other.

    Args:
        source: a local file, a directory written by ``thinksafe generate`` (its kept rows), or a hub dataset id
            (``UCSC-VLAA/STAR-1``, ``TianshengHuang/DirectRefusal``, …); or a list of them.
        limit: keep at most this many rows, drawn without replacement with ``seed`` (None: all).
        seed: seed of that draw; the same seed keeps the same rows.
        split: split of a hub dataset (ignored for files).
    """
    if limit is not None and limit < 1:
        raise UserError(f"data.responses: limit for {source} must be ≥ 1 or null, got {limit}.")
    if isinstance(source, (list, tuple)):
        if not source:
            raise UserError("data.responses: the list of sources is empty; name at least one.")
        rows = [row for one in source for row in load_responses(one, split=split)]
        return _draw(rows, limit, seed)
    records = _thinksafe_set(Path(source)) if Path(source).is_dir() else read_source(source, split, "data.responses")
    fmt = detect_format(records[0].fields, records[0].where)
    rows = [_row(r, fmt) for r in records]
    if fmt == "thinksafe":
        rows = [r for r, rec in zip(rows, records) if rec.fields["kept"]]
        if not rows:
            raise UserError(
                f"data.responses: {source} holds no kept rows (the guard or the think-block check rejected every "
                "sample; see stats.json there), so there is nothing to train on."
            )
    # a think block opened and never closed is a cut reasoning trace: training on it teaches the model to stop
    # mid-thought. Dropped and counted, as the self-generated set rejects such samples
    unclosed = [r for r in rows if OPEN in r.response and CLOSE not in r.response]
    if unclosed:
        rows = [r for r in rows if not (OPEN in r.response and CLOSE not in r.response)]
        print(
            f"thinksafe: data.responses: dropped {len(unclosed)} of {len(records)} rows of {source} whose think "
            f"block never closes (cut reasoning traces; the first at {unclosed[0].where}).",
            file=sys.stderr,
        )
        if not rows:
            raise UserError(
                f"data.responses: every row of {source} opens a think block it never closes (the first at "
                f"{unclosed[0].where}); there is nothing to train on."
            )
    return _draw(rows, limit, seed)


def _draw(rows: list[ResponseRow], limit: int | None, seed: int) -> list[ResponseRow]:
    if limit is not None and limit < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in keep]
    return rows


def _thinksafe_set(directory: Path) -> list[Record]:
    """The rows of a finished set written by ``thinksafe generate`` (or a fit's data stage) in ``directory``."""
    if not (directory / "stats.json").is_file() or not (directory / "samples.jsonl").is_file():
        raise UserError(
            f"data.responses: {directory} is a directory but holds no finished thinksafe set (samples.jsonl and "
            "stats.json); name a response file, or a directory `thinksafe generate` finished (an unfinished one "
            "resumes when that command runs again; the shards of a multi-process run are merged with "
            "`thinksafe generate --merge`)."
        )
    return read_source(str(directory / "samples.jsonl"), option="data.responses")
