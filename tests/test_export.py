"""export_merged: the merged model gives the adapter model's logits and carries the chat template."""

from __future__ import annotations

import json

import pytest
import torch

from thinksafe.errors import UserError
from thinksafe.model.adapters import LoRA
from thinksafe.model.export import export_merged
from thinksafe.model.loading import load_causal_lm, load_tokenizer


@pytest.fixture(scope="module")
def trained_adapter(tiny_qwen3, tmp_path_factory):
    """A LoRA adapter directory as training writes it, with non-zero updates (a fresh LoRA merges to a no-op)."""
    torch.manual_seed(0)
    model = LoRA(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]).apply(load_causal_lm(str(tiny_qwen3)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    load_tokenizer(str(tiny_qwen3)).save_pretrained(out)
    return out, model.eval()


def test_merged_model_matches_the_adapter_model(tiny_qwen3, trained_adapter, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, peft_model = trained_adapter
    merged_dir = export_merged(adapter_dir, tmp_path / "merged")

    assert not (merged_dir / "adapter_config.json").exists()
    config = json.loads((merged_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["dtype"] == "float32"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3).eval()
    ids = torch.randint(5, 500, (2, 16))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-3), "the adapter must change logits"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    tok = AutoTokenizer.from_pretrained(merged_dir)
    assert tok.chat_template == load_tokenizer(str(tiny_qwen3)).chat_template


def test_dtype_option_and_explicit_base(tiny_qwen3, trained_adapter, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter_dir, _ = trained_adapter
    out = export_merged(adapter_dir, tmp_path / "bf16", base=str(tiny_qwen3), dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_full_fine_tune_directory_is_resaved(tiny_qwen3, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_merged(tiny_qwen3, tmp_path / "full")
    a = AutoModelForCausalLM.from_pretrained(out).eval()
    b = AutoModelForCausalLM.from_pretrained(tiny_qwen3).eval()
    ids = torch.randint(5, 500, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(a(input_ids=ids).logits, b(input_ids=ids).logits)


def test_user_errors_name_the_directory(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        export_merged(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="adapter_config.json"):
        export_merged(tmp_path / "empty", tmp_path / "out")


def _snapshot(directory) -> dict[str, bytes]:
    from pathlib import Path

    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def test_export_never_overwrites_without_asking(tiny_qwen3, trained_adapter, tmp_path):
    adapter_dir, _ = trained_adapter
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.json").write_text('{"mine": true}')
    with pytest.raises(UserError, match="not empty.*--overwrite"):
        export_merged(adapter_dir, taken)
    assert _snapshot(taken) == {"config.json": b'{"mine": true}'}

    # with --overwrite the old contents are replaced whole (nothing of them is left)
    export_merged(adapter_dir, taken, overwrite=True)
    assert json.loads((taken / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()), "no temporary directory is left"

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="a_file: it is a file"):
        export_merged(adapter_dir, tmp_path / "a_file", overwrite=True)

    empty = tmp_path / "empty_out"
    empty.mkdir()
    assert (export_merged(adapter_dir, empty) / "model.safetensors").is_file()


@pytest.mark.parametrize("target", ["base", "adapter", "inside_adapter"])
def test_export_refuses_the_base_and_adapter_directories_even_with_overwrite(tiny_qwen3, trained_adapter, target):
    adapter_dir, _ = trained_adapter
    out = {"base": tiny_qwen3, "adapter": adapter_dir, "inside_adapter": adapter_dir / "merged"}[target]
    before_base, before_adapter = _snapshot(tiny_qwen3), _snapshot(adapter_dir)
    with pytest.raises(UserError, match="overwrite the files it is made from"):
        export_merged(adapter_dir, out, base=str(tiny_qwen3), overwrite=True)
    assert _snapshot(tiny_qwen3) == before_base and _snapshot(adapter_dir) == before_adapter
