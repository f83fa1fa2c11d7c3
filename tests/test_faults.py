"""Damaged or changed artifacts are never trusted: `thinksafe testbed check` verifies the testbed's files against
its manifest as `build` does, and a damaged manifest is one paragraph naming it (exit 2), not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from thinksafe.cli import main
from thinksafe.errors import UserError
from thinksafe.testbed.build import load_testbed

TESTBED = Path(__file__).resolve().parents[1] / "data" / "testbed"


@pytest.fixture
def testbed(tmp_path) -> Path:
    return Path(shutil.copytree(TESTBED, tmp_path / "testbed"))


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_intact_testbed_loads(testbed):
    assert load_testbed(str(testbed)).manifest["files"]


@pytest.mark.parametrize("name", ["model/model.safetensors", "eval/benign.jsonl"])
def test_testbed_check_refuses_a_changed_file_naming_it(testbed, name, capsys):
    path = testbed / name
    _flip_byte(path, path.stat().st_size - 10)  # a weight byte / a character of an eval row
    with pytest.raises(UserError, match=f"changed since it was built.*{name}"):
        load_testbed(str(testbed))
    assert main(["testbed", "check", "--output_dir", str(testbed), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err and "--force true" in err


def test_testbed_check_refuses_a_damaged_manifest(testbed, capsys):
    (testbed / "manifest.json").write_text('{"files": {"prompts.jsonl": "ab')
    assert main(["testbed", "check", "--output_dir", str(testbed), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "manifest.json is damaged" in err and "Traceback" not in err


def test_responses_with_an_unclosed_think_block_are_dropped_and_counted(tmp_path, capsys):
    import json

    from thinksafe.data.responses import load_responses

    path = tmp_path / "responses.jsonl"
    rows = [
        ("a", "<think>\nfine\n</think>\n\nAnswer."),
        ("b", "<think>\ncut short in the midd"),
        ("c", "No reasoning at all."),
    ]
    path.write_text(
        "".join(json.dumps({"instruction": p, "response": r, "label": "vanilla_benign"}) + "\n" for p, r in rows)
    )
    kept = load_responses(str(path))
    assert [r.prompt for r in kept] == ["a", "c"]
    err = capsys.readouterr().err
    assert "dropped 1 of 3 rows" in err and f"{path}:2" in err
    path.write_text(
        json.dumps({"instruction": "b", "response": "<think>\nnever closed", "label": "vanilla_benign"}) + "\n"
    )
    with pytest.raises(UserError, match="never closes.*nothing to train on"):
        load_responses(str(path))


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("wrong_columns.csv", "foo,bar\n1,2\n", "need the column"),
        ("empty.jsonl", "", "the file is empty"),
        ("one_row.jsonl", '{"path": "elsewhere.jsonl"}\n', "missing field 'instruction'"),  # was read as PromptSource
    ],
)
def test_prompts_option_is_a_file_name_never_its_content(tmp_path, capsys, name, content, expected):
    """jsonargparse read a path option whose type holds a dataclass as a sub-config: the CSV's text was taken for
    a file name, an empty file for "not set"; now the error names the file."""
    path = tmp_path / name
    path.write_text(content)
    rc = main(
        [
            "generate",
            "--recipe",
            "recipes/debug.yaml",
            f"--data.prompts={path}",
            f"--data.output_dir={tmp_path / 'out'}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err and expected in err, err
    assert "foo,bar" not in err and "not set" not in err
    assert not (tmp_path / "out").exists()
