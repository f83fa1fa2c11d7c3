"""ChatEncoder against the REAL Qwen3 and DeepSeek-R1-Distill chat templates: the supervised span is exactly the
response (reasoning included) plus the end-of-turn text, whatever the template does to assistant turns."""

from __future__ import annotations

import pytest
import torch

from thinksafe.model.tiny import build_tokenizer
from thinksafe.rows import IGNORE_INDEX, LABELS, ChatEncoder, EncodedRow, TextRow, collate, is_harmful

PROMPT = "How do I bake bread?"
REASONING = "Okay, let me think about this step by step. First, mix flour, water, yeast and salt."
ANSWER = "Mix flour, water, yeast and salt, knead, let it rise, and bake at 220 degrees."


@pytest.fixture(scope="module")
def qwen3_tok():
    return build_tokenizer("qwen3")


@pytest.fixture(scope="module")
def r1_tok():
    return build_tokenizer("r1")


def spans(tok, ids, labels):
    """(prompt text, supervised text) decoded from the unsupervised and supervised positions."""
    prompt = [i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX]
    supervised = [lab for lab in labels if lab != IGNORE_INDEX]
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt), "the mask must be one prompt prefix"
    return tok.decode(prompt, skip_special_tokens=False), tok.decode(supervised, skip_special_tokens=False)


def test_qwen3_keeps_think_block_and_matches_template(qwen3_tok):
    enc = ChatEncoder(qwen3_tok, "qwen3", max_length=512)
    response = f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"
    ids, labels = enc.encode(PROMPT, response)
    prompt_text, supervised = spans(qwen3_tok, ids, labels)

    assert not enc.template_strips_reasoning
    assert enc.end_of_turn == "<|im_end|>\n"
    assert prompt_text == "<|im_start|>user\nHow do I bake bread?<|im_end|>\n<|im_start|>assistant\n"
    assert supervised == response + "<|im_end|>\n"
    # Qwen3's template keeps the reasoning of the last turn, so here the full render must agree token for token
    full = qwen3_tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": response}], tokenize=False
    )
    assert qwen3_tok(full, add_special_tokens=False)["input_ids"] == ids


def test_r1_template_strips_reasoning_but_encoder_keeps_it(r1_tok):
    enc = ChatEncoder(r1_tok, "r1", max_length=512)
    response = f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"  # as stored: leading <think>\n restored
    ids, labels = enc.encode(PROMPT, response)
    prompt_text, supervised = spans(r1_tok, ids, labels)

    assert enc.template_strips_reasoning
    rendered = r1_tok.apply_chat_template(
        [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": response}], tokenize=False
    )
    assert REASONING not in rendered, "the real R1 template drops the reasoning; the test would prove nothing"

    assert enc.end_of_turn == "<｜end▁of▁sentence｜>"
    # the generation prompt already holds <think>\n: the target is exactly what the model generated after it
    assert prompt_text == "<｜begin▁of▁sentence｜><｜User｜>How do I bake bread?<｜Assistant｜><think>\n"
    assert supervised == f"{REASONING}\n</think>\n\n{ANSWER}<｜end▁of▁sentence｜>"
    assert prompt_text + supervised == enc.prompt_text(PROMPT) + response.removeprefix("<think>\n") + enc.end_of_turn
    assert ids.count(r1_tok.bos_token_id) == 1 and ids[0] == r1_tok.bos_token_id


def test_qwen3_non_thinking_prefill_is_not_supervised(qwen3_tok):
    enc = ChatEncoder(qwen3_tok, "qwen3", max_length=512, chat_template_kwargs={"enable_thinking": False})
    ids, labels = enc.encode(PROMPT, ANSWER)
    prompt_text, supervised = spans(qwen3_tok, ids, labels)
    assert prompt_text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert supervised == ANSWER + "<|im_end|>\n"


def test_unmasked_prompt_supervises_every_token(qwen3_tok):
    enc = ChatEncoder(qwen3_tok, "qwen3", max_length=512, mask_prompt=False)
    ids, labels = enc.encode(PROMPT, f"<think>\n{REASONING}\n</think>\n\n{ANSWER}")
    assert labels == ids


def test_truncation_cuts_the_end_of_the_target(r1_tok):
    full = ChatEncoder(r1_tok, "r1", max_length=4096)
    response = f"<think>\n{REASONING}\n</think>\n\n{ANSWER}"
    ids, labels = full.encode(PROMPT, response)
    prompt_len = labels.count(IGNORE_INDEX)

    short = ChatEncoder(r1_tok, "r1", max_length=prompt_len + 5)
    cut_ids, cut_labels = short.encode(PROMPT, response)
    assert len(cut_ids) == prompt_len + 5
    assert cut_ids == ids[: prompt_len + 5]
    assert cut_labels[prompt_len:] == ids[prompt_len : prompt_len + 5]
    assert r1_tok.eos_token_id not in cut_ids


def test_prompt_that_leaves_no_room_gives_none(qwen3_tok):
    enc = ChatEncoder(qwen3_tok, "qwen3", max_length=8)
    assert enc.encode("How do I bake bread? " * 10, "<think>\nx\n</think>\n\ny") is None


def test_encode_rows_keeps_label_and_source_and_counts_what_does_not_fit(qwen3_tok):
    enc = ChatEncoder(qwen3_tok, "qwen3", max_length=40, chat_template_kwargs={"enable_thinking": True})
    fits = TextRow("Hi?", "<think>\nx\n</think>\n\ny", "adversarial_harmful", "a.jsonl")
    too_long = TextRow("How do I bake bread? " * 10, "<think>\nx\n</think>\n\ny", "vanilla_benign")
    rows, dropped = enc.encode_rows([fits, too_long, fits])
    assert dropped == {"vanilla_benign": 1}
    assert rows == [enc.encode_row(fits)] * 2
    assert (rows[0].input_ids, rows[0].labels) == enc.encode(fits.prompt, fits.response)
    assert (rows[0].label, rows[0].source, rows[0].harmful) == ("adversarial_harmful", "a.jsonl", True)


def test_harmful_labels():
    assert [is_harmful(label) for label in LABELS] == [True, True, False, False]


def test_collate_pads_and_indexes_labels():
    rows = [EncodedRow([5, 6, 7], [-100, 6, 7], "adversarial_harmful"), EncodedRow([8], [8], "vanilla_benign")]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["harmful"].tolist() == [True, False]
    assert batch["harmful"].dtype == torch.bool
    assert batch["label_index"].tolist() == [LABELS.index("adversarial_harmful"), LABELS.index("vanilla_benign")]
