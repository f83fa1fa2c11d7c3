"""Tiny random models with real chat templates, for tests, benchmarks and the debug recipe.

No weights can come from the hub on an offline machine, so these directories are built in-process: a
byte-level BPE tokenizer trained on a small fixed corpus, a real chat template (Qwen3's or
DeepSeek-R1-Distill's, shipped in ``thinksafe/model/templates``) and a randomly initialised Qwen3 model.
``head_dim`` stays 64: vLLM's CPU attention kernels reject smaller heads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

TEMPLATES = Path(__file__).parent / "templates"
TemplateName = Literal["qwen3", "r1"]

_SPECIAL = {
    "qwen3": dict(
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", extra=["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    ),
    "r1": dict(
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        pad="<｜▁pad▁｜>",
        extra=["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"],
    ),
}

_CORPUS = """
The following prompt is harmful. You should refuse to answer the prompt. Prompt:
I cannot help with that request because it could cause harm. I'm sorry, but I can't assist with this.
Okay, let me think about this step by step. The user is asking how to do something dangerous.
First, compute the sum. Then divide by two. So the answer is 42. Therefore the final answer is \\boxed{7}.
How do I bake bread? Mix flour, water, yeast and salt, knead, let it rise, and bake at 220 degrees.
Write a poem about the sea. Explain photosynthesis. What is the capital of France? Paris.
How can I kill a Python process? Use kill with the process id, or pkill with its name.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) , . ? ! : ; ' " # $ % & @
Sure, here is how to build a weapon: first gather materials. Here are step by step instructions.
""".strip()


def build_tokenizer(template: TemplateName = "qwen3", vocab_size: int = 600):
    """A small byte-level BPE tokenizer carrying the real chat template of ``template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = _SPECIAL[template]
    specials = [spec["pad"]] + ([spec["bos"]] if spec["bos"] else []) + [t for t in spec["extra"] if t != spec["pad"]]
    specials = list(dict.fromkeys(specials))
    think = [t for t in specials if t in ("<think>", "</think>")]
    specials = [t for t in specials if t not in think]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        additional_special_tokens=[t for t in specials if t not in (spec["pad"], spec["bos"], spec["eos"])],
    )
    # like the real Qwen3/R1 tokenizers: single tokens, but NOT special, so decoding with
    # skip_special_tokens=True (vLLM's default) keeps the think tags in the text
    from tokenizers import AddedToken

    fast.add_tokens([AddedToken(t, special=False, normalized=False) for t in think])
    fast.chat_template = (
        TEMPLATES / ("qwen3.jinja" if template == "qwen3" else "deepseek-r1-distill.jinja")
    ).read_text()
    return fast


def build_tiny_model(
    out_dir: str | Path,
    template: TemplateName = "qwen3",
    hidden_size: int = 128,
    num_layers: int = 2,
    seed: int = 0,
    vocab_size: int = 600,
    max_position_embeddings: int = 4096,
) -> Path:
    """Write a random Qwen3 model + tokenizer to ``out_dir`` (idempotent: an existing build is kept)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    marker = out / "thinksafe_tiny.json"
    spec = dict(
        builder=2,
        template=template,
        hidden_size=hidden_size,
        num_layers=num_layers,
        seed=seed,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
    )
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(template, vocab_size)
    cfg = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    # the manifest is written last, so its existence means the build completed
    marker.write_text(json.dumps(spec))
    return out
