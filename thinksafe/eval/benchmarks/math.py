"""Math benchmarks: the answer after the think block, checked against the reference with math-verify.

Metric ``accuracy`` = pass@1 averaged over the ``n`` samples of each question (mean over questions of the
share of correct samples); ``no_answer_rate`` is the share of samples with no final answer (think block
never closed, or nothing after it). Per sample: ``extracted`` (what was read from the answer),
``correct``, ``has_answer``. See :mod:`thinksafe.eval.answers` for the equivalence rules.

Prompts are SkyThought's task templates, which the ThinkSafe authors evaluate with (``skythought evaluate
--task …`` in their ``scripts/*/inference.sh``; ``SkyThought/skythought/evals/tasks/*/*.yaml`` in their
repository): :data:`GSM8K_TEMPLATE` for GSM8K, :data:`MATH_TEMPLATE` for MATH-500 and AIME24.
``gsm8k_boxed`` is GSM8K with :func:`math_prompt` instead (``{question}`` + DeepSeek-R1's "Please reason step by
step, and put your final answer within \\boxed{}."): the offline testbed's format. Answers are
checked with math-verify on the text after the think block (SkyThought's checkers differ in detail: GSM8K
takes the last number of the whole generation, MATH the last ``\\boxed{}``).

Schemas read:

* ``gsm8k`` — ``question``, ``answer`` whose last line is ``#### N`` (N may hold commas); 1319 test rows
  (hub ``openai/gsm8k`` config ``main``).
* ``math500`` — ``problem``, ``answer`` (LaTeX), id ``unique_id``; 500 rows (hub ``HuggingFaceH4/MATH-500``).
* ``aime24`` — ``problem``/``Problem``, ``answer``/``Answer`` (a string, sometimes zero-padded: "025"),
  id ``id``; 30 rows (hub ``HuggingFaceH4/aime_2024``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from thinksafe.data.records import Record
from thinksafe.errors import UserError
from thinksafe.eval.answers import AnswerCheck, check_gsm8k_skythought, check_math, check_math_skythought
from thinksafe.eval.benchmarks.base import Benchmark, HubSource, Item, Kind, Scored, row_id, text_field

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
#: SkyThought tasks/math/math500.yaml and tasks/aime/aime24.yaml (``{{}}`` there is str.format's escape)
MATH_TEMPLATE = "Please reason step by step, and put your final answer within \\boxed{{}}. {problem}"
#: SkyThought tasks/gsm8k/gsm8k.yaml
GSM8K_TEMPLATE = (
    "Given the following problem, reason and give a final answer to the problem.\nProblem: {question}\nYour "
    'response should end with "The final answer is [answer]" where [answer] is the response to the problem.'
)


@dataclass(frozen=True)
class PassAtOne:
    """Checks every sample against the item's ``gold``; no judge involved."""

    check: Callable[[str, str], AnswerCheck] = check_math
    skythought: Callable[[str, str], AnswerCheck] = check_math_skythought
    """The check under ``answer_checker: skythought`` (SkyThought's reading of the whole generation)."""
    kind: ClassVar[Kind] = "reasoning"
    formula: ClassVar[str] = (
        "accuracy = mean over questions of (correct samples / samples), the answer after the think block "
        "checked against the reference; no_answer_rate = samples without an answer / all samples"
    )

    def score(self, items: list[Item], responses: list[list[str]], judges=None) -> Scored:
        samples, per_item, no_answer, total = [], [], 0, 0
        check = self.skythought if getattr(judges, "answers", "math_verify") == "skythought" else self.check
        for item, rs in zip(items, responses):
            rows = []
            for r in rs:
                c = check(r, item.gold or "")
                has_answer = c.answer is not None and bool(c.answer.strip())
                rows.append(dict(extracted=c.extracted, correct=c.correct, has_answer=has_answer))
                no_answer += not has_answer
            total += len(rs)
            samples.append(rows)
            if rows:
                per_item.append(sum(r["correct"] for r in rows) / len(rows))
        metrics = {
            "accuracy": sum(per_item) / len(per_item) if per_item else None,
            "no_answer_rate": no_answer / total if total else None,
        }
        return Scored(samples, metrics)


def math_prompt(problem: str) -> str:
    """``{problem}`` + DeepSeek-R1's recommended math instruction: the ``gsm8k_boxed`` prompt, the one the
    offline testbed's model was pretrained on (its vocabulary has no words of SkyThought's templates)."""
    return f"{problem}\n{MATH_INSTRUCTION}"


def _gsm8k(rec: Record, n: int) -> Item:
    question = text_field(rec, "question", what="question")
    solution = text_field(rec, "answer", what="answer")
    if "####" not in solution:
        raise UserError(f"{rec.where}: GSM8K answer must end in '#### N' (the final number); got {solution[-60:]!r}.")
    gold = solution.rsplit("####", 1)[1].strip().replace(",", "")
    prompt = GSM8K_TEMPLATE.format(question=question)
    return Item(row_id(rec, n, "id"), prompt, rec.where, gold=gold, question=question)


def _gsm8k_boxed(rec: Record, n: int) -> Item:
    item = _gsm8k(rec, n)
    return Item(item.id, math_prompt(item.question or ""), item.where, gold=item.gold, question=item.question)


def _problem_answer(*id_columns: str):
    def parse(rec: Record, n: int) -> Item:
        problem = text_field(rec, "problem", "Problem", what="problem")
        gold = text_field(rec, "answer", "Answer", what="answer")
        return Item(
            row_id(rec, n, *id_columns),
            MATH_TEMPLATE.format(problem=problem),
            rec.where,
            gold=gold,
            question=problem,
            meta={k: rec.fields[k] for k in ("subject", "level") if rec.fields.get(k) is not None},
        )

    return parse


GSM8K = Benchmark(
    "gsm8k",
    PassAtOne(skythought=check_gsm8k_skythought),
    _gsm8k,
    local="gsm8k/test.jsonl",
    hub=HubSource("openai/gsm8k", "main", "test"),
    about="grade-school math: question, answer ending in '#### N'",
    template=GSM8K_TEMPLATE,
)
GSM8K_BOXED = Benchmark(
    "gsm8k_boxed",
    PassAtOne(skythought=check_gsm8k_skythought),
    _gsm8k_boxed,
    local="gsm8k/test.jsonl",
    hub=HubSource("openai/gsm8k", "main", "test"),
    about="GSM8K rows sent as question + R1's boxed-answer instruction (the testbed's format)",
    template="{question}\n" + MATH_INSTRUCTION,
)
MATH500 = Benchmark(
    "math500",
    PassAtOne(),
    _problem_answer("unique_id", "id"),
    local="math500/test.jsonl",
    hub=HubSource("HuggingFaceH4/MATH-500", None, "test"),
    about="competition math: problem, answer",
    template=MATH_TEMPLATE.replace("{{}}", "{}"),
)
AIME24 = Benchmark(
    "aime24",
    PassAtOne(),
    _problem_answer("id", "ID"),
    local="aime24/test.jsonl",
    hub=HubSource("HuggingFaceH4/aime_2024", None, "train"),
    about="AIME 2024: problem, answer",
    template=MATH_TEMPLATE.replace("{{}}", "{}"),
)
