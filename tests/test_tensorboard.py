"""TensorBoard a user would want to open, read back with tensorboard's EventAccumulator after a real
`thinksafe fit` of the debug recipe (transformers sampler, so no vLLM engine): the resolved recipe as hparams,
a real hp_metric, learning rate, grad norm, the data stage's statistics; and the adapter's card from the fit."""

from __future__ import annotations

import json
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
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    version = tmp_path / "runs" / "lightning_logs" / "version_0"
    assert f"fit: wrote the adapter to {version / 'adapter'}" in err
    assert f"tensorboard --logdir {tmp_path / 'runs' / 'lightning_logs'}" in err

    acc = EventAccumulator(str(version), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/grad_norm", "train/loss", "hp_metric"} <= scalars
    assert any(t.startswith("lr-") for t in scalars)  # LearningRateMonitor
    assert all(e.value > 0 for e in acc.Scalars("train/grad_norm"))
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

    card = (version / "adapter" / "README.md").read_text()
    assert "| label | samples | kept | acceptance |" in card and "train/loss_epoch" in card
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "peft"
