"""The command line in-process (`thinksafe.cli.main`): which subcommands and options exist, `--recipe` in every
help, eval's defaults from the recipe, and one paragraph + exit 2 for every user error, exit 1 for a bug."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from thinksafe.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEBUG = str(ROOT / "recipes" / "debug.yaml")


@pytest.fixture(autouse=True)
def _log_to_the_captured_stderr(monkeypatch):
    """Log handlers made during an earlier test keep that test's (closed) captured stderr; give them this one's."""
    import logging
    import sys

    loggers = [
        logging.getLogger(),
        *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            monkeypatch.setattr(handler, "stream", sys.stderr)


def run(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_paragraph(err: str) -> str:
    # Lightning's seed line comes before the error, bare or as "INFO: Seed set to 0" (when an earlier fit in
    # this process left Lightning's console handler configured): it is not part of the paragraph
    lines = [
        line for line in err.splitlines() if line.strip() and not line.removeprefix("INFO: ").startswith("Seed set")
    ]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", [["fit"], ["generate"], ["eval"]])
def test_recipe_is_a_documented_option(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--recipe RECIPE" in out and "recipes/*.yaml" in out
    # the dataclass options are described by the docstrings under their fields
    if command != ["eval"]:
        flat = " ".join(out.split())
        assert "--data.sampling.max_tokens MAX_TOKENS New tokens per sample" in flat
        assert "--data.ray.engines ENGINES Sampling engines" in flat


def test_only_working_subcommands_and_no_optimizer_option(capsys):
    for cmd in ("validate", "test", "predict"):
        rc, _, err = run(capsys, cmd, "--recipe", DEBUG)
        assert rc == 2 and f"unknown command '{cmd}'" in one_paragraph(err)
    rc, _, err = run(capsys, "fit", "--recipe", DEBUG, "--optimizer=Adam")
    assert rc == 2 and "unknown option --optimizer" in one_paragraph(err)


@pytest.mark.parametrize(
    "flag, expected",
    [
        (
            "--data.sampling.temprature=0.5",
            "unknown option --data.sampling.temprature. Did you mean --data.sampling.temperature?",
        ),
        ("--trainer.max_step=5", "Did you mean --trainer.max_steps?"),  # no silent abbreviation
        ("--model.lrr=1", "Did you mean --model.lr?"),  # an init arg of the recipe's LightningModule
        ("--model.adapter.rr=3", "Did you mean --model.adapter.r?"),  # an init arg two class_paths deep
    ],
)
def test_unknown_option_exits_2_with_a_suggestion(flag, expected, capsys):
    rc, _, err = run(capsys, "fit", "--recipe", DEBUG, flag)
    assert rc == 2 and expected in one_paragraph(err)


def test_unknown_recipe_key_names_the_closest(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(DEBUG).read_text().replace("temperature: 0.6", "temprature: 0.6"))
    rc, _, err = run(capsys, "generate", "--recipe", str(bad))
    assert rc == 2 and "unknown key data.sampling.temprature" in one_paragraph(err)
    assert "Did you mean --data.sampling.temperature?" in err


@pytest.mark.parametrize(
    "flag, expected",
    [
        (
            "--model.adapter.r=0",
            "model.adapter.r must be ≥ 1, got 0.",
        ),  # thinksafe's UserError, wrapped by jsonargparse
        (
            "--trainer.max_epochs=-5",
            "`max_epochs` must be a non-negative integer or -1",
        ),  # Lightning's misconfiguration
        ("--data.sampling.n=zero", '"data.sampling.n"'),  # a bad type
        ("--data.sampler.init_args.max_num_seqs=0", "VLLMSampler: max_num_seqs must be ≥ 1 or null, got 0."),
        (
            "--data.sampler.init_args.kv_cache_memory_bytes=0",
            "VLLMSampler: kv_cache_memory_bytes must be ≥ 1 or null, got 0.",
        ),
    ],
)
def test_bad_values_exit_2_in_one_paragraph(flag, expected, capsys):
    rc, _, err = run(capsys, "fit", "--recipe", DEBUG, flag)
    assert rc == 2 and expected in one_paragraph(err)


def test_missing_checkpoint_exits_2(tmp_path, capsys):
    rc, _, err = run(
        capsys,
        "fit",
        "--recipe",
        DEBUG,
        f"--trainer.default_root_dir={tmp_path}",
        f"--ckpt_path={tmp_path / 'none.ckpt'}",
    )
    assert rc == 2 and "none.ckpt is not a file" in one_paragraph(err)


def test_debug_shows_the_traceback_of_a_user_error(capsys):
    rc, _, err = run(capsys, "fit", "--recipe", DEBUG, "--model.adapter.r=0", "--debug")
    assert rc == 2 and "Traceback" in err and err.rstrip().endswith("model.adapter.r must be ≥ 1, got 0.")


def test_a_bug_exits_1_with_traceback_and_a_request_to_report(monkeypatch, capsys):
    import thinksafe.cli as cli

    def broken(argv):
        raise KeyError("internal")  # what a bug looks like to main: an exception no user can fix

    monkeypatch.setattr(cli, "dispatch", broken)
    rc, _, err = run(capsys, "fit")
    assert rc == 1 and "Traceback" in err and "KeyError" in err
    assert err.rstrip().splitlines()[-1] == cli.REPORT


def test_other_commands_refuse_unknown_options(capsys):
    rc, _, err = run(capsys, "tiny-model", "out", "--templat=r1")
    assert rc == 2 and "Did you mean --template?" in one_paragraph(err)
    rc, _, err = run(capsys, "export", "a", "b", "--dtyp=float32")
    assert rc == 2 and "Did you mean --dtype?" in one_paragraph(err)
    rc, _, err = run(capsys, "score", "--benchmark", "gsm8k", "--responses", "r", "--output", "o", "--judge_see=trace")
    assert rc == 2 and "Did you mean --judge_sees?" in one_paragraph(err)
    rc, _, err = run(capsys, "testbed", "check", "--nn=3")
    assert rc == 2 and "unknown option --nn" in one_paragraph(err)


def test_eval_defaults_come_from_the_recipe_and_flags_override(tmp_path):
    from thinksafe.eval.options import EvalOptions, parse_eval_options
    from thinksafe.eval.runner import run_eval

    # the options are run_eval's arguments plus the recipe
    assert set(inspect.signature(EvalOptions).parameters) == set(inspect.signature(run_eval).parameters) | {"recipe"}
    opts = parse_eval_options(["--recipe", DEBUG, "--benchmarks", "gsm8k,xstest", "--output", str(tmp_path)])
    kw = opts.run_eval_kwargs
    assert kw["model"] == "data/tiny-qwen3" and kw["benchmarks"] == ["gsm8k", "xstest"]
    assert kw["reasoning_format"] == "plain"
    assert (
        type(kw["sampler"]).__name__ == "VLLMSampler" and kw["sampler"].engine_settings().kv_cache_memory_bytes == 2**29
    )
    opts = parse_eval_options(
        [
            "--recipe",
            DEBUG,
            "--benchmarks",
            "[gsm8k]",
            "--output",
            str(tmp_path),
            "--model=other",
            "--reasoning_format=qwen3",
            "--sampler.init_args.max_model_len=2048",
        ]
    )
    kw = opts.run_eval_kwargs
    assert kw["model"] == "other" and kw["reasoning_format"] == "qwen3" and kw["benchmarks"] == ["gsm8k"]
    assert kw["sampler"].engine_settings().max_model_len == 2048


def test_eval_without_model_exits_2(tmp_path, capsys):
    rc, _, err = run(capsys, "eval", "--benchmarks", "gsm8k", "--output", str(tmp_path))
    assert rc == 2 and "no model" in one_paragraph(err)


def test_a_recipe_may_name_its_lightning_module(tmp_path, capsys):
    import yaml

    recipe = yaml.safe_load(Path(DEBUG).read_text())
    recipe["model"] = {"class_path": "thinksafe.model.module.ThinkSafeModule", "init_args": recipe["model"]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(SystemExit) as e:
        main(["fit", "--recipe", str(path), "--model.lr=0.5", "--print_config"])
    assert e.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["class_path"].endswith("ThinkSafeModule") and cfg["model"]["init_args"]["lr"] == 0.5
    path.write_text(yaml.safe_dump({**recipe, "model": {"class_path": "torch.nn.Linear", "init_args": {}}}))
    rc, _, err = run(capsys, "fit", "--recipe", str(path))  # not a LightningModule
    assert rc == 2 and "does not correspond to a subclass of LightningModule" in one_paragraph(err)


def test_a_place_error_raised_inside_a_library_is_one_paragraph():
    """A file given as trainer.default_root_dir reaches us as NotADirectoryError from the TensorBoard logger
    (seen with `thinksafe fit --trainer.default_root_dir=afile`): the user's to fix, not a bug report."""
    import errno

    from thinksafe.errors import user_message

    inner = NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/afile/lightning_logs")
    try:
        try:
            raise inner
        except OSError as e:
            raise RuntimeError("logger failed") from e
    except RuntimeError as outer:
        message = user_message(outer)
    assert message is not None and "\n" not in message
    assert "/tmp/afile/lightning_logs" in message and "trainer.default_root_dir" in message
    full = user_message(OSError(errno.ENOSPC, "No space left on device", "/data/run/last.ckpt"))
    assert "/data/run/last.ckpt" in full and "Free some space" in full
    assert user_message(OSError(errno.ECONNRESET, "Connection reset")) is None  # not a place: still a bug
