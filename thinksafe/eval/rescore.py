"""``thinksafe score``: score saved responses against a benchmark, with no model to sample from.

Input rows (.jsonl/.json/.csv/.parquet) need ``response`` (the full response, think block included, as the
model wrote it after the chat prompt) and either ``id`` (the benchmark item id: the file's id column, else
its 1-based row number — as in ``OUT/<benchmark>.jsonl`` of ``thinksafe eval``) or ``prompt`` (the question
as in the benchmark file, or the prompt as sent). Several rows per item are samples of it.

Writes ``OUT/scores.jsonl`` (each input row plus the benchmark's verdict fields, e.g. ``correct``,
``refusal``, ``harmful``) and ``OUT/summary.json`` (``benchmark``, ``n`` items scored, the metrics, the
judges and what they saw where judges were used, and ``protocol``: judges, what they read, the benchmark's
source, template and formula).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from thinksafe.data.records import Record, read_records
from thinksafe.errors import UserError
from thinksafe.eval.answers import AnswerChecker
from thinksafe.eval.benchmarks import Item, load_benchmark
from thinksafe.eval.judges import Judges, JudgeSees
from thinksafe.eval.protocol import benchmark_protocol, judge_protocol
from thinksafe.eval.report import write_jsonl
from thinksafe.files import write_json_atomic
from thinksafe.guards.base import Guard


def score(
    benchmark: str,
    responses: str,
    output: str,
    data: str | None = None,
    benchmark_dir: str | None = None,
    judge: Guard | None = None,
    refusal_judge: Guard | None = None,
    judge_sees: JudgeSees = "response",
    answer_checker: AnswerChecker = "math_verify",
) -> dict[str, Any]:
    """Score saved responses.

    Args:
        benchmark: benchmark name (``gsm8k``), or ``name=SOURCE`` as in ``eval --benchmarks``.
        responses: file of rows with ``response`` and ``id`` or ``prompt``.
        output: directory for ``scores.jsonl`` and ``summary.json``.
        data: the benchmark's file or hub id (overrides a SOURCE in ``benchmark`` and ``benchmark_dir``).
        benchmark_dir: folder with the benchmark files, for a bare name.
        judge: harm judge for safety benchmarks (None: Llama-Guard-3 on a GPU, else the offline judge).
        refusal_judge: refusal judge for over-refusal benchmarks (None: WildGuard on a GPU, else the offline judge).
        judge_sees: "response" (the whole response, reasoning included: the authors' protocol), "answer" (the
            text after the think block) or "trace" (reasoning + answer, think tags removed).
        answer_checker: how reasoning benchmarks read answers: "math_verify" (the text after the think block,
            math-verify) or "skythought" (SkyThought's reading of the whole generation, as the authors scored).

    Returns:
        The summary (also written to ``summary.json``).
    """
    spec = f"{benchmark.partition('=')[0]}={data}" if data else benchmark
    loaded = load_benchmark(spec, benchmark_dir)
    rows = read_records(responses)
    matched = _match(rows, loaded.items, loaded.name, str(loaded.source))

    groups: dict[str, list[int]] = {}  # item id -> its rows (samples), in file order
    for k, item in enumerate(matched):
        groups.setdefault(item.id, []).append(k)
    items = [matched[ks[0]] for ks in groups.values()]
    texts = [[rows[k].fields["response"] for k in ks] for ks in groups.values()]

    judges = Judges(judge, refusal_judge, judge_sees, answers=answer_checker)
    try:
        scored = loaded.benchmark.scorer.score(items, texts, judges)
    finally:
        judges.close()

    out_rows: list[dict] = [{} for _ in rows]
    for ks, per_item in zip(groups.values(), scored.samples):
        for k, verdict in zip(ks, per_item):
            out_rows[k] = {**rows[k].fields, **verdict}
    summary: dict[str, Any] = {"benchmark": loaded.name, "n": len(items), **scored.metrics}
    if judges.names():
        summary.update(judges=judges.names(), judge_sees=judge_sees)
    summary["protocol"] = {**judge_protocol(judges, {loaded.benchmark.kind}), **benchmark_protocol(loaded)}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "scores.jsonl", out_rows)
    write_json_atomic(out / "summary.json", summary)
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in scored.metrics.items() if isinstance(v, float))
    print(f"score: {loaded.name} ({metrics}); wrote {out / 'scores.jsonl'} and {out / 'summary.json'}", file=sys.stderr)
    return summary


def _match(rows: list[Record], items: list[Item], name: str, source: str) -> list[Item]:
    """The benchmark item of each row, by ``id`` or else ``prompt``."""
    by_id = {it.id: it for it in items}
    by_prompt: dict[str, Item] = {}
    for it in items:
        by_prompt.setdefault(it.prompt.strip(), it)
        if it.question is not None:
            by_prompt.setdefault(it.question.strip(), it)
    out = []
    for rec in rows:
        f = rec.fields
        if not isinstance(f.get("response"), str):
            raise UserError(f"{rec.where}: needs a string column 'response' (the model's full response).")
        if f.get("id") is not None and str(f["id"]).strip():
            key = str(f["id"]).strip()
            item = by_id.get(key)
            if item is None:
                sample = ", ".join(list(by_id)[:3])
                raise UserError(
                    f"{rec.where}: no {name} item has id {key!r} in {source} (ids there look like {sample}, …). "
                    "Check that the responses belong to this benchmark file."
                )
        elif isinstance(f.get("prompt"), str):
            item = by_prompt.get(f["prompt"].strip())
            if item is None:
                raise UserError(
                    f"{rec.where}: its prompt {f['prompt'][:80]!r} matches no {name} item in {source}. Check that "
                    "the responses belong to this benchmark file, or give each row the item's 'id'."
                )
        else:
            raise UserError(f"{rec.where}: needs 'id' or 'prompt' to be matched to a {name} item.")
        out.append(item)
    return out
