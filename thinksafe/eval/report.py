"""What an evaluation writes: per-sample rows, ``results.json``, ``results.md`` and TensorBoard scalars.

``results.json`` is ``{benchmark: {metric: value, …, "n": items evaluated}, …, "protocol": {…}}`` (the
protocol: see :mod:`thinksafe.eval.runner`); ``results.md`` is the metrics as a table; ``<benchmark>.jsonl``
holds one row per sample (``id``, ``sample``, ``prompt``, ``response`` and the benchmark's verdict fields),
which ``thinksafe score`` can read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from thinksafe.eval.benchmarks import Item, Scored
from thinksafe.files import write_json_atomic, write_text_atomic

Results = dict[str, dict[str, Any]]


def sample_rows(items: list[Item], responses: list[list[dict]], scored: Scored | None = None) -> list[dict]:
    """One row per sample. ``responses`` holds ``{response, finish_reason, num_tokens}`` per sample."""
    rows = []
    for i, (item, samples) in enumerate(zip(items, responses)):
        for j, sample in enumerate(samples):
            row: dict[str, Any] = {"id": item.id, "sample": j, "prompt": item.prompt, **sample}
            if item.gold is not None:
                row["gold"] = item.gold
            if item.harmful is not None:
                row["harmful_prompt"] = item.harmful
            if scored is not None:
                row.update(scored.samples[i][j])
            rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    import json

    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def markdown_table(results: Results) -> str:
    lines = ["| benchmark | metric | value | n |", "|---|---|---|---|"]
    for name, metrics in results.items():
        for metric, value in metrics.items():
            if metric != "n":
                lines.append(f"| {name} | {metric} | {_fmt(value)} | {metrics.get('n', '')} |")
    return "\n".join(lines) + "\n"


def write_results(
    out: str | Path, results: Results, tensorboard: bool = True, protocol: dict[str, Any] | None = None
) -> None:
    out = Path(out)
    write_json_atomic(out / "results.json", {**results, "protocol": protocol} if protocol is not None else results)
    table = markdown_table(results)
    write_text_atomic(out / "results.md", table)
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out / "tensorboard")) as writer:
            for name, metrics in results.items():
                for metric, value in metrics.items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        writer.add_scalar(f"eval/{name}/{metric}", value, 0)
            writer.add_text("eval/results", table, 0)
