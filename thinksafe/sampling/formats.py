"""Reasoning formats: where the think block starts, and whether a completion closed it.

* ``qwen3``: the model opens ``<think>`` itself; the template takes ``enable_thinking``.
* ``r1``: DeepSeek-R1-Distill; the generation prompt already ends in ``<think>\\n``, so completions
  lack the opening tag and :func:`restore_response` puts it back.
* ``plain``: a chat model with no think block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from thinksafe.errors import UserError
from thinksafe.rows import CLOSE, OPEN, Format

__all__ = [
    "CLOSE",
    "OPEN",
    "Format",
    "FormatOption",
    "FormatCheck",
    "ThinkRule",
    "check_response",
    "detect_format",
    "resolve_format",
    "restore_response",
    "split_think",
]

FormatOption = Literal["auto", "qwen3", "r1", "plain"]

ThinkRule = Literal["strict", "authors"]
"""Which reasoning responses the data stage keeps (:func:`check_response`): ``strict`` (thinksafe's: one closed
think block and a non-empty answer after it) or ``authors`` (the ThinkSafe authors': ``"</think>" in response``,
``synthesize_data.py:82,106``)."""


def detect_format(chat_template: str | None, generation_prompt: str | None = None) -> Format:
    """Guess the format from the chat template source and, when known, the rendered generation prompt
    (the text the template appends for ``add_generation_prompt=True``)."""
    if generation_prompt is not None and generation_prompt.rstrip().endswith(OPEN):
        return "r1"
    tpl = chat_template or ""
    if OPEN not in tpl and CLOSE not in tpl:
        return "plain"
    if "enable_thinking" in tpl:
        return "qwen3"
    if f"{OPEN}\\n" in tpl.split("add_generation_prompt")[-1]:
        return "r1"
    return "qwen3"


def resolve_format(
    model: str, option: FormatOption, tokenizer=None, chat_template_kwargs: dict[str, Any] | None = None
) -> tuple[Format, dict[str, Any]]:
    """The reasoning format (detected from ``model``'s chat template unless ``option`` names it) and the
    chat-template kwargs that go with it: ``chat_template_kwargs`` when given, else the format's own
    (``enable_thinking=True`` for Qwen3). ``tokenizer``: the model's, when the caller has it loaded."""
    if option == "auto":
        if tokenizer is None:
            from thinksafe.model.loading import load_tokenizer

            tokenizer = load_tokenizer(model)
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        if template is None:
            raise UserError(
                f"model.name_or_path: the tokenizer of {model!r} has no chat template; thinksafe samples through "
                "the model's chat template. Use a chat/reasoning model, or set data.reasoning_format and add a "
                "template."
            )
        gen = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
        )
        fmt = detect_format(template, gen)
    else:
        fmt = option
    if chat_template_kwargs is not None:
        return fmt, chat_template_kwargs
    return fmt, ({"enable_thinking": True} if fmt == "qwen3" else {})


def restore_response(completion: str, fmt: Format) -> str:
    """The full response as the model produced it after the chat prompt, think block included."""
    if fmt == "r1" and OPEN not in completion:
        return f"{OPEN}\n{completion}"
    return completion


@dataclass(frozen=True)
class FormatCheck:
    ok: bool
    reason: str | None = None


def check_response(response: str, fmt: Format, rule: ThinkRule = "strict") -> FormatCheck:
    """A reasoning response must hold one closed think block and some text after it (``rule="strict"``), or
    only contain ``</think>`` (``rule="authors"``: an empty answer, a second think block or text before
    ``<think>`` pass); a plain one must not leave a think block open (either rule)."""
    stripped = response.strip()
    opened, closed = stripped.count(OPEN), stripped.count(CLOSE)
    if fmt != "plain" and rule == "authors":
        return FormatCheck(True) if CLOSE in response else FormatCheck(False, "no </think>")
    if not stripped:
        return FormatCheck(False, "empty response")
    if fmt == "plain":
        if opened > closed:
            return FormatCheck(False, "unclosed think block")
        return FormatCheck(True)
    if opened == 0 and closed == 0:
        return FormatCheck(False, "no think block")
    if closed == 0 or stripped.rfind(CLOSE) < stripped.rfind(OPEN):
        return FormatCheck(False, "unclosed think block")
    if opened > 1 or closed > 1:
        return FormatCheck(False, "more than one think block")
    if not stripped.split(CLOSE, 1)[1].strip():
        return FormatCheck(False, "no answer after the think block")
    return FormatCheck(True)


def split_think(response: str) -> tuple[str, str | None]:
    """``(reasoning, answer)``; ``answer`` is None when a think block was opened and never closed."""
    if CLOSE in response:
        head, tail = response.split(CLOSE, 1)
        return head.replace(OPEN, "", 1).strip(), tail.strip()
    if OPEN in response:
        return response.split(OPEN, 1)[1].strip(), None
    return "", response.strip()
