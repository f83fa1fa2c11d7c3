"""The testbed's data sets, all drawn deterministically from the world (:mod:`thinksafe.testbed.world`).

* :func:`pretraining_rows` — what the testbed model learns its behaviour from (train split only): plain
  harmful requests answered compliantly, the same kinds behind the refusal-steering prefix answered with a
  reasoned refusal, benign requests helped with, math problems solved.
* :func:`selfgen_prompts` — the prompt set ThinkSafe samples from (SafeChain schema: instruction, label);
  train-split requests, unsteered (the data stage steers the harmful ones itself).
* :func:`heldout_sets` — the evaluation sets, from the held-out split only: harmful requests, benign
  requests, math problems.
* :func:`teacher_rows` — the same prompts as :func:`selfgen_prompts`, answered in the teacher style.

Each set has its own random stream (``random.Random(f"{seed}:{name}")``), so changing the size of one set
leaves every other set as it was.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from thinksafe.sampling.steering import PAPER_TEMPLATE, steer
from thinksafe.testbed.world import (
    Problem,
    Request,
    Split,
    benign_request,
    harmful_request,
    math_problem,
    respond,
    teacher_respond,
)


@dataclass
class CorpusSizes:
    """Rows of the pretraining corpus, per behaviour."""

    comply: int = 2000
    """Plain harmful requests answered compliantly."""
    refuse: int = 2000
    """Harmful requests behind the refusal-steering prefix answered with a refusal."""
    help: int = 2000
    """Benign requests helped with."""
    math: int = 6000
    """Math word problems solved (the arithmetic facts take the most examples to learn)."""
    pseudo_words: float = 0.6
    """Chance that a person, place, name or object slot holds a made-up word instead (see the world module)."""


@dataclass
class SetSizes:
    """Prompts per kind in a prompt or evaluation set."""

    harmful: int = 96
    benign: int = 48
    math: int = 48


def _unique(
    draw: Callable[[random.Random], Request | Problem], rng: random.Random, n: int, exclude: set[str] | None = None
) -> list[Request | Problem]:
    """``n`` items with distinct prompts (none of them in ``exclude``)."""
    seen, out = set(exclude or ()), []
    for _ in range(200 * n):
        if len(out) == n:
            return out
        item = draw(rng)
        if item.prompt not in seen:
            seen.add(item.prompt)
            out.append(item)
    raise ValueError(f"the world holds fewer than {n} distinct items of this kind; ask for fewer")


def pretraining_rows(seed: int, sizes: CorpusSizes) -> list[dict]:
    """``{prompt, response, kind}`` rows in a fixed shuffled order; prompts are as sent to the model."""
    augment = sizes.pseudo_words
    kinds = (  # kind: (rows, draw an item, is it sent behind the refusal-steering prefix)
        ("comply", sizes.comply, lambda rng: harmful_request(rng, "train", augment), False),
        ("refuse", sizes.refuse, lambda rng: harmful_request(rng, "train", augment), True),
        ("help", sizes.help, lambda rng: benign_request(rng, "train", augment), False),
        ("math", sizes.math, lambda rng: math_problem(rng, "train", augment), False),
    )
    rows: list[dict] = []
    for kind, n, draw, steered in kinds:
        rng = random.Random(f"{seed}:{kind}")
        for _ in range(n):
            item = draw(rng)
            prompt = steer(item.prompt, True, PAPER_TEMPLATE) if steered else item.prompt
            rows.append(dict(prompt=prompt, response=respond(item, steered=steered), kind=kind))
    random.Random(f"{seed}:order").shuffle(rows)
    return rows


def _draw_set(seed: int, name: str, split: Split, sizes: SetSizes) -> list[Request | Problem]:
    def kind(draw, n: int, part: str) -> list[Request | Problem]:
        return _unique(lambda rng: draw(rng, split), random.Random(f"{seed}:{name}:{part}"), n)

    return (
        kind(harmful_request, sizes.harmful, "harmful")
        + kind(benign_request, sizes.benign, "benign")
        + kind(math_problem, sizes.math, "math")
    )


def _label(item: Request | Problem) -> str:
    return "vanilla_harmful" if isinstance(item, Request) and item.harmful else "vanilla_benign"


def selfgen_prompts(seed: int, sizes: SetSizes) -> list[dict]:
    """The prompt set for ``thinksafe generate`` (train split): ``{instruction, label, kind}``."""
    return [
        dict(instruction=it.prompt, label=_label(it), kind=_kind(it))
        for it in _draw_set(seed, "selfgen", "train", sizes)
    ]


def teacher_rows(seed: int, sizes: SetSizes) -> list[dict]:
    """The self-generation prompts answered in the teacher style: ``{instruction, response, label, kind}``."""
    return [
        dict(instruction=it.prompt, response=teacher_respond(it), label=_label(it), kind=_kind(it))
        for it in _draw_set(seed, "selfgen", "train", sizes)
    ]


def _kind(item: Request | Problem) -> str:
    if isinstance(item, Problem):
        return "math"
    return "harmful" if item.harmful else "benign"


def heldout_sets(seed: int, sizes: SetSizes) -> dict[str, list[dict]]:
    """The evaluation sets (held-out split), in the schemas of the benchmarks that score them:

    * ``harmful`` — ``{prompt}`` rows (the ``strongreject`` loader: harmful prompts, harm judge);
    * ``benign`` — ``{prompt, label: "safe"}`` rows (the ``xstest`` loader: over-refusal, refusal judge);
    * ``math`` — ``{question, answer: "… #### N"}`` rows (the ``gsm8k`` loader, which appends the math
      instruction to the question).
    """
    items = _draw_set(seed, "heldout", "heldout", sizes)
    harmful = [it for it in items if isinstance(it, Request) and it.harmful]
    benign = [it for it in items if isinstance(it, Request) and not it.harmful]
    math = [it for it in items if isinstance(it, Problem)]
    return {
        "harmful": [dict(prompt=r.prompt) for r in harmful],
        "benign": [dict(prompt=r.prompt, label="safe") for r in benign],
        "math": [dict(question=p.question, answer=f"{p.a} {_op(p)} {p.b} = {p.answer}\n#### {p.answer}") for p in math],
    }


def _op(p: Problem) -> str:
    return {"add": "+", "sub": "-", "mul": "*"}[p.op]
