"""The command line: recipes parse, overrides apply, user errors exit 2 with one paragraph and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def thinksafe(*args, cwd=ROOT, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "thinksafe.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_parses_and_starts_with_its_command(recipe):
    text = recipe.read_text()
    assert text.startswith(f"# thinksafe fit --recipe recipes/{recipe.name}")
    out = thinksafe("fit", "--recipe", str(recipe), "--print_config")
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = yaml.safe_load(out.stdout)
    # SFT recipes give ThinkSafeModule's init args without class_path; the GRPO baseline names its module
    module = "GRPOModule" if recipe.stem.startswith(("grpo", "quickstart-grpo")) else "ThinkSafeModule"
    assert cfg["model"]["class_path"].endswith(module)
    assert cfg["model"]["init_args"]["name_or_path"] and cfg["data"]["sampler"]["class_path"]


def test_overrides_are_honoured():
    out = thinksafe(
        "fit",
        "--recipe=recipes/debug.yaml",
        "--trainer.max_steps=20",
        "--model.adapter.r=16",
        "--data.sampling.n=3",
        "--print_config",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = yaml.safe_load(out.stdout)
    assert cfg["trainer"]["max_steps"] == 20
    assert cfg["model"]["init_args"]["adapter"]["init_args"]["r"] == 16
    assert cfg["data"]["sampling"]["n"] == 3
    assert "model_name_or_path" not in cfg["data"]  # linked from model.name_or_path, not a recipe key


def _recipe_with(tmp_path, **data):
    r = yaml.safe_load((ROOT / "recipes" / "debug.yaml").read_text())
    r["data"].update(data)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(r))
    return p


def test_bad_prompt_file_exits_2_with_one_paragraph_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok", "label": "vanilla_benign"}\n{"instruction": "x", "label": "nope"}\n')
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "manifest.json").write_text('{"fingerprint": "earlier run"}')
    recipe = _recipe_with(tmp_path, prompts=str(bad), output_dir=str(out_dir))
    res = thinksafe("generate", "--recipe", str(recipe))
    assert res.returncode == 2
    assert f"{bad}:2: unknown label 'nope'" in res.stderr
    assert "Traceback" not in res.stderr
    assert [p.name for p in out_dir.iterdir()] == ["manifest.json"]
    assert json.loads((out_dir / "manifest.json").read_text()) == {"fingerprint": "earlier run"}
    dbg = thinksafe("generate", "--recipe", str(recipe), "--debug")
    assert dbg.returncode == 2 and "Traceback" in dbg.stderr


def test_missing_prompt_file_and_unknown_command_exit_2(tmp_path):
    res = thinksafe("generate", "--recipe", str(_recipe_with(tmp_path, prompts=str(tmp_path / "none.jsonl"))))
    assert res.returncode == 2 and "none.jsonl: no such file" in res.stderr and "Traceback" not in res.stderr
    res = thinksafe("frobnicate")
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr


def test_bad_option_value_exits_2_without_traceback(tmp_path):
    res = thinksafe("generate", "--recipe", "recipes/debug.yaml", "--data.steering_template=no placeholder")
    assert res.returncode == 2 and "{prompt}" in res.stderr and "Traceback" not in res.stderr
    res = thinksafe("generate", "--recipe", "recipes/debug.yaml", "--data.in_distribution_rows=-1")
    assert res.returncode == 2 and "data.in_distribution_rows" in res.stderr and "Traceback" not in res.stderr
    res = thinksafe("fit", "--recipe", "recipes/debug.yaml", "--data.sampling.n=zero")
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_score_command_rescores_saved_responses(tmp_path, benchmark_dir):
    import json as _json

    gsm = benchmark_dir / "gsm8k" / "test.jsonl"
    items = [_json.loads(line) for line in gsm.read_text().splitlines()[:3]]
    answers = [it["answer"].split("####")[-1].strip() for it in items]
    saved = tmp_path / "saved.jsonl"
    saved.write_text(
        "".join(
            _json.dumps(
                {
                    "prompt": it["question"],
                    "response": f"<think>\nwork\n</think>\n\nThe answer is {a if i < 2 else '-1'}.",
                }
            )
            + "\n"
            for i, (it, a) in enumerate(zip(items, answers))
        )
    )
    res = thinksafe(
        "score",
        "--benchmark",
        "gsm8k",
        "--data",
        str(gsm),
        "--responses",
        str(saved),
        "--output",
        str(tmp_path / "out"),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    summary = _json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["benchmark"] == "gsm8k" and summary["n"] == 3
    assert abs(summary["accuracy"] - 2 / 3) < 1e-9
    rows = [_json.loads(line) for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, False]


def test_testbed_compare_prints_runs_side_by_side_and_names_a_missing_one(tmp_path):
    for name, after in (("self", 0.02), ("teacher", 0.05)):
        (tmp_path / name).mkdir()
        report = {m: {"before": 0.5, "after": after} for m in ("harmful_compliance_rate", "in_distribution_nll")}
        report["details"] = {"training_set": f"{name} set"}
        (tmp_path / name / "before_after.json").write_text(json.dumps(report))
    res = thinksafe("testbed", "compare", "--runs", json.dumps([str(tmp_path / "self"), str(tmp_path / "teacher")]))
    assert res.returncode == 0, res.stderr
    row = next(line for line in res.stdout.splitlines() if "harmful_compliance_rate" in line)
    assert "0.500 → 0.020" in row and "0.500 → 0.050" in row
    assert "self set" in res.stdout and "teacher set" in res.stdout
    res = thinksafe("testbed", "compare", "--runs", json.dumps([str(tmp_path / "self"), str(tmp_path / "none")]))
    assert (
        res.returncode == 2 and "none/before_after.json does not exist" in res.stderr and "Traceback" not in res.stderr
    )
