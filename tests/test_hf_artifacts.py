"""The artifacts as Hugging Face users pick them up: the self-generated set through ``datasets.load_dataset``,
the adapter through ``peft.AutoPeftModelForCausalLM`` from another working directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from thinksafe.data.jsonl_log import read_jsonl
from thinksafe.data.prompts import load_prompts
from thinksafe.data.selfgen import SelfGenJob, build_selfgen
from thinksafe.guards import OfflineJudge
from thinksafe.sampling import SamplingConfig, TransformersSampler
from thinksafe.sampling.steering import PAPER_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "debug_prompts.jsonl"


@pytest.fixture(scope="module")
def selfgen_set(tiny_qwen3, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "set"
    build_selfgen(
        SelfGenJob(
            model=str(tiny_qwen3),
            prompts=load_prompts(str(PROMPTS)),
            sampler=TransformersSampler(batch_size=4),
            guard=OfflineJudge(),
            sampling=SamplingConfig(n=2, max_tokens=12, seed=0),
            steering_template=PAPER_TEMPLATE,
            reasoning_format="plain",
            chunk_size=5,
        ),
        out,
    )
    return out


def test_load_dataset_gives_the_kept_rows_and_the_audit_trail_as_configs(selfgen_set, tmp_path):
    import datasets

    samples = read_jsonl(selfgen_set / "samples.jsonl")
    kept = [r for r in samples if r["kept"]]
    assert kept, "the tiny model's set has no kept row to load"
    train = datasets.load_dataset(str(selfgen_set), cache_dir=str(tmp_path / "cache"))
    assert list(train) == ["train"]
    rows = train["train"]
    assert rows.num_rows == len(kept)
    assert {"messages", "prompt", "completion", "label"} <= set(rows.column_names)
    for got, want in zip(rows, kept):
        assert got["prompt"] == want["prompt"] and got["completion"] == want["response"]
        assert got["messages"] == [
            {"role": "user", "content": want["prompt"]},
            {"role": "assistant", "content": want["response"]},
        ]
    audit = datasets.load_dataset(str(selfgen_set), "samples", cache_dir=str(tmp_path / "cache"))["train"]
    assert audit.num_rows == len(samples) and "guard_verdict" in audit.column_names
    assert datasets.load_dataset(str(selfgen_set), "sampled", cache_dir=str(tmp_path / "cache"))[
        "train"
    ].num_rows == len(samples)
    stats = datasets.load_dataset(str(selfgen_set), "stats", cache_dir=str(tmp_path / "cache"))["train"][0]
    assert stats["all"]["kept"] == len(kept)
    manifest = datasets.load_dataset(str(selfgen_set), "manifest", cache_dir=str(tmp_path / "cache"))["train"][0]
    assert manifest["settings"]["model"] == json.loads((selfgen_set / "manifest.json").read_text())["settings"]["model"]


def test_dataset_card_metadata(selfgen_set):
    text = (selfgen_set / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    ts = meta["thinksafe"]
    stats = json.loads((selfgen_set / "stats.json").read_text())
    assert ts["model"] == json.loads((selfgen_set / "manifest.json").read_text())["settings"]["model"]
    assert ts["prompts"]["sources"] == [str(PROMPTS)] and ts["prompts"]["count"] == len(load_prompts(str(PROMPTS)))
    assert ts["steering_template"] == PAPER_TEMPLATE
    assert ts["guard"]["name"] == OfflineJudge().name
    assert "APPROXIMATE" in ts["guard"]["note"]
    assert ts["acceptance"] == {k: round(d["acceptance_rate"], 4) for k, d in stats["per_label"].items()}
    assert meta["license"] and meta["license_name"]
    assert [c["config_name"] for c in meta["configs"]] == ["default", "samples", "sampled", "stats", "manifest"]
    assert "## Acceptance per label" in text


def test_saved_adapter_loads_with_auto_peft_from_another_directory(tiny_qwen3, tmp_path, monkeypatch):
    import torch
    from peft import AutoPeftModelForCausalLM

    from thinksafe.model.module import ThinkSafeModule

    # the base model named relative to the working directory, as recipes name data/tiny-qwen3
    monkeypatch.chdir(tiny_qwen3.parent)
    module = ThinkSafeModule(tiny_qwen3.name)
    module.configure_model()
    with torch.no_grad():  # a LoRA B of zeros is the identity: make the adapter change the model
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    adapter = module.save_trained(tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_qwen3.resolve())
    card = (adapter / "README.md").read_text()
    assert "base_model" not in yaml.safe_load(card.split("---\n")[1])  # a local path is not a hub id
    assert str(tiny_qwen3.resolve()) in card and "AutoPeftModelForCausalLM" in card
    assert "lora" in card.lower() and '"r": 32' in card

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    ids = torch.tensor([[1, 2, 3, 4]])
    module.model.eval()  # no LoRA dropout
    with torch.no_grad():
        want = module.model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_hub_base_model_is_kept_as_its_id(tmp_path):
    from thinksafe.model.model_card import fix_base_model

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-0.6B"}))
    assert fix_base_model(tmp_path, "Qwen/Qwen3-0.6B") == "Qwen/Qwen3-0.6B"
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "Qwen/Qwen3-0.6B"
