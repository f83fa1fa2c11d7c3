"""Safety probes during ``fit``: every N steps, generate with the model being trained and log three rates.

A handful of prompts, a short generation budget and the offline judge keep a probe cheap enough for the
debug recipe. The callback only needs ``pl_module.model`` (a transformers/PEFT causal LM) and
``pl_module.tokenizer`` (with its chat template). Logged (torchmetrics ``MeanMetric`` over samples):

* ``probe/harmful_compliance_rate`` — harmful prompts whose response the judge calls unsafe;
* ``probe/over_refusal_rate`` — benign prompts whose response refuses;
* ``probe/reasoning_accuracy`` — math questions answered correctly after the think block.

With a short ``max_new_tokens`` most traces stay unclosed; the judge then sees the trace (see
:mod:`thinksafe.eval.judges`) and the math answer counts as wrong, so compare probe values with each other
over training, not with benchmark results. Each metric goes to every logger at the trainer's global step
(whatever ``log_every_n_steps`` is) and to ``trainer.callback_metrics``; ``history`` keeps them all. The
generated samples of each probe (prompt, response, verdict) go to TensorBoard as text
(``probe/samples/<metric>``). A configured probe whose samples the judge could not score at all is a
:class:`~thinksafe.errors.UserError` naming the judge's reason, never a metric silently missing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import MeanMetric

from thinksafe.errors import UserError
from thinksafe.eval.benchmarks import Item, load_benchmark
from thinksafe.eval.benchmarks.base import Scorer
from thinksafe.eval.benchmarks.refusal import OverRefusalRate
from thinksafe.eval.benchmarks.safety import HarmfulRate
from thinksafe.eval.judges import Judges, JudgeSees
from thinksafe.guards.base import Guard
from thinksafe.sampling.base import GREEDY, PROBE_SAMPLING
from thinksafe.sampling.formats import restore_response


class SafetyProbes(Callback):
    """Generates with the current training model every ``every_n_steps`` optimizer steps and logs probe rates.

    Args:
        harmful: benchmark spec (``strongreject`` or ``name=PATH``) whose harmful prompts are probed; None: skip.
        benign: benchmark spec whose benign prompts are probed for over-refusal (``xstest`` keeps its safe
            rows, ``jbb_benign``); None: skip.
        math: spec of a reasoning benchmark (``gsm8k``, ``math500``, …); None: skip.
        every_n_steps: probe when the global step is a multiple of this.
        limit: prompts per probe set (the first ones of each file).
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per ``generate`` call.
        do_sample: sample (:data:`~thinksafe.sampling.base.PROBE_SAMPLING`: temperature 0.6, top-p 0.95,
            seeded) instead of greedy decoding (:data:`~thinksafe.sampling.base.GREEDY`).
        seed: seed of sampling; the training RNG state is left untouched.
        judge: judges harm and refusal (None: the offline judge, which needs no accelerator memory).
        judge_sees: "answer" or "trace", as in ``eval``.
        benchmark_dir: folder with benchmark files, for bare names.
    """

    def __init__(
        self,
        harmful: str | None = None,
        benign: str | None = None,
        math: str | None = None,
        every_n_steps: int = 50,
        limit: int = 8,
        max_new_tokens: int = 256,
        batch_size: int = 8,
        do_sample: bool = False,
        seed: int = 0,
        judge: Guard | None = None,
        judge_sees: JudgeSees = "answer",
        benchmark_dir: str | None = None,
    ):
        if every_n_steps < 1:
            raise UserError(f"SafetyProbes: every_n_steps must be ≥ 1, got {every_n_steps}.")
        if limit < 1 or max_new_tokens < 1 or batch_size < 1:
            raise UserError("SafetyProbes: limit, max_new_tokens and batch_size must be ≥ 1.")
        if judge is None:
            from thinksafe.guards.offline import OfflineJudge

            judge = OfflineJudge()
        self.every_n_steps = every_n_steps
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.do_sample = do_sample
        self.seed = seed
        self.sampling = dataclasses.replace(
            PROBE_SAMPLING if do_sample else GREEDY, max_tokens=max_new_tokens, seed=seed
        )
        self.judges = Judges(judge, judge, judge_sees)
        self.probes: list[_Probe] = []
        if harmful:
            self.probes.append(
                _Probe(
                    "harmful_compliance_rate", HarmfulRate(), _select(harmful, True, limit, benchmark_dir), "harmful"
                )
            )
        if benign:
            self.probes.append(
                _Probe("over_refusal_rate", OverRefusalRate(), _select(benign, False, limit, benchmark_dir), "refusal")
            )
        if math:
            self.probes.append(_reasoning(math, limit, benchmark_dir))
        if not self.probes:
            raise UserError("SafetyProbes: give at least one of harmful, benign or math.")
        self.metrics = {p.name: MeanMetric() for p in self.probes}
        self.history: list[dict[str, float | int]] = []
        self.samples: dict[str, list[dict]] = {}
        """The last probe's samples per metric: prompt, response and the verdict field."""
        self._last_step = -1

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        # with gradient accumulation this hook runs once per micro-batch: probe once per optimizer step
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        values = self.probe(pl_module.model, pl_module.tokenizer)
        for name, value in values.items():
            pl_module.log(f"probe/{name}", value, on_step=True, on_epoch=False, logger=False, rank_zero_only=True)
        for logger in trainer.loggers:
            logger.log_metrics({f"probe/{k}": v for k, v in values.items()}, step=step)
            experiment = getattr(logger, "experiment", None)
            if trainer.is_global_zero and hasattr(experiment, "add_text"):
                for name, rows in self.samples.items():
                    experiment.add_text(f"probe/samples/{name}", samples_markdown(rows), global_step=step)
        self.history.append({"step": step, **values})

    def probe(self, model, tokenizer) -> dict[str, float]:
        """Run every probe set once on ``model``; the rates of the sets where something could be judged."""
        from thinksafe.sampling.formats import resolve_format

        fmt, template_kwargs = resolve_format(getattr(tokenizer, "name_or_path", "model"), "auto", tokenizer=tokenizer)
        values: dict[str, float] = {}
        for probe in self.probes:
            texts = self._generate(model, tokenizer, [it.prompt for it in probe.items], template_kwargs)
            responses = [restore_response(t, fmt) for t in texts]
            scored = probe.scorer.score(probe.items, [[r] for r in responses], self.judges)
            self.samples[probe.name] = [
                {
                    "prompt": it.prompt,
                    "response": r,
                    probe.flag: per_item[0].get(probe.flag),
                    "detail": per_item[0].get("guard_detail"),
                }
                for it, r, per_item in zip(probe.items, responses, scored.samples)
            ]
            flags = [float(s[probe.flag]) for per_item in scored.samples for s in per_item if s[probe.flag] is not None]
            if not flags:
                details = sorted({str(s.get("guard_detail")) for per_item in scored.samples for s in per_item})
                raise UserError(
                    f"SafetyProbes: the {probe.name} probe could not score any of its {len(texts)} samples (the "
                    f"judge {self.judges.harm().name if probe.flag != 'refusal' else self.judges.refusal().name!r} "
                    f"returned no verdict: {'; '.join(details)[:300]}). Give the probe a judge that can score "
                    "these responses (judge, judge_sees: trace) or a larger max_new_tokens, or remove this probe "
                    "set from the recipe."
                )
            metric = self.metrics[probe.name]
            metric.reset()
            metric.update(torch.tensor(flags))
            values[probe.name] = float(metric.compute())
        return values

    def _generate(self, model, tokenizer, prompts: list[str], template_kwargs: dict) -> list[str]:
        """Samples through the transformers sampler attached to the training model, inside a forked RNG so
        that probing leaves the training run's random state (dropout, data order) untouched."""
        from thinksafe.sampling.hf_sampler import TransformersSampler

        device = next(model.parameters()).device
        name = getattr(tokenizer, "name_or_path", None) or "training model"
        sampler = TransformersSampler(batch_size=self.batch_size)
        sampler.attach(name, model, tokenizer)
        chats = [[{"role": "user", "content": p}] for p in prompts]
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                completions = sampler.generate(name, chats, self.sampling, template_kwargs)
        finally:
            sampler.close()
        return [c[0].text for c in completions]


