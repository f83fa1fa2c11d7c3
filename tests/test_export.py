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
