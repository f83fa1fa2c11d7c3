"""``thinksafe eval``: sample a model on benchmarks, judge or check the responses, write the results.

Phases, each holding the accelerator alone: (1) load every benchmark (a bad file fails before any model
starts); (2) sample all benchmarks with one sampler, then close it; (3) judge/check and write. Responses are
written to ``OUT/<benchmark>.jsonl`` right after sampling, so a failed judge leaves them for
``thinksafe score``.

Outputs in ``output``: ``results.json`` (the metrics, and under ``protocol`` the judges and what they read,
the sampling of each kind, each benchmark's source, template and formula), ``results.md``,
``<benchmark>.jsonl`` (see :mod:`thinksafe.eval.report`), ``run.json`` (model, adapter mode, reasoning format,
sampler, benchmark sources) and ``tensorboard/``.

Sampling follows the model family's preset (:mod:`thinksafe.eval.protocol`, the authors' settings) unless
``sampling`` is given. Before any engine starts, every benchmark's longest prompt + ``max_tokens`` is checked
against the sampler's context: a context too short stops the run with the length that fits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from thinksafe.errors import UserError
from thinksafe.eval.answers import AnswerChecker
from thinksafe.eval.benchmarks import Loaded, load_benchmark
from thinksafe.eval.judges import Judges, JudgeSees
from thinksafe.eval.lora import EvaluatedModel, resolve_model
from thinksafe.eval.protocol import (
    EVAL_PRESETS,
    benchmark_protocol,
    check_context,
    context_limit,
    eval_sampling,
    judge_protocol,
    longest_prompt,
)
from thinksafe.eval.report import Results, sample_rows, write_jsonl, write_results
from thinksafe.files import write_json_atomic
from thinksafe.guards.base import Guard
from thinksafe.sampling.base import Sampler, SamplingConfig
from thinksafe.sampling.engine import engine_log
from thinksafe.sampling.formats import FormatOption, restore_response
from thinksafe.sampling.progress import GenerationProgress, reporting
from thinksafe.sampling.vllm_sampler import VLLMSampler

#: Qwen3's reasoning-benchmark sampling (the preset of the ``qwen3`` family; see :mod:`thinksafe.eval.protocol`).
EVAL_SAMPLING = EVAL_PRESETS["qwen3"].reasoning


def run_eval(
    model: str,
    benchmarks: list[str],
    output: str,
    limit: int | None = None,
    sampler: Sampler | None = None,
    sampling: SamplingConfig | None = None,
    safety_n: int = 1,
    judge: Guard | None = None,
    refusal_judge: Guard | None = None,
    judge_sees: JudgeSees = "response",
    adapter: str | None = None,
    reasoning_format: FormatOption = "auto",
    benchmark_dir: str | None = None,
    tensorboard: bool = True,
    answer_checker: AnswerChecker = "math_verify",
) -> Results:
    """Evaluate a model (base, merged, or a LoRA adapter directory) on benchmarks.

    Args:
        model: model directory or hub id; or a trained adapter directory (its base is read from
            ``adapter_config.json``).
        benchmarks: names (``gsm8k``) or ``name=SOURCE`` with a local file or hub id; see
            :mod:`thinksafe.eval.benchmarks`.
        output: directory for the results (created; files of an earlier run there are replaced).
        limit: evaluate only the first N items of each benchmark.
        sampler: how to sample (None: the vLLM sampler).
        sampling: sampling of every benchmark, ``n`` samples per reasoning question (None: the model family's
            preset, :data:`thinksafe.eval.protocol.EVAL_PRESETS`: the authors' settings, which differ between
            reasoning and safety benchmarks).
        safety_n: samples per prompt on safety and over-refusal benchmarks.
        judge: harm judge for safety benchmarks (None: Llama-Guard-3 on a GPU, else the offline judge).
        refusal_judge: refusal judge for over-refusal benchmarks (None: WildGuard on a GPU, else the offline judge).
        judge_sees: "response" (the whole response, reasoning included, as the authors' judges read it),
            "answer" (the text after the think block) or "trace" (reasoning + answer, think tags removed).
        answer_checker: how reasoning benchmarks read answers: "math_verify" (the text after the think block,
            math-verify) or "skythought" (SkyThought's reading of the whole generation, as the authors scored;
            see :mod:`thinksafe.eval.answers`).
        adapter: a LoRA adapter directory to apply to ``model``.
        reasoning_format: "auto" (from the chat template), "qwen3", "r1" or "plain".
        benchmark_dir: folder with the benchmark files (``gsm8k/test.jsonl``, …) used for bare names; names
            whose file is not there load from the hub.
        tensorboard: also write TensorBoard scalars to ``output/tensorboard``.

    Returns:
        ``{benchmark: {metric: value, …, "n": items}}`` (also written to ``results.json``).
    """
    from thinksafe.sampling.formats import resolve_format

    console = Console(stderr=True, soft_wrap=True)
    if not benchmarks:
        raise UserError("--benchmarks is empty: name at least one benchmark (e.g. gsm8k, xstest, strongreject).")
    if safety_n < 1:
        raise UserError(f"--safety_n must be ≥ 1, got {safety_n}.")
    loaded = [load_benchmark(spec, benchmark_dir, limit) for spec in benchmarks]
    names = [b.name for b in loaded]
    if len(set(names)) != len(names):
        raise UserError(f"--benchmarks names a benchmark twice ({', '.join(names)}); each writes OUT/<name>.jsonl.")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    sampler = sampler if sampler is not None else _default_sampler()
    evaluated = resolve_model(model, adapter, sampler, say=console.print)
    judges = Judges(judge, refusal_judge, judge_sees, console, answer_checker)
    try:
        fmt, template_kwargs = resolve_format(evaluated.path, reasoning_format)
        reasoning_params, safety_params = eval_sampling(fmt, sampling, safety_n)
        params_of = {b.name: reasoning_params if b.benchmark.kind == "reasoning" else safety_params for b in loaded}
        _check_context(sampler, evaluated.path, loaded, params_of, template_kwargs, model)
        served_before = sampler.adapter if isinstance(sampler, VLLMSampler) else None
        if evaluated.mode == "lora":
            assert isinstance(sampler, VLLMSampler)  # resolve_model serves adapters natively only through vLLM
            sampler.set_adapter(evaluated.adapter)
        from thinksafe.data.selfgen import component_settings

        sampler_settings = component_settings(sampler)
        console.print(
            f"[bold]eval[/bold] {model}"
            + (f" + {evaluated.adapter} ({evaluated.why})" if evaluated.adapter else "")
            + f" · format {fmt} · judges see the {judge_sees}"
        )
        started = time.time()
        try:
            responses = {}
            for b in loaded:
                params = params_of[b.name]
                conversations = [[{"role": "user", "content": it.prompt}] for it in b.items]
                # per-sample progress (tokens/s, ETA); vLLM's own output goes to OUT/vllm.log
                with (
                    engine_log(out / "vllm.log"),
                    reporting(
                        GenerationProgress(
                            f"sampling {b.name} ({len(b.items)} items × {params.n})",
                            total=len(b.items) * params.n,
                            console=console,
                            unit="samples",
                        )
                    ) as progress,
                    progress,
                ):
                    completions = sampler.generate(evaluated.path, conversations, params, template_kwargs)
                    progress.commit(len(b.items) * params.n, sum(c.num_tokens for per in completions for c in per))
                responses[b.name] = [
                    [
                        dict(
                            response=restore_response(c.text, fmt),
                            finish_reason=c.finish_reason,
                            num_tokens=c.num_tokens,
                        )
                        for c in per_item
                    ]
                    for per_item in completions
                ]
                write_jsonl(out / f"{b.name}.jsonl", sample_rows(b.items, responses[b.name]))
        finally:
            sampler.close()
            if isinstance(sampler, VLLMSampler) and evaluated.mode == "lora":
                sampler.set_adapter(served_before)  # a caller's sampler serves what it served before
        with engine_log(out / "vllm.log"):  # model judges' engines log there too
            results = _score_all(loaded, responses, judges, out, console)
        protocol = {
            "preset": fmt if sampling is None else "custom",
            "sampling": {"reasoning": reasoning_params.as_dict(), "safety": safety_params.as_dict()},
            **judge_protocol(judges, {b.benchmark.kind for b in loaded}),
            "benchmarks": {b.name: benchmark_protocol(b) for b in loaded},
        }
        write_results(out, results, tensorboard, protocol=protocol)
        write_json_atomic(
            out / "run.json",
            _run_record(
                model,
                evaluated,
                sampler_settings,
                fmt,
                template_kwargs,
                reasoning_params,
                safety_params,
                judges,
                loaded,
                limit,
                time.time() - started,
            ),
        )
    finally:
        judges.close()
        evaluated.cleanup()
    console.print(f"results in {out / 'results.md'}")
    return results


def _check_context(
    sampler: Sampler,
    model_path: str,
    loaded: list[Loaded],
    params_of: dict[str, SamplingConfig],
    template_kwargs: dict,
    model: str,
) -> None:
    limit = context_limit(sampler, model_path)
    if limit is None:
        return
    from thinksafe.model.loading import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    needs = {
        b.name: (
            longest_prompt(tokenizer, [it.prompt for it in b.items], template_kwargs),
            params_of[b.name].max_tokens,
        )
        for b in loaded
    }
    check_context(limit, needs, model)


def _default_sampler() -> Sampler:
    return VLLMSampler()


def _score_all(
    loaded: list[Loaded], responses: dict[str, list[list[dict]]], judges: Judges, out: Path, console: Console
) -> Results:
    from rich.progress import Progress

    scored_by_name: Results = {}
    # benchmarks of one kind share a judge; judging them together and closing the judge before the next kind
    # means only one guard engine holds the accelerator at a time
    by_kind = sorted(loaded, key=lambda b: ("safety", "over_refusal", "reasoning").index(b.benchmark.kind))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("scoring", total=len(loaded))
        for i, b in enumerate(by_kind):
            progress.update(task, description=f"scoring {b.name}")
            texts = [[s["response"] for s in per_item] for per_item in responses[b.name]]
            scored = b.benchmark.scorer.score(b.items, texts, judges)
            write_jsonl(out / f"{b.name}.jsonl", sample_rows(b.items, responses[b.name], scored))
            scored_by_name[b.name] = {**scored.metrics, "n": len(b.items)}
            if i + 1 == len(by_kind) or by_kind[i + 1].benchmark.kind != b.benchmark.kind:
                judges.close()
            progress.advance(task)
    return {b.name: scored_by_name[b.name] for b in loaded}


def _run_record(
    model: str,
    evaluated: EvaluatedModel,
    sampler_settings: dict[str, Any],
    fmt: str,
    template_kwargs: dict,
    sampling: SamplingConfig,
    safety_sampling: SamplingConfig,
    judges: Judges,
    loaded: list[Loaded],
    limit: int | None,
    seconds: float,
) -> dict[str, Any]:
    return {
        "model": model,
        "base": evaluated.base,
        "adapter": evaluated.adapter,
        "adapter_mode": evaluated.mode,
        "adapter_note": evaluated.why,
        "sampler": sampler_settings,
        "reasoning_format": fmt,
        "chat_template_kwargs": template_kwargs,
        "sampling": sampling.as_dict(),
        "safety_sampling": safety_sampling.as_dict(),
        "safety_n": safety_sampling.n,
        "judges": judges.names(),
        "judge_sees": judges.sees,
        "answer_checker": judges.answers,
        "benchmarks": {b.name: {"source": str(b.source), "n": len(b.items)} for b in loaded},
        "limit": limit,
        "seconds": round(seconds, 1),
    }