def samples_markdown(rows: list[dict], limit: int = 8, chars: int = 1500) -> str:
    """A probe's samples as TensorBoard markdown: prompt, response (as a code block) and verdict."""

    def block(text: str) -> str:
        text = text if len(text) <= chars else text[:chars] + " …"
        return "\n".join("    " + line for line in (text.splitlines() or [""]))

    parts = []
    for i, row in enumerate(rows[:limit]):
        verdict = {k: v for k, v in row.items() if k not in ("prompt", "response") and v is not None}
        parts.append(
            f"**{i + 1}.** `{verdict}`\n\n**prompt**\n\n{block(row['prompt'])}\n\n"
            f"**response**\n\n{block(row['response'])}"
        )
    return "\n\n---\n\n".join(parts)


@dataclass(frozen=True)
class _Probe:
    name: str
    """Metric name under ``probe/``."""
    scorer: Scorer
    items: list[Item]
    flag: str
    """The per-sample verdict field averaged into the metric."""


def _select(spec: str, harmful: bool, limit: int, benchmark_dir: str | None) -> list[Item]:
    loaded = load_benchmark(spec, benchmark_dir)
    items = [it for it in loaded.items if it.harmful is harmful][:limit]
    if not items:
        want = "harmful" if harmful else "benign"
        raise UserError(f"SafetyProbes: {spec} holds no {want} prompts; choose a {want} prompt set for this probe.")
    return items


def _reasoning(spec: str, limit: int, benchmark_dir: str | None) -> _Probe:
    loaded = load_benchmark(spec, benchmark_dir, limit)
    if loaded.benchmark.kind != "reasoning":
        raise UserError(
            f"SafetyProbes: math={spec} is not a reasoning benchmark (gsm8k, math500, aime24, gpqa_diamond)."
        )
    return _Probe("reasoning_accuracy", loaded.benchmark.scorer, loaded.items, "correct")
