"""The append-only log drops torn writes and incomplete groups, and nothing else."""

from __future__ import annotations

import json

from thinksafe.data.jsonl_log import JsonlLog


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
    lines = [json.loads(l) for l in log.path.read_text().splitlines()]
    assert [(r["g"], r["i"]) for r in lines] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]


def test_recover_of_missing_or_clean_file_changes_nothing(tmp_path):
    log = JsonlLog(tmp_path / "s.jsonl")
    assert log.recover("g", lambda *_: True) == []
    assert not log.path.exists()
    log.append([{"g": 0}])
    before = log.path.stat().st_mtime_ns
    assert log.recover("g", lambda *_: True) == [{"g": 0}]
    assert log.path.stat().st_mtime_ns == before
