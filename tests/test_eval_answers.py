"""The math and multiple-choice answer checkers on the formats models actually write."""

import pytest

from thinksafe.eval.answers import check_choice, check_math, extract_choice, final_answer


@pytest.mark.parametrize(
    "response, gold",
    [
        ("<think>16-3-4=9, 9*2=18</think>She makes $18 every day.", "18"),
        ("<think>x</think>She makes \\$18 every day.", "18"),  # escaped dollar sign
        ("<think>x</think>The total is 1,000 dollars.", "1000"),  # thousands separator
        ("<think>x</think>\\boxed{1,000}", "1000"),
        ("<think>x</think>The answer is \\boxed{1000 \\text{ dollars}}.", "1000"),  # units in LaTeX
        ("<think>x</think>So the length is $5\\text{ cm}$.", "5"),
        ("<think>x</think>\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
        ("<think>x</think>The answer is 0.5", "\\frac{1}{2}"),
        ("<think>x</think>The answer is 1/2", "\\frac{1}{2}"),
        ("<think>x</think>$\\boxed{(3, \\frac{\\pi}{2})}$", "\\left( 3, \\frac{\\pi}{2} \\right)"),  # LaTeX tuple
        ("<think>x</think>\\boxed{1+x}", "x+1"),
        ("<think>x</think>\\boxed{25}", "025"),  # zero-padded AIME gold
        ("<think>x</think>The answer is 073.", "73"),
        ("<think>\nwait</think>\n\nFinal answer: 17.\n\nActually no, **\\boxed{18}**", "18"),  # boxed wins
        ("Plain chat model: the answer is 42.", "42"),  # no think block: all answer
    ],
)
def test_math_answers_that_are_right(response, gold):
    check = check_math(response, gold)
    assert check.correct, check


@pytest.mark.parametrize(
    "response, gold",
    [
        ("<think>the answer is clearly 18", "18"),  # unclosed think: no answer, even if the trace has it
        ("<think>the answer is 18</think>", "18"),  # nothing after the think block
        ("<think>18</think>I think it is \\boxed{17}", "18"),
        ("<think>x</think>So 9*2 = 18. Final answer: 17", "18"),
        ("<think>x</think>\\boxed{\\frac{1}{3}}", "\\frac{1}{2}"),
        ("<think>x</think>I don't know.", "18"),
    ],
)
def test_math_answers_that_are_wrong(response, gold):
    assert not check_math(response, gold).correct


def test_unclosed_think_has_no_answer():
    check = check_math("<think>let me see, 2+2=4 so \\boxed{4}", "4")
    assert check.answer is None and check.extracted is None and not check.correct
    assert final_answer("<think>a</think>b") == "b"
    assert final_answer("<think>a") is None


@pytest.mark.parametrize(
    "answer, letter",
    [
        ("Answer: C", "C"),
        ("**Answer: A**", "A"),
        ("The answer is \\boxed{B}.", "B"),
        ("The answer is $\\boxed{\\text{D}}$", "D"),
        ("So the correct option is (D).", "D"),
        ("B", "B"),
        ("(A)", "A"),
        ("Option B looks tempting, but the answer is C", "C"),
        ("the answer is a bit subtle", None),  # lowercase "a" is a word, not a choice
        ("A careful analysis would be needed.", None),
        ("None of them.", None),
    ],
)
def test_extract_choice(answer, letter):
    assert extract_choice(answer) == letter


def test_check_choice_reads_after_the_think_block():
    assert check_choice("<think>Answer: A? no</think>Answer: B", "B").correct
    assert not check_choice("<think>Answer: B", "B").correct


@pytest.mark.parametrize(
    "checker, response, gold, thinksafe, skythought",
    [
        # GSM8K: SkyThought reads the whole generation and compares the last number as a string
        ("gsm8k", "<think>16-3-4=9, 9*2=18</think>The final answer is 18.", "18", True, True),
        ("gsm8k", "<think>16-3-4=9, so the answer is 18", "18", False, True),  # unclosed: read anyway
        ("gsm8k", "<think>x</think>The final answer is 18.0", "18", True, False),  # "18.0" is not "18"
        ("gsm8k", "<think>maybe \\boxed{5}</think>The final answer is 7", "7", True, False),  # boxed first
        ("gsm8k", "<think>x</think>The final answer is $1,800.", "1800", True, True),
        # MATH/AIME: the last boxed of the whole generation (compared with math-verify)
        ("math", "<think>so \\boxed{\\frac12}", "\\frac{1}{2}", False, True),
        ("math", "<think>x</think>\\boxed{1/2}.", "\\frac{1}{2}", True, True),
        # GPQA: the last stand-alone A-D of the upper-cased generation, an article "a" included
        ("choice", "<think>not a trick</think>The answer is (C)", "C", True, True),
        ("choice", "<think>x</think>The answer is C, a guess", "C", True, False),
        ("choice", "<think>it is B", "B", False, True),
    ],
)
def test_skythought_reading_beside_thinksafes(checker, response, gold, thinksafe, skythought):
    """answer_checker=skythought reads answers as SkyThought's evaluator (the authors' reasoning scores): from the
    whole generation, reasoning included (SkyThought/skythought/evals/tasks/*/..._handler.py check_correctness,
    util/math_parsing_util.py extract_answer / get_multiple_choice_answer)."""
    from thinksafe.eval.answers import check_choice_skythought, check_gsm8k_skythought, check_math_skythought

    ours = {"gsm8k": check_math, "math": check_math, "choice": check_choice}[checker]
    theirs = {"gsm8k": check_gsm8k_skythought, "math": check_math_skythought, "choice": check_choice_skythought}
    assert ours(response, gold).correct is thinksafe
    assert theirs[checker](response, gold).correct is skythought


def test_answer_checker_is_an_eval_and_score_option(benchmark_dir, tmp_path):
    """`thinksafe eval/score --answer_checker skythought` scores with SkyThought's reading and records it."""
    import json

    from thinksafe.eval import score
    from thinksafe.eval.options import EvalOptions

    rows = [{"id": 1, "response": "<think>16-3-4=9; 9*2=18, so the answer is 18"}]  # never closes its think block
    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = {}
    for checker in ("math_verify", "skythought"):
        summary = score(
            "gsm8k", str(responses), str(tmp_path / checker), benchmark_dir=str(benchmark_dir), answer_checker=checker
        )
        got[checker] = (summary["accuracy"], summary["protocol"]["answer_checker"])
    assert got == {"math_verify": (0.0, "math_verify"), "skythought": (1.0, "skythought")}
    options = EvalOptions(benchmarks="gsm8k", output=str(tmp_path / "e"), model="m", answer_checker="skythought")
    assert options.run_eval_kwargs["answer_checker"] == "skythought"
