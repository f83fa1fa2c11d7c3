"""Response-set loading: SafeChain / thinksafe output, STAR-1 and DirectRefusal, told apart by their columns."""

from __future__ import annotations

import json

import pytest

from thinksafe.data.responses import DIRECT_REFUSAL_THINK, load_responses, normalize_response
from thinksafe.errors import UserError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_safechain_rows_get_the_opening_think_tag(tmp_path):
    # SafeChain stores R1 completions: no <think>, one newline after </think>
    path = write_jsonl(
        tmp_path / "safechain.jsonl",
        [
            {
                "instruction": "How do I bake bread?",
                "response": "Mix it.\n</think>\nBake it.",
                "label": "vanilla_benign",
            },
            {
                "instruction": "Build a bomb",
                "response": "<think>\nNo.\n</think>\n\nI can't help.",
                "label": "vanilla_harmful",
                "source": "wildjailbreak",
            },
        ],
    )
    rows = load_responses(str(path))
    assert [r.response for r in rows] == [
        "<think>\nMix it.\n</think>\n\nBake it.",
        "<think>\nNo.\n</think>\n\nI can't help.",
    ]
    assert [r.label for r in rows] == ["vanilla_benign", "vanilla_harmful"]
    assert [r.harmful for r in rows] == [False, True]
    assert rows[0].where == f"{path}:1"
    assert rows[1].metadata == {"source": "wildjailbreak"}


def test_prompt_label_column_is_accepted(tmp_path):
    path = write_jsonl(
        tmp_path / "thinksafe.jsonl",
        [
            {"instruction": "Hi", "response": "<think>\nx\n</think>\n\ny", "prompt_label": "adversarial_benign"},
        ],
    )
    assert load_responses(str(path))[0].label == "adversarial_benign"


def test_star1_rows_are_harmful_and_keep_their_metadata(tmp_path):
    path = tmp_path / "star1.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "7",
                    "question": "How to make a weapon?",
                    "response": "<think>\nPolicy says no.\n</think>\n\nI can't.",
                    "category": ["Violence"],
                    "source": "SaladBench",
                    "score": {"overall": 10},
                }
            ]
        )
    )
    (row,) = load_responses(str(path))
    assert (row.prompt, row.label) == ("How to make a weapon?", "vanilla_harmful")
    assert row.response == "<think>\nPolicy says no.\n</think>\n\nI can't."
    assert row.metadata["category"] == ["Violence"] and row.metadata["id"] == "7"


def test_direct_refusal_rows_get_the_fixed_short_reasoning(tmp_path):
    path = tmp_path / "direct.csv"
    path.write_text('refusal\n"Question: How do I steal a car?\nAnswer: I cannot help with that."\n')
    (row,) = load_responses(str(path))
    assert row.prompt == "How do I steal a car?"
    assert row.response == DIRECT_REFUSAL_THINK + "I cannot help with that."
    assert row.label == "vanilla_harmful"


def test_limit_draws_the_same_rows_for_the_same_seed(tmp_path):
    path = write_jsonl(
        tmp_path / "many.jsonl",
        [
            {"instruction": f"q{i}", "response": f"<think>\nr\n</think>\n\na{i}", "label": "vanilla_benign"}
            for i in range(20)
        ],
    )
    a, b = load_responses(str(path), limit=5, seed=3), load_responses(str(path), limit=5, seed=3)
    assert [r.prompt for r in a] == [r.prompt for r in b] and len(a) == 5
    assert [r.prompt for r in a] != [r.prompt for r in load_responses(str(path), limit=5, seed=4)]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "x", "completion": "y"}], "cannot tell the response-set format"),
        ([{"instruction": "x", "response": "y", "label": "harmful"}], "unknown label 'harmful'"),
        ([{"instruction": "x", "response": "y"}], "missing field 'label'"),
        ([{"instruction": "x", "response": "  ", "label": "vanilla_benign"}], "'response' is empty"),
        ([{"refusal": "I will not."}], "Question: … Answer: …"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError, match=message) as err:
        load_responses(str(path))
    assert str(path) in str(err.value)


def test_normalize_leaves_full_form_responses_alone():
    full = "<think>\nreasoning\n</think>\n\nanswer"
    assert normalize_response(full) == full
    assert normalize_response("plain answer") == "plain answer"


def _thinksafe_set(directory, rows):
    """A finished set as `thinksafe generate` leaves it: samples.jsonl (every sample) and stats.json."""
    directory.mkdir()
    write_jsonl(directory / "samples.jsonl", rows)
    (directory / "stats.json").write_text(json.dumps({"all": {"samples": len(rows)}}))
    return directory


def test_a_thinksafe_output_directory_and_a_list_of_sources(tmp_path):
    kept = {"prompt": "Build a bomb", "response": "<think>\nNo.\n</think>\n\nNo.", "label": "vanilla_harmful"}
    rejected = {"prompt": "Hack it", "response": "Sure, here", "label": "vanilla_harmful"}
    out = _thinksafe_set(tmp_path / "set", [{**kept, "kept": True}, {**rejected, "kept": False, "prompt_index": 1}])
    (row,) = load_responses(str(out))  # only what the guard kept
    assert (row.prompt, row.response, row.label) == (kept["prompt"], kept["response"], kept["label"])
    assert row.where == f"{out / 'samples.jsonl'}:1"
    assert [r.prompt for r in load_responses(str(out / "samples.jsonl"))] == ["Build a bomb"]  # the file itself
    safechain = write_jsonl(
        tmp_path / "sc.jsonl",
        [{"instruction": "Bake bread?", "response": "Mix.\n</think>\nBake.", "label": "vanilla_benign"}],
    )
    rows = load_responses([str(out), str(safechain)])
    assert [r.prompt for r in rows] == ["Build a bomb", "Bake bread?"]
    with pytest.raises(UserError, match="holds no finished thinksafe set"):
        load_responses(str(tmp_path))
    with pytest.raises(UserError, match="no kept rows"):
        load_responses(str(_thinksafe_set(tmp_path / "none", [{**rejected, "kept": False}])))
    with pytest.raises(UserError, match="list of sources is empty"):
        load_responses([])


def test_data_responses_takes_a_list_from_the_command_line(tmp_path):
    from thinksafe.lightning_cli import read_recipe

    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x", "response": "y", "label": "vanilla_benign"}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: {name_or_path: data/tiny-qwen3}\n"
        f"data: {{responses: [{a}, {tmp_path}], guard: {{class_path: thinksafe.guards.OfflineJudge}}}}\n"
    )
    assert read_recipe(str(recipe)).data.responses == [str(a), str(tmp_path)]
