"""The benchmarks, by the names ``--benchmarks`` takes.

A benchmark spec is ``NAME`` (its default data: the file under ``benchmark_dir`` when that folder holds it,
else the copy shipped in the repository's ``data/benchmarks``, else its hub dataset) or ``NAME=SOURCE`` with
SOURCE a local file (.jsonl/.json/.csv/.parquet) or a hub id ``owner/name[:config][@split]``.
Each module documents the schemas its loader reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thinksafe.errors import UserError
from thinksafe.eval.benchmarks.base import Benchmark, HubSource, Item, Kind, Scored, as_source
from thinksafe.eval.benchmarks.gpqa import GPQA_DIAMOND
from thinksafe.eval.benchmarks.math import AIME24, GSM8K, GSM8K_BOXED, MATH500
from thinksafe.eval.benchmarks.refusal import JBB_BENIGN, XSTEST
from thinksafe.eval.benchmarks.safety import (
    ADVBENCH,
    HARMBENCH,
    HARMBENCH_STANDARD,
    JAILBREAKBENCH,
    STRONGREJECT,
    WILDJAILBREAK,
)

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        HARMBENCH,
        HARMBENCH_STANDARD,
        STRONGREJECT,
        WILDJAILBREAK,
        ADVBENCH,
        JAILBREAKBENCH,
        XSTEST,
        JBB_BENIGN,
        GSM8K,
        GSM8K_BOXED,
        MATH500,
        AIME24,
        GPQA_DIAMOND,
    )
}


@dataclass(frozen=True)
class Loaded:
    benchmark: Benchmark
    source: str | HubSource
    items: list[Item]

    @property
    def name(self) -> str:
        return self.benchmark.name


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name.strip().lower()]
    except KeyError:
        raise UserError(f"--benchmarks: unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}.") from None


def resolve(spec: str, benchmark_dir: str | Path | None = None) -> tuple[Benchmark, str | HubSource]:
    name, sep, value = spec.partition("=")
    benchmark = get_benchmark(name)
    if sep and not value.strip():
        raise UserError(f"--benchmarks {spec!r}: nothing after '='; give a file or hub id, or the name alone.")
    return benchmark, (as_source(value.strip()) if sep else benchmark.default_source(benchmark_dir))


def load_benchmark(spec: str, benchmark_dir: str | Path | None = None, limit: int | None = None) -> Loaded:
    """Resolve a spec and load its items (the first ``limit`` when given)."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be ≥ 1 or unset, got {limit}.")
    benchmark, source = resolve(spec, benchmark_dir)
    return Loaded(benchmark, source, benchmark.load(source, limit))


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "HubSource",
    "Item",
    "Kind",
    "Loaded",
    "Scored",
    "get_benchmark",
    "load_benchmark",
    "resolve",
]
