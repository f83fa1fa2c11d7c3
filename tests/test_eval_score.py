"""`score`: re-scoring saved responses against the real benchmark files, with no model."""

import json

import pytest

from thinksafe.errors import UserError
from thinksafe.eval import score


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gsm8k_by_id_and_by_question(benchmark_dir, tmp_path):
    question_2 = (
        "A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?"
    )
    rows = [
        {"id": 1, "response": "<think>16-3-4=9; 9*2=18</think>She makes \\$18 a day.", "run": "a"},
        {"id": "1", "response": "<think>16-3-4=9; 9*2=18", "run": "b"},  # unclosed: no answer
        {"prompt": question_2, "response": "<think>2 + 1</think>\\boxed{3}", "run": "a"},
    ]
    responses = write_jsonl(tmp_path / "responses.jsonl", rows)
    summary = score("gsm8k", str(responses), str(tmp_path / "out"), benchmark_dir=str(benchmark_dir))
    # item 1: 1 of 2 samples right; item 2: right  -> pass@1 averaged over samples = (0.5 + 1) / 2
    protocol = summary.pop("protocol")
    assert summary == {"benchmark": "gsm8k", "n": 2, "accuracy": 0.75, "no_answer_rate": pytest.approx(1 / 3)}
    assert protocol["kind"] == "reasoning" and protocol["template"].startswith("Given the following problem")
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == {**summary, "protocol": protocol}
    scores = read_jsonl(tmp_path / "out" / "scores.jsonl")
    assert [(r["run"], r["correct"], r["has_answer"]) for r in scores] == [
        ("a", True, True),
        ("b", False, False),
        ("a", True, True),
    ]
    assert scores[0]["extracted"] == "18" and scores[0]["response"] == rows[0]["response"]


def test_xstest_over_refusal_from_a_csv(benchmark_dir, tmp_path):
    responses = tmp_path / "responses.csv"
    responses.write_text(
        "id,response\n"
        '1,"<think>a program</think>Run `kill <pid>`."\n'
        "2,\"<think>hmm</think>I'm sorry, but I can't help with that.\"\n"
    )
    data = benchmark_dir / "xstest" / "xstest_prompts.csv"
    summary = score("xstest", str(responses), str(tmp_path / "out"), data=str(data))
    assert summary["over_refusal_rate"] == 0.5 and summary["n"] == 2
    assert summary["judges"] == {"refusal_judge": "offline"} and summary["judge_sees"] == "response"
    assert summary["protocol"]["judge_reads"] == "response" and summary["protocol"]["refusal_judge"] == "offline"
    assert [r["refusal"] for r in read_jsonl(tmp_path / "out" / "scores.jsonl")] == [False, True]


def test_harmful_rate_on_strongreject(benchmark_dir, tmp_path):
    responses = write_jsonl(
        tmp_path / "r.jsonl",
        [
            {"id": 1, "response": "<think>no</think>I can't help with that."},
            {"id": 2, "response": "<think>ok</think>Sure, here is a bot: Step 1, write the code."},
        ],
    )
    summary = score("strongreject", str(responses), str(tmp_path / "out"), benchmark_dir=str(benchmark_dir))
    assert summary["harmful_rate"] == 0.5 and summary["judge_errors"] == 0
    assert [r["harmful"] for r in read_jsonl(tmp_path / "out" / "scores.jsonl")] == [False, True]


def test_unmatched_rows_name_their_line(benchmark_dir, tmp_path):
    bench = str(benchmark_dir)
    responses = write_jsonl(tmp_path / "r.jsonl", [{"id": 1, "response": "x"}, {"id": 99999, "response": "y"}])
    with pytest.raises(UserError, match=r"r.jsonl:2: no gsm8k item has id '99999'"):
        score("gsm8k", str(responses), str(tmp_path / "out"), benchmark_dir=bench)
    responses = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is the airspeed of a swallow?", "response": "x"}])
    with pytest.raises(UserError, match=r"p.jsonl:1: its prompt 'What is the airspeed.*matches no gsm8k item"):
        score("gsm8k", str(responses), str(tmp_path / "out"), benchmark_dir=bench)
    responses = write_jsonl(tmp_path / "n.jsonl", [{"id": 1, "text": "x"}])
    with pytest.raises(UserError, match=r"n.jsonl:1: needs a string column 'response'"):
        score("gsm8k", str(responses), str(tmp_path / "out"), benchmark_dir=bench)
    assert not (tmp_path / "out").exists()
