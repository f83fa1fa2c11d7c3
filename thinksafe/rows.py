"""Training rows and their labels: the typed rows, the one encoder that turns text into tokens, the one collate.

This module sits at the bottom of thinksafe's layering and imports nothing of thinksafe but
:mod:`thinksafe.errors`: the data stage, the LightningModule, the metrics, evaluation and the testbed all speak
in these types, so none of them has to import another to learn what a row is. The think-block tags live here
for the same reason (a response's reasoning is part of the row); :mod:`thinksafe.sampling.formats` builds the
format detection and checks on them.

Rendering. The target must be exactly what the model produced during sampling: the reasoning included.
Rendering the response as an assistant turn through the chat template is NOT safe for that, because some
templates rewrite assistant turns: DeepSeek-R1-Distill's drops everything before ``</think>``, so a trainer
that renders the full conversation silently trains on the bare answer. :class:`ChatEncoder` therefore renders
only the user turn through the template (with the generation prompt, as the sampler did), appends the response
itself followed by the template's end-of-turn text, and tokenizes the two parts separately, so that the
prompt/target boundary and the loss mask are exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from thinksafe.errors import UserError

LABELS = ("vanilla_harmful", "adversarial_harmful", "vanilla_benign", "adversarial_benign")
"""The SafeChain prompt labels, in the order batches index them (``label_index``)."""

IGNORE_INDEX = -100
"""Label of a position without loss (the prompt, padding)."""

Format = Literal["qwen3", "r1", "plain"]
"""Reasoning format of a model's responses (see :mod:`thinksafe.sampling.formats`)."""
OPEN, CLOSE = "<think>", "</think>"

_SENTINEL = "\x00THINKSAFE-SENTINEL\x00"


def is_harmful(label: str) -> bool:
    """Whether a prompt label (one of :data:`LABELS`) names a harmful prompt."""
    return "harmful" in label


@dataclass(frozen=True)
class TextRow:
    """A (prompt, response) pair to train on or to score, before tokenization.

    ``source`` names where it came from (a file, a hub id, ``self-generated``); None when not told."""

    prompt: str
    response: str
    label: str
    source: str | None = None

    @property
    def harmful(self) -> bool:
        return is_harmful(self.label)


@dataclass(frozen=True)
class EncodedRow:
    """A tokenized training row: ``input_ids`` and ``labels`` (:data:`IGNORE_INDEX` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    label: str
    source: str | None = None

    @property
    def harmful(self) -> bool:
        return is_harmful(self.label)


class ChatEncoder:
    """Token ids and labels for (prompt, response) rows, rendered like the model saw them while sampling.

    ``input_ids = template(user turn, generation prompt) + target`` where ``target`` is the response minus
    the part the generation prompt already holds (R1's ``<think>\\n``, Qwen3's pre-filled empty think block with
    ``enable_thinking=False``), followed by the template's end-of-turn text (``<|im_end|>\\n`` for Qwen3,
    ``<｜end▁of▁sentence｜>`` for R1). Special tokens appear only where the template renders them.

    Truncation (``max_length``): the prompt is never cut; the end of the target is (a truncated row then has
    no end-of-turn token). A row whose prompt leaves no room for a single target token gives None; the caller
    drops it and counts it (:meth:`encode_rows` does both).

    Args:
        tokenizer: a Hugging Face tokenizer carrying the model's chat template.
        fmt: reasoning format of the responses ("qwen3", "r1" or "plain"; resolve "auto" with
            :func:`thinksafe.sampling.formats.resolve_format`).
        max_length: most tokens per row, prompt included.
        mask_prompt: compute the loss on the target only (labels -100 on the prompt). False: on every token.
        chat_template_kwargs: extra template variables used while sampling (``enable_thinking`` for Qwen3).
    """

    def __init__(
        self,
        tokenizer,
        fmt: Format,
        max_length: int,
        mask_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        if max_length < 2:
            raise UserError(f"data.max_length must be ≥ 2 tokens, got {max_length}.")
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; training rows "
                "are rendered through it. Use a chat/reasoning model or set tokenizer.chat_template."
            )
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.max_length = max_length
        self.mask_prompt = mask_prompt
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.end_of_turn = self._end_of_turn()
        self.template_strips_reasoning = self._strips_reasoning()

    @property
    def pad_id(self) -> int:
        """The padding id batches of these rows are collated with (the tokenizer's, else its end-of-sequence)."""
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **self.chat_template_kwargs
        )

    def _end_of_turn(self) -> str:
        text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}], False)
        if _SENTINEL not in text:
            raise UserError("the chat template drops the assistant turn's text; cannot find its end-of-turn marker.")
        return text.rsplit(_SENTINEL, 1)[1]

    def _strips_reasoning(self) -> bool:
        reasoning = f"{OPEN}\n{_SENTINEL}\n{CLOSE}\n\nanswer"
        text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": reasoning}], False)
        return _SENTINEL not in text

    def prompt_text(self, prompt: str) -> str:
        """The user turn as the sampler sent it: template + generation prompt."""
        return self._render([{"role": "user", "content": prompt}], True)

    def target_text(self, prompt_text: str, response: str) -> str:
        """The supervised text: the response without what the generation prompt pre-fills, then end of turn."""
        if self.fmt != "plain" and OPEN in prompt_text:
            prefill = prompt_text[prompt_text.rfind(OPEN) :]
            if response.startswith(prefill):
                response = response[len(prefill) :]
        return response + self.end_of_turn

    def encode(self, prompt: str, response: str) -> tuple[list[int], list[int]] | None:
        """``(input_ids, labels)`` with -100 on unsupervised positions; None when no target token fits."""
        prompt_text = self.prompt_text(prompt)
        prompt_ids = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        room = self.max_length - len(prompt_ids)
        if room < 1:
            return None
        target_ids = self.tokenizer(self.target_text(prompt_text, response), add_special_tokens=False)["input_ids"]
        target_ids = target_ids[:room]
        if not target_ids:
            return None
        input_ids = prompt_ids + target_ids
        labels = ([IGNORE_INDEX] * len(prompt_ids) if self.mask_prompt else list(prompt_ids)) + list(target_ids)
        return input_ids, labels

    def encode_row(self, row: TextRow) -> EncodedRow | None:
        """``row`` tokenized, its label and source kept; None when no target token fits."""
        enc = self.encode(row.prompt, row.response)
        return None if enc is None else EncodedRow(enc[0], enc[1], row.label, row.source)

    def encode_rows(self, rows: Iterable[TextRow]) -> tuple[list[EncodedRow], dict[str, int]]:
        """Every row that fits, in order, and how many were dropped per label (no target token within
        ``max_length``)."""
        encoded, dropped = [], {}
        for row in rows:
            enc = self.encode_row(row)
            if enc is None:
                dropped[row.label] = dropped.get(row.label, 0) + 1
            else:
                encoded.append(enc)
        return encoded, dropped


def collate(rows: Sequence[EncodedRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded rows into a batch.

    Returns ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding), ``harmful`` (bool [B]) and
    ``label_index`` (long [B], index into :data:`LABELS`).
    """
    if not rows:
        raise ValueError("collate got an empty batch")
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids, dtype=torch.long)
        labels[i, :n] = torch.tensor(r.labels, dtype=torch.long)
        attention_mask[i, :n] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "harmful": torch.tensor([r.harmful for r in rows], dtype=torch.bool),
        "label_index": torch.tensor([LABELS.index(r.label) for r in rows], dtype=torch.long),
    }
