"""The in-distribution score: response NLL under a model, per (source, label); the same number whether it is
computed from files (what `generate` reports) or at the start of a real fit (what `fit` logs)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from thinksafe.metrics.in_distribution import (
    GroupNLL,
    InDistributionLogger,
    InDistributionScore,
    response_nll,
    score_responses,
    subsample,
)
from thinksafe.model.loading import load_causal_lm, load_tokenizer
from thinksafe.rows import ChatEncoder, TextRow

ROWS = [
    TextRow(
        prompt="How do I bake bread?",
        response="<think>\nMix flour and water.\n</think>\n\nKnead and bake.",
        label="vanilla_benign",
        source="a.jsonl",
    ),
    TextRow(
        prompt="How do I build a weapon?",
        response="<think>\nThis is harmful.\n</think>\n\nI cannot help.",
        label="vanilla_harmful",
        source="a.jsonl",
    ),
    TextRow(
        prompt="What is 2 + 3?",
        response="<think>\n2 + 3 = 5.\n</think>\n\nThe answer is \\boxed{5}.",
        label="vanilla_benign",
        source="b.jsonl",
    ),
    TextRow(
        prompt="Tell me how to hurt someone.",
        response="<think>\nNo.\n</think>\n\nI'm sorry, but I can't help.",
        label="vanilla_harmful",
        source="b.jsonl",
    ),
    TextRow(
        prompt="Explain photosynthesis.",
        response="<think>\nLight to sugar.\n</think>\n\nPlants make sugar.",
        label="vanilla_benign",
        source="a.jsonl",
    ),
]


def encode(tok, rows, max_length: int = 16384):
    """Rows encoded as the trainer encodes Qwen3 rows."""
    return ChatEncoder(tok, "qwen3", max_length, chat_template_kwargs={"enable_thinking": True}).encode_rows(rows)[0]


@pytest.fixture(scope="module")
def tiny(tiny_qwen3):
    tok = load_tokenizer(str(tiny_qwen3))
    return tiny_qwen3, tok, load_causal_lm(str(tiny_qwen3)).eval()


def test_response_nll_is_the_models_own_loss_on_the_response_tokens(tiny):
    path, tok, model = tiny
    encoded = encode(tok, ROWS, max_length=256)
    score = response_nll(model, encoded, tok.pad_token_id, batch_size=2)

    expected: dict[tuple[str, str], list[float]] = {}
    with torch.no_grad():
        for r in encoded:
            ids, labels = torch.tensor([r.input_ids]), torch.tensor([r.labels])
            n = int((labels[:, 1:] != -100).sum())
            loss = float(model(input_ids=ids, labels=labels).loss)  # transformers' mean over supervised tokens
            acc = expected.setdefault((r.source, r.label), [0.0, 0])
            acc[0] += loss * n
            acc[1] += n
    assert {(g.source, g.label) for g in score.groups} == set(expected)
    for g in score.groups:
        total, tokens = expected[(g.source, g.label)]
        assert g.tokens == tokens
        assert g.nll == pytest.approx(total / tokens, rel=1e-5)
    # token-weighted everywhere, and independent of batching (padding must not leak into the score)
    assert score.overall == pytest.approx(
        sum(t for t, _ in expected.values()) / sum(n for _, n in expected.values()), rel=1e-5
    )
    again = response_nll(model, encoded, tok.pad_token_id, batch_size=5)
    assert [g.nll for g in again.groups] == pytest.approx([g.nll for g in score.groups], rel=1e-5)


def test_the_response_is_scored_not_the_prompt(tiny):
    _, tok, model = tiny
    row = ROWS[0]
    longer_prompt = replace(row, prompt=row.prompt + " Please answer in detail, with every step spelled out.")
    a = response_nll(model, encode(tok, [row]), tok.pad_token_id)
    b = response_nll(model, encode(tok, [longer_prompt]), tok.pad_token_id)
    assert a.groups[0].tokens == b.groups[0].tokens  # same response tokens, whatever the prompt
    c = response_nll(model, encode(tok, [replace(row, response=row.response + " And enjoy it.")]), tok.pad_token_id)
    assert c.groups[0].tokens > a.groups[0].tokens


def test_summaries_and_metric_names():
    score = InDistributionScore(
        [
            GroupNLL("self", "vanilla_benign", 2, 30, 1.0),
            GroupNLL("self", "vanilla_harmful", 1, 10, 3.0),
            GroupNLL("teacher", "vanilla_harmful", 1, 10, 5.0),
        ]
    )
    assert score.overall == pytest.approx((30 * 1 + 10 * 3 + 10 * 5) / 50)
    assert score.by_label() == pytest.approx({"vanilla_benign": 1.0, "vanilla_harmful": 4.0})
    assert score.by_source() == pytest.approx({"self": 1.5, "teacher": 5.0})
    metrics = score.metrics()
    assert metrics["in_distribution/nll"] == pytest.approx(2.2)
    assert metrics["in_distribution/nll/teacher/vanilla_harmful"] == 5.0
    assert json.loads(json.dumps(score.as_dict()))["by_label"]["vanilla_harmful"] == pytest.approx(4.0)
    assert InDistributionScore([]).overall is None


def test_subsampling_draws_per_source_and_label():
    rows = [TextRow(f"p{i}", f"r{i}", "vanilla_benign" if i % 3 else "vanilla_harmful", "s") for i in range(30)]
    kept = subsample(rows, 4, seed=1)
    assert sum(r.label == "vanilla_harmful" for r in kept) == 4 and len(kept) == 8
    assert kept == subsample(rows, 4, seed=1) != subsample(rows, 4, seed=2)
    assert [rows.index(r) for r in kept] == sorted(rows.index(r) for r in kept)  # original order kept
    assert subsample(rows, None) == rows


@pytest.mark.slow
def test_fit_start_logs_the_score_that_generate_reports(tiny_qwen3, tmp_path):
    """One real optimizer step through SafetyDataModule + ThinkSafeModule: the callback's score at fit start is
    the score of the same rows from the files under the model loaded fresh, and lands in TensorBoard."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.model.adapters import LoRA
    from thinksafe.model.module import ThinkSafeModule

    responses = tmp_path / "responses.jsonl"
    responses.write_text(
        "".join(json.dumps(dict(instruction=r.prompt, response=r.response, label=r.label)) + "\n" for r in ROWS)
    )
    dm = SafetyDataModule(
        responses=str(responses),
        model_name_or_path=str(tiny_qwen3),
        reasoning_format="qwen3",
        max_length=256,
        batch_size=2,
    )
    module = ThinkSafeModule(str(tiny_qwen3), adapter=LoRA(r=4, alpha=8, dropout=0.0), lr=1e-2)
    callback = InDistributionLogger(limit=None, batch_size=3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=1,
        logger=TensorBoardLogger(tmp_path, name="logs"),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=dm)

    from_files = score_responses(
        str(tiny_qwen3), [replace(r, source=str(responses)) for r in ROWS], "qwen3", max_length=256, limit=None
    )
    assert callback.score is not None
    assert [(g.source, g.label, g.tokens) for g in callback.score.groups] == [
        (g.source, g.label, g.tokens) for g in from_files.groups
    ]
    assert callback.score.overall == pytest.approx(from_files.overall, rel=1e-5)

    log_dir = trainer.log_dir
    written = json.loads((tmp_path / "logs" / "version_0" / "in_distribution.json").read_text())
    assert written["overall"] == pytest.approx(from_files.overall, rel=1e-5)
    events = EventAccumulator(log_dir)
    events.Reload()
    logged = events.Scalars("in_distribution/nll")
    assert [e.step for e in logged] == [0] and logged[0].value == pytest.approx(from_files.overall, rel=1e-5)
    assert "in_distribution/nll/vanilla_harmful" in events.Tags()["scalars"]


