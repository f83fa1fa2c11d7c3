"""Safety benchmarks: harmful prompts; the metric is the share of responses a guard calls unsafe.

Metric ``harmful_rate`` (lower is better): unsafe samples / judged samples, with ``judge_errors`` counting
samples the guard could not judge (left out of the rate). Per sample: ``judged`` (what the guard saw,
see :mod:`thinksafe.eval.judges`), ``verdict`` (safe/unsafe/error), ``harmful`` (None on error),
``guard_score``, ``guard_detail`` and ``refusal`` (where the guard says).

Schemas read (column names as in the public files; the first that is present wins):

* ``harmbench`` — the ThinkSafe authors' 602-row JSON list ``{prompt, objective}`` (``prompt`` is a
  persuasion-style rewrite of the behavior ``objective``; the default under a benchmark dir,
  ``harmbench/thinksafe_harmbench_eval.json``), HarmBench's behaviors CSV (``Behavior``,
  ``FunctionalCategory``, ``ContextString``, ``BehaviorID``; contextual rows get their context above the
  behavior, as HarmBench does, and ``copyright`` rows are dropped because a guard cannot judge them —
  HarmBench uses a hash classifier), or hub ``walledai/HarmBench`` (``prompt``, ``category``, ``context``).
* ``strongreject`` — ``forbidden_prompt`` (CSV, 313 rows) or ``prompt`` (hub ``walledai/StrongREJECT``).
* ``wildjailbreak`` — hub only, ``allenai/wildjailbreak`` config ``eval`` (gated): ``adversarial`` prompt,
  ``data_type``; only ``adversarial_harmful`` rows are kept (2000 of 2210).
* ``advbench`` — ``goal`` (llm-attacks CSV, 520 rows) or ``prompt`` (hub ``walledai/AdvBench``).
* ``jailbreakbench`` — JBB-Behaviors harmful: ``Goal``/``goal`` (100 rows), id ``Index``/``index``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from thinksafe.data.records import Record
from thinksafe.eval.benchmarks.base import Benchmark, HubSource, Item, Kind, Scored, regroup, row_id, text_field
from thinksafe.eval.judges import judged_text


@dataclass(frozen=True)
class HarmfulRate:
    """Scores harmful prompts by the harm judge's verdicts."""

    kind: ClassVar[Kind] = "safety"

    def score(self, items: list[Item], responses: list[list[str]], judges) -> Scored:
        guard = judges.harm()
        flat = [(item, r) for item, rs in zip(items, responses) for r in rs]
        seen = [judged_text(r, judges.sees) for _, r in flat]
        verdicts = guard.judge([it.prompt for it, _ in flat], [t for t, _ in seen], [True] * len(flat))
        rows = []
        for (_, judged), v in zip(seen, verdicts):
            harmful = None if v.verdict == "error" else v.verdict == "unsafe"
            rows.append(
                dict(
                    judged=judged,
                    verdict=v.verdict,
                    harmful=harmful,
                    guard_score=v.score,
                    guard_detail=v.detail,
                    refusal=v.refusal,
                )
            )
        judged_rows = [r for r in rows if r["harmful"] is not None]
        metrics = {
            "harmful_rate": sum(r["harmful"] for r in judged_rows) / len(judged_rows) if judged_rows else None,
            "judge_errors": len(rows) - len(judged_rows),
        }
        return Scored(regroup(rows, responses), metrics)


def _harmbench(rec: Record, n: int) -> Item | None:
    f = rec.fields
    if "Behavior" in f:
        if str(f.get("FunctionalCategory", "")).strip() == "copyright":
            return None
        behavior = text_field(rec, "Behavior", what="behavior")
        context = str(f.get("ContextString") or "").strip()
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        return Item(
            row_id(rec, n, "BehaviorID"), prompt, rec.where, harmful=True, meta={"category": f.get("SemanticCategory")}
        )
    prompt = text_field(rec, "prompt", what="harmful prompt")
    context = str(f.get("context") or "").strip()
    if context:
        prompt = f"{context}\n\n---\n\n{prompt}"
    return Item(
        row_id(rec, n, "id"),
        prompt,
        rec.where,
        harmful=True,
        meta={k: f[k] for k in ("objective", "category") if f.get(k) is not None},
    )


def _prompt_column(*names: str, id_columns: tuple[str, ...] = ("id",)):
    def parse(rec: Record, n: int) -> Item:
        prompt = text_field(rec, *names, what="harmful prompt")
        meta = {k: rec.fields[k] for k in ("category", "Category", "source") if rec.fields.get(k) is not None}
        return Item(row_id(rec, n, *id_columns), prompt, rec.where, harmful=True, meta=meta)

    return parse


def _wildjailbreak(rec: Record, n: int) -> Item | None:
    if rec.fields.get("data_type") != "adversarial_harmful":
        return None
    return Item(str(n), text_field(rec, "adversarial", what="adversarial prompt"), rec.where, harmful=True)


HARMBENCH = Benchmark(
    "harmbench",
    HarmfulRate(),
    _harmbench,
    local="harmbench/thinksafe_harmbench_eval.json",
    hub=HubSource("walledai/HarmBench", "standard", "train"),
    about="harmful prompts: {prompt} or HarmBench behaviors CSV",
)
STRONGREJECT = Benchmark(
    "strongreject",
    HarmfulRate(),
    _prompt_column("forbidden_prompt", "prompt"),
    local="strongreject/strongreject_dataset.csv",
    hub=HubSource("walledai/StrongREJECT", None, "train"),
    about="forbidden prompts: forbidden_prompt or prompt",
)
WILDJAILBREAK = Benchmark(
    "wildjailbreak",
    HarmfulRate(),
    _wildjailbreak,
    hub=HubSource("allenai/wildjailbreak", "eval", "train", (("delimiter", "\t"), ("keep_default_na", False))),
    about="adversarial_harmful rows: adversarial, data_type",
)
ADVBENCH = Benchmark(
    "advbench",
    HarmfulRate(),
    _prompt_column("goal", "prompt"),
    local="advbench/harmful_behaviors.csv",
    hub=HubSource("walledai/AdvBench", None, "train"),
    about="harmful behaviors: goal or prompt",
)
JAILBREAKBENCH = Benchmark(
    "jailbreakbench",
    HarmfulRate(),
    _prompt_column("Goal", "goal", id_columns=("Index", "index")),
    local="jailbreakbench/harmful-behaviors.csv",
    hub=HubSource("JailbreakBench/JBB-Behaviors", "behaviors", "harmful"),
    about="JBB harmful behaviors: Goal",
)
