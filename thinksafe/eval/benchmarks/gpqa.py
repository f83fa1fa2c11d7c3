"""GPQA-Diamond: graduate-level multiple choice, options shuffled with a fixed seed.

Hub only (``Idavidrein/gpqa`` config ``gpqa_diamond``, gated; 198 rows), or a local copy with the same
columns: ``Question``, ``Correct Answer``, ``Incorrect Answer 1``–``3``, id ``Record ID``. Each row's four
options are shuffled by a ``random.Random`` seeded with :data:`SHUFFLE_SEED` and the row id, so a row gets the
same order in every run, whatever the file order or ``--limit`` (SkyThought shuffles with the unseeded
global ``random``, so the authors' order differs from run to run). The prompt is SkyThought's GPQA template
(``tasks/gpqa_diamond/gpqa_diamond.yaml`` and its handler: the question, a newline, then
``A) …, B) …, C) …, D) …``), which asks for the letter in ``\\boxed{}``;
:func:`thinksafe.eval.answers.extract_choice` reads the letter (``\\boxed{X}``, "answer is X", "(X)").
Metric: ``accuracy`` (pass@1 averaged over samples), as for math.
"""

from __future__ import annotations

import random

from thinksafe.data.records import Record
from thinksafe.eval.answers import CHOICES, check_choice, check_choice_skythought
from thinksafe.eval.benchmarks.base import Benchmark, HubSource, Item, row_id, text_field
from thinksafe.eval.benchmarks.math import PassAtOne

SHUFFLE_SEED = 0

#: SkyThought tasks/gpqa_diamond/gpqa_diamond.yaml; {prompt} is the question + "\n" + the lettered options
PROMPT = (
    "Return your final response within \\boxed{{}} and only include the letter choice (A, B, C, or D) as your "
    "final response. {prompt}"
)


def shuffled_options(correct: str, incorrect: list[str], key: str) -> tuple[list[str], str]:
    """The four options in this row's fixed order, and the letter of the correct one."""
    options = [correct, *incorrect]
    order = list(range(4))
    random.Random(f"{SHUFFLE_SEED}:{key}").shuffle(order)
    return [options[i] for i in order], CHOICES[order.index(0)]


def _gpqa(rec: Record, n: int) -> Item:
    question = text_field(rec, "Question", "question", what="question")
    correct = text_field(rec, "Correct Answer", what="correct answer")
    incorrect = [text_field(rec, f"Incorrect Answer {i}", what=f"incorrect answer {i}") for i in (1, 2, 3)]
    rid = row_id(rec, n, "Record ID", "id")
    options, gold = shuffled_options(correct, incorrect, rid)
    lettered = ", ".join(f"{letter}) {option}" for letter, option in zip(CHOICES, options))
    prompt = PROMPT.format(prompt=f"{question}\n{lettered}")
    return Item(rid, prompt, rec.where, gold=gold, question=question, meta={"options": options})


GPQA_DIAMOND = Benchmark(
    "gpqa_diamond",
    PassAtOne(check_choice, check_choice_skythought),
    _gpqa,
    hub=HubSource("Idavidrein/gpqa", "gpqa_diamond", "train"),
    about="GPQA: Question, Correct Answer, Incorrect Answer 1-3",
    template=PROMPT.replace("{{}}", "{}").replace("{prompt}", "{Question}\nA) …, B) …, C) …, D) …"),
)
