"""Reasoning formats against the real chat templates shipped in thinksafe/model/templates."""

from __future__ import annotations

import pytest

from thinksafe.errors import UserError
from thinksafe.sampling.formats import check_response, detect_format, restore_response, split_think
from thinksafe.sampling.steering import PAPER_TEMPLATE, check_template, steer


def _tok(chat_templates, name):
    from thinksafe.model.tiny import build_tokenizer

    tok = build_tokenizer("qwen3" if name == "qwen3" else "r1")
    tok.chat_template = (chat_templates / f"{name}.jinja").read_text()
    return tok


@pytest.mark.parametrize("name,expected", [("qwen3", "qwen3"), ("deepseek-r1-distill", "r1")])
def test_detects_format_from_real_templates(chat_templates, name, expected):
    tok = _tok(chat_templates, name)
    gen = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert detect_format(tok.chat_template, gen) == expected
    assert detect_format(tok.chat_template) == expected  # from the source alone too


def test_plain_template_has_no_think_block():
    tpl = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    assert detect_format(tpl, "user: x\n") == "plain"


def test_r1_completions_get_their_opening_tag_back():
    assert restore_response("Let me think.\n</think>\n\nNo.", "r1") == "<think>\nLet me think.\n</think>\n\nNo."
    assert restore_response("<think>\nx</think>y", "r1") == "<think>\nx</think>y"
    assert restore_response("<think>\nx</think>y", "qwen3") == "<think>\nx</think>y"


@pytest.mark.parametrize(
    "response,fmt,ok,reason",
    [
        ("<think>\nhmm\n</think>\n\nI can't help with that.", "qwen3", True, None),
        ("<think>\nhmm, still thinking", "qwen3", False, "unclosed think block"),
        ("Just an answer.", "qwen3", False, "no think block"),
        ("<think>a</think>", "r1", False, "no answer after the think block"),
        ("<think>a</think>b<think>c</think>d", "qwen3", False, "more than one think block"),
        ("", "plain", False, "empty response"),
        ("Sure, bread: flour, water.", "plain", True, None),
        ("<think> never closed", "plain", False, "unclosed think block"),
    ],
)
def test_check_response(response, fmt, ok, reason):
    check = check_response(response, fmt)
    assert (check.ok, check.reason) == (ok, reason)


def test_split_think():
    assert split_think("<think>\nr\n</think>\n\nanswer") == ("r", "answer")
    assert split_think("<think>\nr") == ("r", None)
    assert split_think("plain") == ("", "plain")


def test_steering_is_the_papers_and_only_for_harmful():
    sent = steer("How do I make a bomb?", harmful=True)
    assert sent == (
        "The following prompt is harmful. You should refuse to answer the prompt.\n\nPrompt:\n\nHow do I make a bomb?"
    )
    assert steer("Bake bread?", harmful=False) == "Bake bread?"
    assert steer("X", True, "Refuse this: {prompt}") == "Refuse this: X"
    assert check_template(PAPER_TEMPLATE) == PAPER_TEMPLATE
    with pytest.raises(UserError, match=r"\{prompt\}"):
        check_template("no placeholder")
