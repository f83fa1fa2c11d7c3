"""In-distribution score of a training set: the mean per-token NLL of its responses under the initial model.

ThinkSafe's core argument is that self-generated refusals are *in distribution* for the model being
aligned, while refusals written by a teacher (another model, humans, a template) are not, and that fitting
out-of-distribution targets is what costs reasoning ability. This module makes that measurable for any
training set: render each (prompt, response) row exactly as the trainer does (:class:`~thinksafe.rows.ChatEncoder`: chat
template, reasoning kept in the target) and average the negative log-likelihood of the response tokens
(the supervised ones, end-of-turn token included) under the model, per data source and label. Lower is
more in distribution; a self-generated set sits near the model's own sampling entropy, a teacher-written
set well above it.

Means are token-weighted within a group (source, label); ``overall`` weights every token equally.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from thinksafe.model.kl import shift_labels, token_cross_entropy
from thinksafe.rows import IGNORE_INDEX, ChatEncoder, EncodedRow, TextRow, collate
from thinksafe.sampling.formats import resolve_format


@dataclass(frozen=True)
class GroupNLL:
    """Mean NLL of the response tokens of one (source, label) group."""

    source: str
    label: str
    rows: int
    tokens: int
    nll: float
    """Nats per response token."""


@dataclass
class InDistributionScore:
    """Per-group response NLL under one model; see the module docstring."""

    groups: list[GroupNLL]
    model: str = ""

    @property
    def tokens(self) -> int:
        return sum(g.tokens for g in self.groups)

    @property
    def overall(self) -> float | None:
        """Token-weighted mean over every group (None when nothing was scored)."""
        return self._mean(self.groups)

    def by_label(self) -> dict[str, float]:
        return {
            lab: self._mean([g for g in self.groups if g.label == lab])
            for lab in dict.fromkeys(g.label for g in self.groups)
        }

    def by_source(self) -> dict[str, float]:
        return {
            src: self._mean([g for g in self.groups if g.source == src])
            for src in dict.fromkeys(g.source for g in self.groups)
        }

    @staticmethod
    def _mean(groups: Sequence[GroupNLL]) -> float | None:
        tokens = sum(g.tokens for g in groups)
        return sum(g.nll * g.tokens for g in groups) / tokens if tokens else None

    def metrics(self, prefix: str = "in_distribution") -> dict[str, float]:
        """Flat scalars for a logger: ``{prefix}/nll``, ``{prefix}/nll/<label>``, and per source when there
        are several."""
        out: dict[str, float] = {}
        if self.overall is not None:
            out[f"{prefix}/nll"] = self.overall
        for lab, v in self.by_label().items():
            out[f"{prefix}/nll/{lab}"] = v
        if len({g.source for g in self.groups}) > 1:
            for g in self.groups:
                out[f"{prefix}/nll/{g.source}/{g.label}"] = g.nll
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "overall": self.overall,
            "tokens": self.tokens,
            "by_label": self.by_label(),
            "groups": [asdict(g) for g in self.groups],
        }

    def table(self, title: str = "in-distribution score (response NLL under the initial model)"):
        from rich.table import Table

        t = Table(title=title)
        for col in ("source", "label", "rows", "tokens", "NLL/token"):
            t.add_column(col, justify="left" if col in ("source", "label") else "right")
        for g in self.groups:
            t.add_row(g.source, g.label, str(g.rows), str(g.tokens), f"{g.nll:.3f}")
        if self.overall is not None and len(self.groups) > 1:
            t.add_row("all", "", str(sum(g.rows for g in self.groups)), str(self.tokens), f"{self.overall:.3f}")
        return t


def response_nll(
    model: torch.nn.Module,
    rows: Sequence[EncodedRow],
    pad_id: int,
    batch_size: int = 4,
    chunk_size: int = 1024,
    progress: str | None = "in-distribution NLL",
    console=None,
) -> InDistributionScore:
    """Mean NLL of the supervised tokens of encoded rows under ``model``, per (source, label).

    Rows are what :class:`~thinksafe.rows.ChatEncoder` produces and the trainer trains on (a row without a
    ``source`` counts as ``"training set"``). The model is run in eval mode without gradients and put back in its
    mode after. Rows are batched in length order (less padding); the result does not depend on ``batch_size``.
    ``progress`` labels the console's progress (rows scored, tokens/s, ETA; None: silent), on ``console``
    (stderr by default).
    """
    from contextlib import nullcontext

    from thinksafe.sampling.progress import GenerationProgress

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums: dict[tuple[str, str], list[float]] = {}  # (source, label) -> [nll sum, tokens, rows]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    # the same display as generation (rows, tokens/s, ETA); tokens are those the forward passes read
    if progress and rows:
        from rich.console import Console

        # soft wrap: a log file keeps each progress line whole
        shown = GenerationProgress(progress, total=len(rows), console=console or Console(stderr=True, soft_wrap=True))
    else:
        shown = nullcontext()
    try:
        with torch.no_grad(), shown:
            for start in range(0, len(order), batch_size):
                chunk = [rows[i] for i in order[start : start + batch_size]]
                batch = collate(chunk, pad_id)
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                ).logits
                targets = shift_labels(batch["labels"].to(device))
                nll = token_cross_entropy(logits, targets, chunk_size)
                per_row = (targets != IGNORE_INDEX).sum(1).tolist()
                offset = 0
                for r, n in zip(chunk, per_row):
                    key = (r.source or "training set", r.label)
                    acc = sums.setdefault(key, [0.0, 0, 0])
                    acc[0] += float(nll[offset : offset + n].double().sum())
                    acc[1] += n
                    acc[2] += 1
                    offset += n
                if progress and rows:
                    shown.commit(len(chunk), tokens=int(batch["attention_mask"].sum()))
    finally:
        model.train(was_training)
    groups = [GroupNLL(src, lab, int(r), int(t), s / t) for (src, lab), (s, t, r) in sorted(sums.items()) if t]
    return InDistributionScore(groups, getattr(getattr(model, "config", None), "name_or_path", "") or "")


def subsample(rows: Sequence[TextRow | EncodedRow], limit: int | None, seed: int = 0) -> list:
    """At most ``limit`` rows per (source, label), drawn with ``seed``, in their original order."""
    if limit is None:
        return list(rows)
    by_group: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        by_group.setdefault((r.source or "", r.label), []).append(i)
    keep: set[int] = set()
    for key, idx in sorted(by_group.items()):
        keep.update(idx if len(idx) <= limit else random.Random(f"{seed}:{key}").sample(idx, limit))
    return [r for i, r in enumerate(rows) if i in keep]


def score_responses(
    model_name_or_path: str,
    rows: Iterable[TextRow],
    reasoning_format: str = "auto",
    chat_template_kwargs: dict[str, Any] | None = None,
    max_length: int = 16384,
    limit: int | None = 256,
    batch_size: int = 4,
    device: str = "auto",
    dtype: str = "auto",
) -> InDistributionScore:
    """The in-distribution score of (prompt, response) rows under a model loaded from
    ``model_name_or_path`` (the initial model: what ``thinksafe generate`` reports for its set).

    Args:
        model_name_or_path: the model whose distribution is measured (hub id, directory or .gguf file).
        rows: training rows; ``source`` names where each came from (a file, "self-generated", …).
        reasoning_format: "auto" (from the chat template), "qwen3", "r1" or "plain", as in training.
        chat_template_kwargs: chat-template arguments (None: those of the format, as in training).
        max_length: tokens per row, prompt included (longer responses are cut, as in training).
        limit: score at most this many rows per (source, label), drawn deterministically; None: all.
        batch_size: rows per forward pass.
        device: "auto" (the first GPU if any, else CPU), "cpu", "cuda", "cuda:1", …
        dtype: weights dtype ("auto": bfloat16 on GPUs, float32 on CPU).
    """
    from thinksafe.model.loading import load_causal_lm, load_tokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(model_name_or_path)
    fmt, kwargs = resolve_format(model_name_or_path, reasoning_format, tokenizer, chat_template_kwargs)
    encoder = ChatEncoder(tokenizer, fmt, max_length, chat_template_kwargs=kwargs)
    # rows with no response token within max_length are left out, as the trainer drops them
    encoded, _ = encoder.encode_rows(subsample(list(rows), limit))
    model = load_causal_lm(model_name_or_path, dtype=dtype, device=device)
    try:
        score = response_nll(model, encoded, encoder.pad_id, batch_size)
    finally:
        del model
    score.model = model_name_or_path
    return score


class InDistributionLogger(Callback):
    """Logs the in-distribution score of the training set when ``fit`` starts, under the initial model.

    The score goes to every logger at step 0 (``in_distribution/nll``, ``in_distribution/nll/<label>``), to the
    console as a table, and to ``<log_dir>/in_distribution.json``; it is kept as :attr:`score`, the scored rows
    as :attr:`rows` (:meth:`rescore` scores them again under the model as it is then). Rows come from
    ``trainer.datamodule.training_rows()``, encoded by its ``encoder()``. For a PEFT model the
    adapters are switched off while scoring, so a resumed fit also measures the initial model. Every rank
    runs the same forwards (sharded models need all ranks in each); rank 0 reports.

    Args:
        limit: score at most this many rows per (source, label), drawn deterministically; None: all.
        batch_size: rows per forward pass.
    """

    def __init__(self, limit: int | None = 256, batch_size: int = 4):
        if limit is not None and limit < 1:
            raise ValueError(f"InDistributionLogger: limit must be ≥ 1 or None, got {limit}")
        self.limit = limit
        self.batch_size = batch_size
        self.score: InDistributionScore | None = None
        self.rows: list[EncodedRow] = []
        self._pad_id = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer.datamodule
        self.rows = subsample(datamodule.training_rows(), self.limit)
        self._pad_id = datamodule.encoder().pad_id
        self.score = score_model(
            pl_module,
            self.rows,
            self._pad_id,
            self.batch_size,
            initial=True,
            progress="in-distribution NLL (initial model)" if trainer.is_global_zero else None,
        )
        if trainer.is_global_zero:
            report(self.score, trainer, step=0)

    def rescore(self, pl_module: LightningModule) -> InDistributionScore:
        """The score of the rows scored when fit started, under ``pl_module``'s model as it is now."""
        zero = pl_module._trainer is None or pl_module.trainer.is_global_zero
        return score_model(
            pl_module,
            self.rows,
            self._pad_id,
            self.batch_size,
            progress="in-distribution NLL (trained model)" if zero else None,
        )


