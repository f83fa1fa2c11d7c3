"""TensorBoard a user would want to open, read back with tensorboard's EventAccumulator after a real
`thinksafe fit` of the debug recipe (transformers sampler, so no vLLM engine): the resolved recipe as hparams,
a real hp_metric, learning rate, grad norm, throughput, the data stage's statistics and figure, the before/after
evaluation as scalars and a figure; and the adapter's card from the fit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fit_logs_recipe_hparams_grad_norm_lr_and_data_stats(tiny_qwen3, tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from thinksafe.cli import main

    monkeypatch.chdir(tmp_path)  # the recipe's checkpoint dirpath is relative
    rc = main(
        [
            "fit",
            "--recipe",
            str(ROOT / "recipes" / "debug.yaml"),
            f"--model.name_or_path={tiny_qwen3}",
            f"--data.prompts={ROOT / 'data' / 'debug_prompts.jsonl'}",
            f"--data.output_dir={tmp_path / 'selfgen'}",
            "--data.sampler=thinksafe.sampling.TransformersSampler",
            "--data.sampling.max_tokens=12",
            "--data.in_distribution_rows=0",
            f"--trainer.default_root_dir={tmp_path / 'runs'}",
            "--trainer.max_steps=3",
            # eval before and after into the same run: two items per set, a few greedy tokens
            "--trainer.callbacks+="
            + json.dumps(
                {
                    "class_path": "thinksafe.testbed.BeforeAfterEval",
                    "init_args": {
                        "harmful": "strongreject",
                        "benign": "xstest",
                        "benchmark_dir": str(ROOT / "data" / "benchmarks"),
                        "limit": 2,
                        "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 8},
                    },
                }
            ),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    # the in-distribution scoring before and after training shows its progress (rows, tokens/s, ETA)
    assert re.search(r"in-distribution NLL \(initial model\): (\d+)/\1 rows, [\d,]+ tok/s", err), err
    assert re.search(r"in-distribution NLL \(trained model\): (\d+)/\1 rows, .* ETA 0:00:00", err), err
    version = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert f"fit: wrote the adapter to {version / 'adapter'}" in err
    assert f"tensorboard --logdir {tmp_path / 'runs' / 'lightning_logs'}" in err

    acc = EventAccumulator(str(version), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/grad_norm", "train/loss", "hp_metric"} <= scalars
    assert any(t.startswith("lr-") for t in scalars)  # LearningRateMonitor
    assert all(e.value > 0 for e in acc.Scalars("train/grad_norm"))
    # Lightning's ThroughputMonitor from the recipe (window 2): real tokens counted, rates once the window is full
    assert {"train/samples", "train/lengths", "train/device/items_per_sec", "train/device/samples_per_sec"} <= scalars
    assert 0 < acc.Scalars("train/samples")[-1].value <= 3 * 2  # 3 steps of at most 2 rows (debug batch_size)
    assert 0 < acc.Scalars("train/lengths")[-1].value < 3 * 2 * 512  # unpadded tokens, under max_length each
    assert all(e.value > 0 for e in acc.Scalars("train/device/items_per_sec"))
    stats = json.loads((tmp_path / "selfgen" / "stats.json").read_text())
    for label, d in stats["per_label"].items():
        assert acc.Scalars(f"data/acceptance_rate/{label}")[0].value == pytest.approx(d["acceptance_rate"])
    assert any(t.startswith("data/rejected/") for t in scalars) == bool(stats["reject_reasons"])
    assert acc.Scalars("data/data_starved")[0].value == float(stats["data_starved"])
    assert "data/stats/text_summary" in acc.Tags()["tensors"]  # text summaries are tensors
    hp = acc.Scalars("hp_metric")
    assert len(hp) == 1 and hp[0].value != -1 and hp[0].step == 3  # the last epoch's loss, never -1

    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["model.init_args.adapter.init_args.r"].number_value == 8
    assert hparams["data.sampling.temperature"].number_value == pytest.approx(0.6)
    assert hparams["data.guard.class_path"].string_value == "thinksafe.guards.OfflineJudge"
    assert "trainer.max_steps" in hparams and "data.sampler.class_path" in hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["hp_metric"]

    # the data stage and the before/after evaluation as figures (Images tab) and eval results as scalars, all in
    # the training run's directory: before at step 0, after at the last step
    images = set(acc.Tags()["images"])
    assert {"data/figure", "before_after/figure"} <= images
    figure = acc.Images("before_after/figure")[-1]
    assert figure.step == 3 and figure.width == 720 and figure.encoded_image_string[:4] == b"\x89PNG"
    assert acc.Images("data/figure")[0].height == 3 * 260  # rates by label, reject reasons, lengths
    report = json.loads((version / "before_after.json").read_text())
    for metric in ("harmful_compliance_rate", "over_refusal_rate", "in_distribution_nll"):
        events = acc.Scalars(f"before_after/{metric}")
        assert [(e.step, e.value) for e in events] == [
            (0, pytest.approx(report[metric]["before"])),
            (3, pytest.approx(report[metric]["after"])),
        ]
    results = json.loads((version / "eval" / "after" / "results.json").read_text())
    harmful = [e.value for e in acc.Scalars("eval/strongreject/harmful_rate")]
    assert len(harmful) == 2 and harmful[1] == pytest.approx(results["strongreject"]["harmful_rate"])
    assert [e.value for e in acc.Scalars("eval/xstest/n")] == [2, 2]
    assert "before_after/table/text_summary" in acc.Tags()["tensors"]

    card = (version / "adapter" / "README.md").read_text()
    assert "| label | samples | kept | acceptance |" in card and "train/loss_epoch" in card
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "peft"


def test_figures_draw_empty_and_partial_inputs():
    """A set with nothing rejected or kept, and a before/after report with a metric unmeasured, still draw."""
    from thinksafe.metrics.figures import PANEL_HEIGHT, WIDTH, before_after_figure, data_stage_figure

    empty = data_stage_figure({"per_label": {}, "reject_reasons": {}}, [])
    assert empty.shape == (3 * PANEL_HEIGHT, WIDTH, 3) and empty.dtype.name == "uint8"
    report = {
        "harmful_compliance_rate": {"before": 1.0, "after": 0.05},
        "reasoning_accuracy": {"before": None, "after": None},
        "in_distribution_nll": {"before": 0.355, "after": 0.007},
    }
    image = before_after_figure(report, list(report))
    assert image.shape == (2 * PANEL_HEIGHT, WIDTH, 3)  # rates and NLL panels; the unmeasured metric left out
    assert (image != 255).any()
