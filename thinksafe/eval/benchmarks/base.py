"""What a benchmark is: where its rows come from, how a row becomes an :class:`Item`, how responses are scored.

A :class:`Benchmark` pairs a row parser (its loader; one per benchmark module, which documents the schemas
it reads) with a :class:`Scorer` (harmful rate, over-refusal rate, or pass@1). Rows come from a local file
read by :func:`thinksafe.data.records.read_records` (.jsonl/.json/.csv/.parquet) or from a hub dataset read
with ``datasets``; each item keeps ``where`` (``file:line`` or ``hub-id[split]:row``) for error messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from thinksafe.data.records import SUFFIXES, Record, read_records
from thinksafe.errors import UserError

Kind = Literal["safety", "over_refusal", "reasoning"]


@dataclass(frozen=True)
class Item:
    """One benchmark question as the model gets it."""

    id: str
    """Stable id: the file's own id column where it has one, else the 1-based row number."""
    prompt: str
    """The user turn sent to the model (reasoning prompts include the answer-format instruction)."""
    where: str
    """The source row, ``file:line`` or ``hub-id[split]:row``."""
    gold: str | None = None
    """Reasoning: the reference answer (GPQA: the letter of the correct option)."""
    harmful: bool | None = None
    """Safety / over-refusal: the set's label for the prompt."""
    question: str | None = None
    """The question as written in the source when ``prompt`` adds to it (matched by ``score``)."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class Scored:
    samples: list[list[dict[str, Any]]]
    """Verdict fields per item, per sample."""
    metrics: dict[str, float | int | None]
    """The benchmark's metrics (rates in [0, 1]; None when nothing could be judged)."""


def regroup(flat: list, responses: list[list[str]]) -> list[list]:
    """Per-sample results of the flattened ``responses`` back into one list per item."""
    out, start = [], 0
    for rs in responses:
        out.append(flat[start : start + len(rs)])
        start += len(rs)
    return out


class Scorer(Protocol):
    """Turns responses (full text, think block included) into per-sample verdicts and metrics."""

    kind: ClassVar[Kind]
    formula: ClassVar[str]
    """The metric's formula, as recorded in ``results.json``'s protocol."""

    def score(self, items: list[Item], responses: list[list[str]], judges) -> Scored: ...


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub."""

    id: str
    config: str | None = None
    split: str | None = None
    """None: the dataset's only split."""
    options: tuple[tuple[str, Any], ...] = ()
    """Extra ``load_dataset`` arguments (WildJailbreak's TSV needs a delimiter)."""

    def __str__(self) -> str:
        return self.id + (f":{self.config}" if self.config else "") + (f"@{self.split}" if self.split else "")


SHIPPED_DIR = Path(__file__).resolve().parents[3] / "data" / "benchmarks"
"""The public benchmark files shipped in the repository (``data/benchmarks``; see its README): a bare name
whose file is there loads it when ``benchmark_dir`` does not hold the file, before any hub dataset."""

RowParser = Callable[[Record, int], "Item | None"]
"""``(record, 1-based row number) -> Item``; None drops a row that is not part of the benchmark."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    scorer: Scorer
    parse: RowParser
    local: str | None = None
    """The file under a benchmark directory (``gsm8k/test.jsonl``) used when the directory holds it."""
    hub: HubSource | None = None
    """The hub dataset used otherwise."""
    about: str = ""
    template: str = "{prompt}"
    """The user turn built from a row (recorded in ``results.json``'s protocol)."""

    @property
    def kind(self) -> Kind:
        return self.scorer.kind

    def default_source(self, benchmark_dir: str | Path | None) -> str | HubSource:
        if self.local is not None:
            for folder in (benchmark_dir, SHIPPED_DIR):
                if folder is not None and (Path(folder) / self.local).is_file():
                    return str(Path(folder) / self.local)
        if self.hub is not None:
            return self.hub
        where = (
            f"{Path(benchmark_dir) / self.local} does not exist"
            if benchmark_dir and self.local
            else "no benchmark_dir given"
        )
        raise UserError(
            f"--benchmarks {self.name}: this benchmark has no hub dataset and {where}. Give its file as "
            f"{self.name}=PATH or point --benchmark_dir at a folder holding {self.local}."
        )

    def load(self, source: str | HubSource, limit: int | None = None) -> list[Item]:
        """Items from a local file or hub dataset, in source order; the first ``limit`` when given."""
        records = _hub_records(source) if isinstance(source, HubSource) else read_records(source)
        items: list[Item] = []
        seen: dict[str, str] = {}
        for n, rec in enumerate(records, start=1):
            item = self.parse(rec, n)
            if item is None:
                continue
            if item.id in seen:
                raise UserError(
                    f"{rec.where}: {self.name} id {item.id!r} repeats the row at {seen[item.id]}; ids must be unique."
                )
            seen[item.id] = rec.where
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
        if not items:
            raise UserError(f"{source}: no {self.name} rows in it ({self.about}).")
        return items


def as_source(text: str) -> str | HubSource:
    """A ``name=VALUE`` value: a local file, or a hub id ``owner/name[:config][@split]``."""
    p = Path(text)
    if p.exists() or p.suffix.lower() in SUFFIXES or text.count("/") != 1:
        return text
    rest, _, split = text.partition("@")
    ds, _, config = rest.partition(":")
    return HubSource(ds, config or None, split or None)


def _hub_records(source: HubSource) -> list[Record]:
    try:
        import datasets

        loaded = datasets.load_dataset(source.id, source.config, **dict(source.options))
    except Exception as e:  # offline, unknown id, gated dataset, …: all are the user's to fix
        raise UserError(
            f"cannot load hub dataset {source}: {e}. Offline or without access, download it on a machine that "
            "has access and pass the file as NAME=PATH."
        ) from None
    split = source.split
    if split is None:
        if len(loaded) != 1:
            raise UserError(f"hub dataset {source} has splits {', '.join(loaded)}; name one as {source.id}@SPLIT.")
        split = next(iter(loaded))
    if split not in loaded:
        raise UserError(f"hub dataset {source} has no split {split!r}; it has {', '.join(loaded)}.")
    return [Record(dict(row), f"{source.id}[{split}]", n) for n, row in enumerate(loaded[split], start=1)]


def text_field(rec: Record, *names: str, what: str) -> str:
    """The first of ``names`` present in the row, as a non-empty string."""
    for name in names:
        value = rec.fields.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    have = ", ".join(sorted(rec.fields)) or "(none)"
    raise UserError(f"{rec.where}: no {what}: expected a non-empty column {' or '.join(names)}; the row has {have}.")


def row_id(rec: Record, n: int, *names: str) -> str:
    """The row's own id column where it has one, else its row number."""
    for name in names:
        value = rec.fields.get(name)
        if value is not None and str(value).strip():
            return str(value).strip()
    return str(n)