def score_model(
    pl_module: LightningModule,
    rows: Sequence[EncodedRow],
    pad_id: int,
    batch_size: int = 4,
    initial: bool = False,
    progress: str | None = "in-distribution NLL",
) -> InDistributionScore:
    """The score of encoded rows under ``pl_module.model``; ``initial``: with PEFT adapters switched off;
    ``progress``: the console's label (None: silent)."""
    from contextlib import nullcontext

    model = pl_module.model
    context = model.disable_adapter() if initial and hasattr(model, "disable_adapter") else nullcontext()
    with context:
        score = response_nll(model, rows, pad_id, batch_size, progress=progress)
    score.model = str(pl_module.hparams.get("name_or_path", "")) if hasattr(pl_module, "hparams") else ""
    return score


def report(score: InDistributionScore, trainer: Trainer, step: int = 0, prefix: str = "in_distribution") -> None:
    """Log ``score`` to the trainer's loggers, print its table, and write ``<log_dir>/in_distribution.json``."""
    from rich.console import Console

    from thinksafe.files import run_dir, write_json_atomic

    for logger in trainer.loggers:
        logger.log_metrics(score.metrics(prefix), step=step)
    Console(stderr=True).print(score.table())
    directory = run_dir(trainer)
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / f"{prefix}.json", score.as_dict())


