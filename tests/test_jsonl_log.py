"""The append-only log drops torn writes and incomplete groups, and nothing else."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from thinksafe.data.jsonl_log import JsonlLog
from thinksafe.errors import UserError
from thinksafe.files import atomic_directory, write_json_atomic


def test_recover_drops_torn_line_and_partial_group(tmp_path):
    log = JsonlLog(tmp_path / "s.jsonl")
    log.append([{"g": 0, "i": 0}, {"g": 0, "i": 1}])
    log.append([{"g": 1, "i": 0}, {"g": 1, "i": 1}])
    with open(log.path, "ab") as f:  # a chunk cut short by SIGKILL: one full row of group 2, one torn line
        f.write(b'{"g": 2, "i": 0}\n{"g": 2, "i"')
    rows = log.recover("g", lambda _k, rs: len(rs) == 2)
    assert [(r["g"], r["i"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # the file itself was repaired, so appending continues cleanly
    log.append([{"g": 2, "i": 0}, {"g": 2, "i": 1}])
    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [(r["g"], r["i"]) for r in lines] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_recover_of_missing_or_clean_file_changes_nothing(tmp_path):
    log = JsonlLog(tmp_path / "s.jsonl")
    assert log.recover("g", lambda *_: True) == []
    assert not log.path.exists()
    log.append([{"g": 0}])
    before = log.path.stat().st_mtime_ns
    assert log.recover("g", lambda *_: True) == [{"g": 0}]
    assert log.path.stat().st_mtime_ns == before


def test_damage_in_the_middle_cuts_the_file_there(tmp_path):
    log = JsonlLog(tmp_path / "s.jsonl")
    for g in range(4):
        log.append([{"g": g, "i": 0}, {"g": g, "i": 1}])
    lines = log.path.read_bytes().split(b"\n")
    lines[3] = b'{"g": 1, "i": \xff garbage'  # group 1's second row damaged; groups 2 and 3 follow intact
    log.path.write_bytes(b"\n".join(lines))
    rows = log.recover("g", lambda _k, rs: len(rs) == 2)
    assert [(r["g"], r["i"]) for r in rows] == [(0, 0), (0, 1)]
    # the file was cut at the bad line: resumed rows append after group 0, nothing piles up behind the damage
    log.append([{"g": g, "i": i} for g in (1, 2, 3) for i in (0, 1)])
    again = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert [(r["g"], r["i"]) for r in again] == [(g, i) for g in range(4) for i in (0, 1)]


def test_verify_names_the_damaged_line(tmp_path):
    log = JsonlLog(tmp_path / "s.jsonl")
    log.append([{"g": 0}, {"g": 1}, {"g": 2}])
    assert len(log.verify()) == 3
    log.path.write_bytes(log.path.read_bytes().replace(b'{"g": 1}', b'{"g": 1'))
    with pytest.raises(UserError, match=r"s\.jsonl:2: the line is damaged"):
        log.verify()


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB file system (tmpfs), so that writes really fail with ENOSPC; needs root (skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_atomic_writes_leave_the_old_file_or_the_new_one(tmp_path):
    target = tmp_path / "stats.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"], "no temporary file is left behind"

    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(out) as d:
            (d / "config.json").write_text("{}")
            raise RuntimeError("failed half way")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["stats.json"]
    with atomic_directory(out) as d:
        (d / "config.json").write_text("{}")
    assert (out / "config.json").read_text() == "{}"
    with pytest.raises(UserError, match="something is in the way"):
        with atomic_directory(out) as d:
            (d / "config.json").write_text("new")
    assert (out / "config.json").read_text() == "{}"


def test_disk_full_is_a_user_error_and_the_old_file_stays(small_disk):
    target = small_disk / "stats.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(UserError, match=r"stats\.json: cannot write it: the disk is full.*run the same command again"):
        write_json_atomic(target, {"a": "x" * 200_000})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in small_disk.iterdir()] == ["stats.json"], "the partial temporary file is removed"

    log = JsonlLog(small_disk / "rows.jsonl")
    log.append([{"g": 0, "text": "y" * 1000}])
    with pytest.raises(UserError, match="the disk is full"):
        log.append([{"g": g, "text": "y" * 1000} for g in range(1, 200)])
    # space freed: recovery drops the cut group (torn by ENOSPC) and appending continues
    target.unlink()
    rows = log.recover("g", lambda _k, rows: True)
    assert rows[0]["g"] == 0 and all(r["text"] == "y" * 1000 for r in rows)
    log.append([{"g": 999, "text": "z"}])
    assert log.verify()[-1]["g"] == 999