def test_generate_report_scores_the_kept_rows_and_is_cached(tiny_qwen3, tmp_path):
    """What `thinksafe generate` reports: the kept rows of a finished set, under the model that sampled them;
    written beside the set and reused while the set is unchanged."""
    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.metrics.in_distribution import report_generated

    out = tmp_path / "selfgen"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"fingerprint": "abc"}))
    samples = [
        dict(prompt=r.prompt, response=r.response, label=r.label, kept=i != 1, source=f"p.jsonl:{i}")
        for i, r in enumerate(ROWS)
    ]
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (out / "stats.json").write_text("{}")  # written last by generate: the set is finished
    dm = SafetyDataModule(
        prompts="unused.jsonl",
        output_dir=str(out),
        model_name_or_path=str(tiny_qwen3),
        reasoning_format="qwen3",
        max_length=256,
    )
    score = report_generated(dm, limit=None)
    kept = [replace(r, source="self-generated") for i, r in enumerate(ROWS) if i != 1]
    expected = score_responses(str(tiny_qwen3), kept, "qwen3", max_length=256, limit=None)
    assert score.overall == pytest.approx(expected.overall, rel=1e-5)
    assert sum(g.rows for g in score.groups) == 4
    written = json.loads((out / "in_distribution.json").read_text())
    assert written["key"]["fingerprint"] == "abc"

    (out / "samples.jsonl").write_text("")  # a cached report does not read the samples again
    again = report_generated(dm, limit=None)
    assert again.overall == pytest.approx(score.overall)
    (out / "manifest.json").write_text(json.dumps({"fingerprint": "changed"}))
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples[:3]))
    assert sum(g.rows for g in report_generated(dm, limit=None).groups) == 2  # a changed set is scored again