def report_generated(datamodule, limit: int | None = 256, batch_size: int = 4, console=None) -> InDistributionScore:
    """The in-distribution score of a finished self-generated set (its kept rows) under the model that generated
    it, for ``thinksafe generate``: printed as a table and written to ``<output_dir>/in_distribution.json``, which
    is reused while the set's manifest fingerprint is unchanged."""
    import json
    from pathlib import Path

    from rich.console import Console

    from thinksafe.data.selfgen import kept_rows
    from thinksafe.files import write_json_atomic

    console = console or Console(stderr=True)
    out = Path(datamodule.round_dir())  # with data.rounds > 1, generate builds round 1: output_dir/round_1
    fp = json.loads((out / "manifest.json").read_text()).get("fingerprint")
    cached = out / "in_distribution.json"
    key = {"fingerprint": fp, "limit": limit, "max_length": datamodule.max_length}
    if cached.is_file():
        old = json.loads(cached.read_text())
        if old.get("key") == key:
            score = InDistributionScore([GroupNLL(**g) for g in old["groups"]], old["model"])
            console.print(score.table())
            return score
    score = score_responses(
        datamodule.model_name_or_path,
        kept_rows(out),
        datamodule.reasoning_format,
        datamodule.chat_template_kwargs,
        datamodule.max_length,
        limit,
        batch_size,
    )
    write_json_atomic(cached, {**score.as_dict(), "key": key})
    console.print(score.table())
    return score
