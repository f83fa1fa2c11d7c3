"""Evaluate the model before and after ``fit``, on the same sets, and write the comparison.

:class:`BeforeAfterEval` is a Lightning callback for recipes (the quickstart recipes list it under
``trainer.callbacks``). Nothing in it is specific to the testbed: any benchmark specs work.

* ``setup`` (after the data stage, before the model is built, so the accelerator is free): the initial model
  is evaluated with :func:`thinksafe.eval.run_eval` into ``<log_dir>/eval/before``.
* ``on_fit_start``: the in-distribution score of the training set under the initial model
  (:mod:`thinksafe.metrics.in_distribution`; LoRA adapters are switched off for it, so a resumed fit
  measures the initial model too).
* ``on_train_end``: the same score under the trained model.
* ``on_fit_end`` (the trained weights are saved by then): the trained model (``<log_dir>/adapter``, served
  by vLLM as a LoRA adapter) is evaluated into ``<log_dir>/eval/after``; the before/after table is printed
  and written to ``before_after.json`` in ``output_dir`` and in the run's log dir, and the values go to
  the training run's TensorBoard directory as ``before_after/<metric>`` and every numeric result of every set as
  ``eval/<benchmark>/<metric>``, at step 0 (before) and at the last step (after), with a ``before_after/figure``
  image (bars before and after) and a ``before_after/table`` text.

``before_after.json`` holds ``{metric: {"before": x, "after": y}}`` for ``harmful_compliance_rate``
(``harmful_rate`` of the ``harmful`` set), ``over_refusal_rate`` (of the ``benign`` set),
``reasoning_accuracy`` (pass@1 ``accuracy`` of the ``reasoning`` set) and ``in_distribution_nll``, plus
``details`` (sets, sizes, directories). Only global rank 0 evaluates; the other ranks wait.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from rich.console import Console

from thinksafe.errors import UserError
from thinksafe.eval.judges import JudgeSees
from thinksafe.files import run_dir, write_text_atomic
from thinksafe.guards.base import Guard
from thinksafe.sampling.base import GREEDY, Sampler, SamplingConfig
from thinksafe.sampling.formats import FormatOption

#: before_after.json name -> (set role, metric of that benchmark in results.json)
METRICS: dict[str, tuple[str, str]] = {
    "harmful_compliance_rate": ("harmful", "harmful_rate"),
    "over_refusal_rate": ("benign", "over_refusal_rate"),
    "reasoning_accuracy": ("reasoning", "accuracy"),
}
#: lower is better for every metric but accuracy
HIGHER_IS_BETTER = {"reasoning_accuracy"}


class BeforeAfterEval(Callback):
    """Evaluates the initial and the trained model on the same sets and writes ``before_after.json``.

    Args:
        harmful: benchmark spec of harmful prompts (``strongreject``, ``name=PATH``); gives
            ``harmful_compliance_rate``. None: not measured.
        benign: benchmark spec of benign prompts for over-refusal (``xstest``, ``jbb_benign``, ``name=PATH``);
            gives ``over_refusal_rate``.
        reasoning: spec of a reasoning benchmark (``gsm8k``, ``math500``, ``name=PATH``); gives
            ``reasoning_accuracy``.
        output_dir: where ``before_after.json`` is written (None: the logger's root directory, e.g.
            ``lightning_logs/quickstart``; a copy always goes to the run's log dir).
        sampling: sampling of every set (default: greedy, 256 new tokens, one sample per prompt).
        sampler: samples the model (None: the data module's sampler); closed after each evaluation, so the
            training step has the accelerator to itself.
        judge: harm and refusal judge (None: as ``thinksafe eval``: Llama-Guard-3/WildGuard on a GPU, else the
            offline judge).
        judge_sees: "answer" (text after the think block) or "trace".
        reasoning_format: "auto", "qwen3", "r1" or "plain", as in ``thinksafe eval``.
        limit: evaluate only the first N items of each set.
        in_distribution_limit: rows per (source, label) scored for ``in_distribution_nll``; None: all.
        benchmark_dir: folder of benchmark files for bare names.
    """

    def __init__(
        self,
        harmful: str | None = None,
        benign: str | None = None,
        reasoning: str | None = None,
        output_dir: str | None = None,
        sampling: SamplingConfig = GREEDY,
        sampler: Sampler | None = None,
        judge: Guard | None = None,
        judge_sees: JudgeSees = "answer",
        reasoning_format: FormatOption = "auto",
        limit: int | None = None,
        in_distribution_limit: int | None = 256,
        benchmark_dir: str | None = None,
    ):
        from thinksafe.eval.benchmarks import resolve

        self.sets = {
            role: spec for role, spec in (("harmful", harmful), ("benign", benign), ("reasoning", reasoning)) if spec
        }
        if not self.sets:
            raise UserError("BeforeAfterEval: give at least one of harmful, benign or reasoning.")
        kinds = {"harmful": "safety", "benign": "over_refusal", "reasoning": "reasoning"}
        self.names: dict[str, str] = {}
        for role, spec in self.sets.items():
            benchmark, _ = resolve(spec, benchmark_dir)
            if benchmark.kind != kinds[role]:
                raise UserError(
                    f"BeforeAfterEval: {role}={spec!r} is a {benchmark.kind} benchmark; {role} needs a "
                    f"{kinds[role]} benchmark."
                )
            self.names[role] = benchmark.name
        self.output_dir = output_dir
        self.sampling = sampling
        self.sampler = sampler
        self.judge = judge
        self.judge_sees = judge_sees
        self.reasoning_format = reasoning_format
        self.limit = limit
        self.in_distribution_limit = in_distribution_limit
        self.benchmark_dir = benchmark_dir
        self.before: dict[str, Any] = {}
        self.after: dict[str, Any] = {}
        self.report: dict[str, Any] | None = None
        self._in_distribution = None
        self._seconds: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.is_global_zero:
            sampler = self._sampler(trainer)
            try:
                self.before.update(
                    self._evaluate(
                        pl_module.hparams.name_or_path,
                        None,
                        sampler,
                        self._log_dir(trainer) / "eval" / "before",
                        "before",
                    )
                )
            finally:
                sampler.close()  # the training step needs the memory the engine holds
        trainer.strategy.barrier("thinksafe-before-eval")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from thinksafe.metrics.in_distribution import InDistributionLogger

        # an InDistributionLogger of the trainer's own scores the initial model anyway; else this one does
        if not hasattr(trainer.datamodule, "training_rows"):
            return  # no fixed training set (GRPO samples its own): no in-distribution score
        own = [c for c in trainer.callbacks if isinstance(c, InDistributionLogger)]
        self._in_distribution = own[0] if own else InDistributionLogger(self.in_distribution_limit)
        if not own:
            self._in_distribution.on_fit_start(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        scored = self._in_distribution
        if scored is None or scored.score is None:
            return
        after = scored.rescore(pl_module)
        for values, score in ((self.before, scored.score), (self.after, after)):
            values["in_distribution_nll"] = score.overall
            values["in_distribution"] = score.as_dict()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            log_dir = self._log_dir(trainer)
            trained = log_dir / "adapter"  # ThinkSafeModule.on_train_end writes the trained weights here
            if not trained.is_dir():
                raise UserError(f"BeforeAfterEval: no trained weights in {trained}; the fit did not finish.")
            is_adapter = (trained / "adapter_config.json").is_file()
            base = pl_module.hparams.name_or_path if is_adapter else str(trained)
            sampler = self._sampler(trainer)
            try:
                self.after.update(
                    self._evaluate(
                        base, str(trained) if is_adapter else None, sampler, log_dir / "eval" / "after", "after"
                    )
                )
            finally:
                sampler.close()
            self.report = self._write(trainer, pl_module, log_dir)
        trainer.strategy.barrier("thinksafe-after-eval")

    # ---------------------------------------------------------------------------------------- helpers
    def _sampler(self, trainer: Trainer) -> Sampler:
        if self.sampler is not None:
            return self.sampler
        data_sampler = getattr(trainer.datamodule, "sampler", None)
        if data_sampler is not None:
            return data_sampler
        from thinksafe.sampling.vllm_sampler import VLLMSampler

        return VLLMSampler()

    @staticmethod
    def _log_dir(trainer: Trainer) -> Path:
        return run_dir(trainer)

    def _output_dir(self, trainer: Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        root = getattr(trainer.logger, "root_dir", None)
        return Path(root) if root else self._log_dir(trainer)

    def _evaluate(self, model: str, adapter: str | None, sampler: Sampler, out: Path, when: str) -> dict[str, Any]:
        from thinksafe.eval.runner import run_eval

        started = time.time()
        specs = [self.sets[role] for role in self.sets]
        results = run_eval(
            model=model,
            benchmarks=specs,
            output=str(out),
            limit=self.limit,
            sampler=sampler,
            sampling=self.sampling,
            safety_n=self.sampling.n,
            judge=self.judge,
            refusal_judge=self.judge,
            judge_sees=self.judge_sees,
            adapter=adapter,
            reasoning_format=self.reasoning_format,
            benchmark_dir=self.benchmark_dir,
            tensorboard=False,
        )
        self._seconds[when] = round(time.time() - started, 1)
        values: dict[str, Any] = {"eval_dir": str(out), "n": {}}
        # every numeric result of every set, for TensorBoard (eval/<benchmark>/<metric>)
        values["results"] = {
            name: {k: float(v) for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for name, res in results.items()
            if isinstance(res, dict)
        }
        for name, (role, metric) in METRICS.items():
            if role in self.sets:
                values[name] = results[self.names[role]].get(metric)
                values["n"][role] = results[self.names[role]]["n"]
        return values

    def _write(self, trainer: Trainer, pl_module: LightningModule, log_dir: Path) -> dict[str, Any]:
        from rich.table import Table
        from torch.utils.tensorboard import SummaryWriter

        names = [m for m, (role, _) in METRICS.items() if role in self.sets] + ["in_distribution_nll"]
        report: dict[str, Any] = {m: {"before": self.before.get(m), "after": self.after.get(m)} for m in names}
        dm = trainer.datamodule
        report["details"] = {
            "model": pl_module.hparams.name_or_path,
            "trained": str(log_dir / "adapter"),
            "training_set": dm.dataset_name() if hasattr(dm, "dataset_name") else None,
            "training_rows": dm.label_counts() if hasattr(dm, "label_counts") else None,
            "sets": {
                role: {"spec": spec, "benchmark": self.names[role], "n": self.before.get("n", {}).get(role)}
                for role, spec in self.sets.items()
            },
            "sampling": self.sampling.as_dict(),
            "eval_dirs": {"before": self.before.get("eval_dir"), "after": self.after.get("eval_dir")},
            "eval_seconds": self._seconds,
            "in_distribution": {
                "before": self.before.get("in_distribution"),
                "after": self.after.get("in_distribution"),
            },
            "steps": trainer.global_step,
        }
        text = json.dumps(report, indent=2)
        for directory in dict.fromkeys((self._output_dir(trainer), log_dir)):
            directory.mkdir(parents=True, exist_ok=True)
            write_text_atomic(directory / "before_after.json", text)

        from thinksafe.metrics.figures import before_after_figure

        # into the training run's own TensorBoard directory, beside its losses: before at step 0, after at the last
        with SummaryWriter(str(log_dir)) as writer:
            last = trainer.global_step
            for m in names:
                for step, value in ((0, report[m]["before"]), (last, report[m]["after"])):
                    if value is not None:
                        writer.add_scalar(f"before_after/{m}", value, step)
            for step, values in ((0, self.before), (last, self.after)):
                for benchmark, metrics in values.get("results", {}).items():
                    for metric, value in metrics.items():
                        writer.add_scalar(f"eval/{benchmark}/{metric}", value, step)
            writer.add_image("before_after/figure", before_after_figure(report, names), last, dataformats="HWC")
            rows = "\n".join(f"| {m} | {_fmt(report[m]['before'])} | {_fmt(report[m]['after'])} |" for m in names)
            writer.add_text(
                "before_after/table",
                f"| metric | before | after |\n|---|---|---|\n{rows}\n\nafter {last} steps; "
                f"evaluations in `{self.before.get('eval_dir')}` and `{self.after.get('eval_dir')}`",
                last,
            )

        table = Table(title=f"before / after fit ({report['details']['training_set']})")
        for col in ("metric", "before", "after", "change"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for m in names:
            b, a = report[m]["before"], report[m]["after"]
            change = "" if b is None or a is None else f"{a - b:+.3f}"
            if change and a != b:
                better = (a > b) == (m in HIGHER_IS_BETTER)
                change = f"[{'green' if better else 'red'}]{change}[/]" if m != "in_distribution_nll" else change
            table.add_row(m, _fmt(b), _fmt(a), change)
        console = Console()
        console.print(table)
        console.print(f"written to {self._output_dir(trainer) / 'before_after.json'}")
        return report


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"
