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
