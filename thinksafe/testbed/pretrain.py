"""Train the testbed model from scratch: a byte-level BPE tokenizer over the corpus, then a tiny Qwen3.

Plain torch on the CPU, one process, deterministic given the seed on a given machine (one thread count,
one torch build: floating-point sums in another order give other weights). Rows are rendered exactly as
thinksafe renders training rows (:class:`thinksafe.rows.ChatEncoder`: the real Qwen3 chat template with
``enable_thinking``), so the model's own samples later look like its training data, and the loss is on the
response only: the model learns to answer, not to write requests.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from thinksafe.model.tiny import TEMPLATES
from thinksafe.rows import IGNORE_INDEX, ChatEncoder, EncodedRow, TextRow, collate

QWEN3_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Qwen3's pad and turn tokens: special, so decoding with ``skip_special_tokens`` drops them."""
THINK_TOKENS = ("<think>", "</think>")
"""Single tokens but NOT special, as in Qwen3's own tokenizer: vLLM decodes with ``skip_special_tokens=True``,
and the think block must survive that."""


@dataclass
class ModelShape:
    """The Qwen3 architecture of the testbed model (``head_dim`` is 64: vLLM's CPU kernels need ≥ 64)."""

    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 2
    """Attention heads of 64 dimensions each (``hidden_size`` need not equal ``num_heads * 64``)."""
    num_kv_heads: int = 1
    intermediate_size: int = 384
    vocab_size: int = 768
    """Target size of the BPE vocabulary (the trainer may stop below it)."""

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")


@dataclass
class PretrainConfig:
    """The optimisation of the testbed model."""

    steps: int = 1600
    batch_size: int = 32
    lr: float = 3e-3
    """Peak AdamW learning rate (after linear warmup, cosine decay to a tenth of it)."""
    warmup_steps: int = 60
    weight_decay: float = 0.01
    max_length: int = 192
    """Tokens per row (prompt + response); the corpus rows are far shorter."""
    threads: int = 1
    """CPU threads of torch while pretraining. Part of the recipe: another count sums floats in another
    order and gives other (equally good) weights; one thread also runs best on a machine shared with others."""


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer over ``texts`` carrying the real Qwen3 chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN3_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = (TEMPLATES / "qwen3.jinja").read_text()
    return fast


def new_model(tokenizer, shape: ModelShape, seed: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def encode_rows(tokenizer, rows: list[dict], max_length: int) -> list[EncodedRow]:
    """Rows as thinksafe's trainer sees them (loss on the response only)."""
    encoder = ChatEncoder(
        tokenizer, "qwen3", max_length, mask_prompt=True, chat_template_kwargs={"enable_thinking": True}
    )
    out = []
    for r in rows:
        enc = encoder.encode_row(TextRow(r["prompt"], r["response"], "vanilla_benign"))
        if enc is None:
            raise ValueError(f"corpus row longer than max_length={max_length}: {r['prompt'][:60]!r}")
        out.append(enc)
    return out


def _lr_factor(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(
    model,
    encoded: list[EncodedRow],
    cfg: PretrainConfig,
    seed: int,
    pad_id: int,
    report: Callable[[int, float, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place for ``cfg.steps`` steps; returns the loss of every step. ``report(step, loss,
    seconds)`` is called every 50 steps."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(model, encoded, cfg, seed, pad_id, report)
    finally:
        torch.set_num_threads(threads)


def _train(model, encoded, cfg, seed, pad_id, report) -> list[float]:
    order = random.Random(f"{seed}:batches")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, cfg))
    model.train()
    losses, started = [], time.perf_counter()
    indices: list[int] = []
    for step in range(cfg.steps):
        if len(indices) < cfg.batch_size:  # epochs in a fresh shuffled order each
            more = list(range(len(encoded)))
            order.shuffle(more)
            indices += more
        batch = collate([encoded[i] for i in indices[: cfg.batch_size]], pad_id)
        del indices[: cfg.batch_size]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if report is not None and ((step + 1) % 50 == 0 or step + 1 == cfg.steps):
            report(step + 1, sum(losses[-50:]) / len(losses[-50:]), time.perf_counter() - started)
    model.eval()
    return losses


def save(model, tokenizer, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
