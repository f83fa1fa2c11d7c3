"""The self-generated safety set end to end: real vLLM on the CPU, real templates, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from thinksafe.data.jsonl_log import read_jsonl
from thinksafe.data.prompts import load_prompts
from thinksafe.data.selfgen import SelfGenJob, build_selfgen
from thinksafe.errors import UserError
from thinksafe.guards import OfflineJudge
from thinksafe.sampling import SamplingConfig, TransformersSampler
from thinksafe.sampling.formats import check_response
from thinksafe.sampling.steering import PAPER_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "debug_prompts.jsonl"
SAMPLE_FIELDS = {
    "prompt",
    "label",
    "harmful",
    "sent_prompt",
    "response",
    "sample_index",
    "format_ok",
    "guard",
    "guard_verdict",
    "guard_score",
    "kept",
    "reject_reason",
}


def run(out, model, sampler, n=2, fmt="auto", **kw):
    return build_selfgen(
        SelfGenJob(
            model=str(model),
            prompts=load_prompts(str(PROMPTS)),
            sampler=sampler,
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=n, max_tokens=kw.pop("max_tokens", 24), seed=kw.pop("seed", 0)),
            steering_template=PAPER_TEMPLATE,
            reasoning_format=fmt,
            chunk_size=kw.pop("chunk_size", 5),
        ),
        out,
        **kw,
    )


def check_contract(out: Path, n: int) -> list[dict]:
    prompts = load_prompts(str(PROMPTS))
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == len(prompts) * n
    assert sorted((r["prompt_index"], r["sample_index"]) for r in rows) == [
        (i, j) for i in range(len(prompts)) for j in range(n)
    ]
    for r in rows:
        assert SAMPLE_FIELDS <= set(r)
        p = prompts[r["prompt_index"]]
        assert r["prompt"] == p.instruction  # the training row keeps the original prompt
        if p.harmful:
            assert r["sent_prompt"] == PAPER_TEMPLATE.replace("{prompt}", p.instruction)
        else:
            assert r["sent_prompt"] == p.instruction
        assert r["kept"] == (r["format_ok"] and r["guard_verdict"] == "safe")
        assert r["kept"] or r["reject_reason"]
        if not r["format_ok"]:
            assert r["guard_verdict"] is None and r["reject_reason"].startswith("format:")
    stats = json.loads((out / "stats.json").read_text())
    for label, d in stats["per_label"].items():
        mine = [r for r in rows if r["label"] == label]
        assert d["samples"] == len(mine) and d["kept"] == sum(r["kept"] for r in mine)
        assert d["format_ok"] == sum(r["format_ok"] for r in mine)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["sampling"]["n"] == n and manifest["versions"]["transformers"]
    return rows


@pytest.mark.slow
def test_qwen3_template_with_real_vllm(tiny_qwen3, vllm_sampler, tmp_path):
    res = run(tmp_path / "q", tiny_qwen3, vllm_sampler)
    rows = check_contract(res.output_dir, 2)
    manifest = json.loads((res.output_dir / "manifest.json").read_text())
    assert manifest["settings"]["reasoning_format"] == "qwen3"
    assert manifest["settings"]["chat_template_kwargs"] == {"enable_thinking": True}
    # random text: the stored verdict is the format check of the stored response, reasons are named
    for r in rows:
        assert r["format_ok"] == check_response(r["response"], "qwen3").ok
        if not r["format_ok"]:
            assert r["reject_reason"] == "format: " + check_response(r["response"], "qwen3").reason or r[
                "reject_reason"
            ].startswith("format: " + check_response(r["response"], "qwen3").reason + " (cut at")
    assert not any(r["kept"] for r in rows if r["harmful"])  # a random model never refuses
    assert res.stats["data_starved"]
    # samples of one prompt differ (each sample has its own seed)
    first = [r["response"] for r in rows if r["prompt_index"] == 0]
    assert first[0] != first[1]


@pytest.mark.slow
def test_plain_format_keeps_what_the_guard_passes_and_reuses_finished_dir(tiny_qwen3, vllm_sampler, tmp_path, capsys):
    out = tmp_path / "p"
    res = run(out, tiny_qwen3, vllm_sampler, fmt="plain")
    rows = check_contract(out, 2)
    benign = [r for r in rows if not r["harmful"]]
    assert benign and all(r["kept"] for r in benign if r["format_ok"])
    assert all(not r["kept"] for r in rows if r["harmful"])  # a random model never refuses
    assert res.stats["data_starved"] and "DATA-STARVED" in res.stats["data_starved_message"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run(out, tiny_qwen3, vllm_sampler, fmt="plain")
    assert again.reused and {p.name: p.read_bytes() for p in out.iterdir()} == before
    # other settings: refused without touching anything, unless asked to start over
    with pytest.raises(UserError, match="different settings"):
        run(out, tiny_qwen3, vllm_sampler, fmt="plain", seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    fresh = run(out, tiny_qwen3, vllm_sampler, fmt="plain", seed=1, overwrite=True)
    assert not fresh.reused and json.loads((out / "manifest.json").read_text())["settings"]["sampling"]["seed"] == 1


@pytest.mark.slow
def test_r1_template_restores_the_opening_tag(tiny_r1, vllm_sampler, tmp_path):
    res = run(tmp_path / "r", tiny_r1, vllm_sampler, n=1)
    rows = check_contract(res.output_dir, 1)
    assert json.loads((res.output_dir / "manifest.json").read_text())["settings"]["reasoning_format"] == "r1"
    assert all(r["response"].startswith("<think>\n") for r in rows)
    assert all(r["format_ok"] == check_response(r["response"], "r1").ok for r in rows)


def test_foreign_directory_is_refused_untouched(tiny_qwen3, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and holds no manifest.json"):
        run(out, tiny_qwen3, TransformersSampler())
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


GENERATE_RECIPE = {
    "model": {"name_or_path": None},
    "data": {
        "prompts": str(PROMPTS),
        "output_dir": None,
        "chunk_size": 1,
        "reasoning_format": "plain",
        "sampler": {"class_path": "thinksafe.sampling.TransformersSampler"},
        "guard": {"class_path": "thinksafe.guards.OfflineJudge"},
        "sampling": {"n": 2, "max_tokens": 40, "seed": 3},
    },
    "trainer": {"accelerator": "cpu", "logger": False},
}


def _recipe(tmp_path, model, out):
    r = json.loads(json.dumps(GENERATE_RECIPE))
    r["model"]["name_or_path"] = str(model)
    r["data"]["output_dir"] = str(out)
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(r))
    return path


def _generate(recipe, **popen):
    return subprocess.Popen(
        [sys.executable, "-m", "thinksafe.cli", "generate", "--recipe", str(recipe)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        **popen,
    )


@pytest.mark.slow
def test_sigkill_and_resume_loses_and_duplicates_nothing(tiny_qwen3, tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _generate(_recipe(tmp_path, tiny_qwen3, killed))
    sampled = killed / "sampled.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not sampled.exists() or len(sampled.read_bytes().splitlines()) < 6):
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = sampled.read_bytes()
    assert not (killed / "stats.json").exists()
    out = subprocess.run(
        [sys.executable, "-m", "thinksafe.cli", "generate", "--recipe", str(_recipe(tmp_path, tiny_qwen3, killed))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming" in out.stderr
    after = sampled.read_bytes()
    complete = before[: before.rfind(b"\n") + 1]
    # whole prompt groups written before the kill are kept byte for byte
    kept_lines = complete.splitlines()
    assert after.startswith(b"\n".join(kept_lines[: len(kept_lines) - len(kept_lines) % 2]))
    rows = check_contract(killed, 2)
    done = subprocess.run(
        [sys.executable, "-m", "thinksafe.cli", "generate", "--recipe", str(_recipe(tmp_path, tiny_qwen3, clean))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # generate reports the kept rows' in-distribution score under the model (when anything was kept)
    kept = json.loads((clean / "stats.json").read_text())["all"]["kept"]
    assert (clean / "in_distribution.json").is_file() == (kept > 0)
    assert ("in-distribution score" in done.stderr) == (kept > 0)
    # per-prompt seeds: the resumed run holds exactly what an uninterrupted one does
    assert rows == read_jsonl(clean / "samples.jsonl")


# ------------------------------------------------------------------------- damaged or half-made directories
def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def finished_set(tiny_qwen3, tmp_path_factory) -> Path:
    """A finished set sampled in this process (TransformersSampler, plain format: the random model's text is
    kept when the offline judge finds it safe)."""
    out = tmp_path_factory.mktemp("finished") / "set"
    run(out, tiny_qwen3, TransformersSampler(batch_size=4), fmt="plain", max_tokens=12, chunk_size=3)
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _damage_line(path: Path, line: int) -> None:
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] = lines[line - 1][: len(lines[line - 1]) // 2]
    path.write_bytes(b"\n".join(lines))


def test_a_damaged_finished_set_is_refused_naming_the_line_then_repaired(tiny_qwen3, finished_set, tmp_path):
    out = _copy(finished_set, tmp_path / "set")
    good = read_jsonl(out / "samples.jsonl")
    _damage_line(out / "samples.jsonl", 7)
    before = _files(out)
    with pytest.raises(UserError, match=r"samples\.jsonl:7: the line is damaged"):
        run(out, tiny_qwen3, TransformersSampler(batch_size=4), fmt="plain", max_tokens=12, chunk_size=3)
    assert _files(out) == before, "nothing is touched"
    # the remedy the message gives: without stats.json the guard phase resumes, cut at the damaged line
    (out / "stats.json").unlink()
    run(out, tiny_qwen3, TransformersSampler(batch_size=4), fmt="plain", max_tokens=12, chunk_size=3)
    assert read_jsonl(out / "samples.jsonl") == good
    check_contract(out, 2)


def test_a_finished_set_whose_counts_disagree_with_stats_is_refused(tiny_qwen3, finished_set, tmp_path):
    out = _copy(finished_set, tmp_path / "set")
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:-2]))  # whole lines removed: every line still parses
    with pytest.raises(UserError, match=r"samples\.jsonl: holds \d+ rows .* but .*stats\.json counts"):
        run(out, tiny_qwen3, TransformersSampler(batch_size=4), fmt="plain", max_tokens=12, chunk_size=3)


def test_a_damaged_manifest_is_a_user_error_naming_it(tiny_qwen3, finished_set, tmp_path):
    out = _copy(finished_set, tmp_path / "set")
    (out / "manifest.json").write_bytes((out / "manifest.json").read_bytes()[:40])
    before = _files(out)
    with pytest.raises(UserError, match=r"manifest\.json: the file is damaged.*--data\.overwrite=true"):
        run(out, tiny_qwen3, TransformersSampler(batch_size=4), fmt="plain", max_tokens=12, chunk_size=3)
    assert _files(out) == before


def test_mid_file_damage_in_an_unfinished_log_is_cut_and_the_rest_redone(tiny_qwen3, finished_set, tmp_path):
    out = _copy(finished_set, tmp_path / "set")
    (out / "stats.json").unlink()
    (out / "samples.jsonl").unlink()
    sampled = read_jsonl(out / "sampled.jsonl")
    _damage_line(out / "sampled.jsonl", 5)  # prompt 2's first sample; prompts after it follow intact
    run(out, tiny_qwen3, TransformersSampler(batch_size=4), fmt="plain", max_tokens=12, chunk_size=3)
    again = read_jsonl(out / "sampled.jsonl")
    keys = [(r["prompt_index"], r["sample_index"]) for r in again]
    assert len(keys) == len(set(keys)) == len(sampled), "nothing lost, nothing duplicated"
    assert again[:4] == sampled[:4], "rows before the damage are kept as they were"
    check_contract(out, 2)


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_that_fails_before_its_first_row_leaves_the_directory_as_found(tiny_qwen3, tmp_path, existed):
    import shutil

    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_qwen3, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # tokenizer and template fine, weights unreadable
    out = tmp_path / "out"
    if existed:
        out.mkdir()
    with pytest.raises(Exception, match="(?i)safetensor|header|deserializ|incomplete|invalid"):
        run(out, broken, TransformersSampler(), fmt="plain")
    assert (out.exists() and not any(out.iterdir())) if existed else not out.exists()


def test_disk_full_is_one_paragraph_then_the_run_resumes_when_space_is_freed(tiny_qwen3, finished_set, tmp_path):
    """A real 8 KiB tmpfs fills up while sampled.jsonl is appended: a UserError naming the file (the CLI's exit 2);
    the file system is then grown (space freed) and the same call finishes, nothing lost or duplicated."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(disk)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root")
    try:
        out = disk / "set"
        with pytest.raises(UserError, match=r"jsonl: cannot write it: the disk is full.*run the same command again"):
            run(out, tiny_qwen3, TransformersSampler(batch_size=4), fmt="plain", max_tokens=12, chunk_size=3)
        assert (out / "manifest.json").is_file() and not (out / "stats.json").exists()
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=True)
        run(out, tiny_qwen3, TransformersSampler(batch_size=4), fmt="plain", max_tokens=12, chunk_size=3)
        assert read_jsonl(out / "samples.jsonl") == read_jsonl(finished_set / "samples.jsonl")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_output_dir_that_is_a_file_or_read_only_is_one_paragraph(tiny_qwen3, tmp_path, kind):
    if kind == "file":
        out = tmp_path / "out"
        out.write_text("mine")
        match = "is a file"
    else:
        disk = tmp_path / "ro"
        disk.mkdir()
        if (
            os.geteuid() != 0
            or subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=4k", "tmpfs", str(disk)], capture_output=True
            ).returncode
            != 0
        ):
            pytest.skip("mounting a read-only tmpfs needs root")
        out = disk / "out"
        match = "read-only"
    try:
        with pytest.raises(UserError, match=match):
            run(out, tiny_qwen3, TransformersSampler(), fmt="plain")
    finally:
        if kind != "file":
            subprocess.run(["umount", "-l", str(disk)], check=False)
    if kind == "file":
        assert out.read_text() == "mine"
