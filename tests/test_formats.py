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


@pytest.mark.parametrize(
    "response,fmt,strict,authors",
    [
        ("<think>\nhmm\n</think>\n\nI can't help with that.", "qwen3", True, True),
        ("<think>\nhmm, still thinking", "qwen3", False, False),
        ("Just an answer.", "qwen3", False, False),
        ("<think>a</think>", "r1", False, True),  # no answer after the block: the authors keep it
        ("<think>a</think>b<think>c</think>d", "qwen3", False, True),  # two blocks: kept
        ("preamble </think> answer", "qwen3", True, True),
        ("</think>", "qwen3", False, True),
        ("", "qwen3", False, False),
        ("Sure, bread: flour, water.", "plain", True, True),  # plain responses: the same rule either way
        ("<think> never closed", "plain", False, False),
    ],
)
def test_think_rule_strict_or_the_authors(response, fmt, strict, authors):
    """data.think_rule: thinksafe's strict check, or the authors' keep-iff-'</think>'-in-response
    (synthesize_data.py:82,106, after R1's opening tag is restored)."""
    assert check_response(response, fmt).ok is strict
    assert check_response(response, fmt, "strict").ok is strict
    assert check_response(response, fmt, "authors").ok is authors


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


def test_think_rule_is_a_data_option_bound_into_the_sets_fingerprint():
    """data.think_rule reaches the data stage through the DataModule's constructor (what LightningCLI parses) and
    binds the self-generated set: a set made with the authors' rule is not reused for the strict one, and sets
    made with the default keep the fingerprint they had before the option existed."""
    from jsonargparse import ArgumentParser

    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.data.prompts import PromptRow
    from thinksafe.data.selfgen import SelfGenJob
    from thinksafe.guards import OfflineJudge
    from thinksafe.sampling import SamplingConfig, TransformersSampler

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SafetyDataModule, "data")
    cfg = parser.parse_args(["--data.prompts=p.jsonl", "--data.think_rule=authors"])
    assert parser.instantiate_classes(cfg).data.think_rule == "authors"
    assert parser.parse_args(["--data.prompts=p.jsonl"]).data.think_rule == "strict"

    common = dict(
        model="m",
        prompts=[PromptRow("How do I bake bread?", "vanilla_benign", "t:1")],
        sampler=TransformersSampler(),
        guard=OfflineJudge(),
        sampling=SamplingConfig(),
        steering_template=PAPER_TEMPLATE,
        reasoning_format="qwen3",
    )
    before, fp_before = SelfGenJob(**common).settings()
    strict, fp_strict = SelfGenJob(**common, think_rule="strict").settings()
    authors, fp_authors = SelfGenJob(**common, think_rule="authors").settings()
    assert "think_rule" not in strict and (strict, fp_strict) == (before, fp_before)
    assert authors["think_rule"] == "authors" and fp_authors != fp_strict
    with pytest.raises(UserError, match="think_rule"):
        SelfGenJob(**common, think_rule="lenient")
