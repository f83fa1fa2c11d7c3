"""The options of ``thinksafe eval``: :func:`~thinksafe.eval.runner.run_eval`'s arguments, plus ``recipe``.

A training recipe given as ``--recipe`` supplies the defaults of ``model`` (``model.name_or_path``),
``sampler`` (``data.sampler``) and ``reasoning_format`` (``data.reasoning_format``); flags override them.
The recipe is parsed by the same parser as ``thinksafe fit`` (:func:`thinksafe.lightning_cli.read_recipe`), so
it is validated as it would be for training.
"""

from __future__ import annotations

from typing import Any

from jsonargparse import ArgumentParser

from thinksafe.errors import UserError, parse_args
from thinksafe.eval.answers import AnswerChecker
from thinksafe.eval.judges import JudgeSees
from thinksafe.guards.base import Guard
from thinksafe.lightning_cli import read_recipe, strict_parser_kwargs
from thinksafe.sampling.base import Sampler, SamplingConfig
from thinksafe.sampling.formats import FormatOption

PROG = "thinksafe eval"


class EvalOptions:
    """Evaluate a model (base, merged, or a LoRA adapter directory) on benchmarks."""

    def __init__(
        self,
        benchmarks: list[str] | str,
        output: str,
        model: str | None = None,
        recipe: str | None = None,
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
    ) -> None:
        """
        Args:
            benchmarks: names (``gsm8k``) or ``name=SOURCE`` with a local file or hub id, as a list or comma-separated.
            output: directory for the results (created; files of an earlier run there are replaced).
            model: model directory or hub id, or a trained adapter directory (default: the recipe's
                ``model.name_or_path``).
            recipe: a training recipe; its model, ``data.sampler`` and ``data.reasoning_format`` are the defaults
                of ``--model``, ``--sampler`` and ``--reasoning_format``.
            limit: evaluate only the first N items of each benchmark.
            sampler: how to sample (default: the recipe's ``data.sampler``, else the vLLM sampler).
            sampling: sampling of every benchmark (None: the model family's presets, which differ between
                reasoning and safety benchmarks; see thinksafe.eval.protocol).
            safety_n: samples per prompt on safety and over-refusal benchmarks.
            judge: harm judge for safety benchmarks (None: Llama-Guard-3 on a GPU, else the offline judge).
            refusal_judge: refusal judge for over-refusal benchmarks (None: WildGuard on a GPU, else the offline judge).
            judge_sees: "response" (the whole response, reasoning included: the authors' protocol), "answer"
                (the text after the think block) or "trace" (reasoning + answer, think tags removed).
            adapter: a LoRA adapter directory to apply to ``model``.
            reasoning_format: "auto" (from the chat template), "qwen3", "r1" or "plain" (default: the recipe's).
            benchmark_dir: folder with the benchmark files (``gsm8k/test.jsonl``, …) used for bare names.
            tensorboard: also write TensorBoard scalars to ``output/tensorboard``.
            answer_checker: how reasoning benchmarks read answers: "math_verify" (the text after the think block,
                math-verify) or "skythought" (SkyThought's reading of the whole generation, as the authors scored).
        """
        if model is None:
            raise UserError(f"{PROG}: no model: give --recipe with model.name_or_path, or --model=DIR.")
        if isinstance(benchmarks, str):
            benchmarks = [b.strip() for b in benchmarks.strip("[]").split(",") if b.strip()]
        self.recipe = recipe
        self.run_eval_kwargs: dict[str, Any] = dict(
            model=model,
            benchmarks=benchmarks,
            output=output,
            limit=limit,
            sampler=sampler,
            sampling=sampling,
            safety_n=safety_n,
            judge=judge,
            refusal_judge=refusal_judge,
            judge_sees=judge_sees,
            adapter=adapter,
            reasoning_format=reasoning_format,
            benchmark_dir=benchmark_dir,
            tensorboard=tensorboard,
            answer_checker=answer_checker,
        )

    def run(self):
        from thinksafe.eval.runner import run_eval

        return run_eval(**self.run_eval_kwargs)


def recipe_defaults(recipe: str) -> dict[str, Any]:
    """The eval defaults a training recipe gives."""
    cfg = read_recipe(recipe)
    defaults: dict[str, Any] = {}
    if (name := cfg.model.init_args.get("name_or_path")) is not None:
        defaults["model"] = name
    if cfg.data.get("sampler") is not None:
        defaults["sampler"] = cfg.data.sampler.as_dict()
    if cfg.data.get("reasoning_format") is not None:
        defaults["reasoning_format"] = cfg.data.reasoning_format
    return defaults


def eval_parser() -> ArgumentParser:
    parser = ArgumentParser(**strict_parser_kwargs(dict(prog=PROG, description=EvalOptions.__doc__)))
    parser.add_class_arguments(EvalOptions, skip={"recipe"})
    parser.add_argument(
        "--recipe",
        type=str | None,
        default=None,
        help=(
            "a training recipe (recipes/*.yaml): its model.name_or_path, data.sampler and data.reasoning_format are "
            "the defaults of --model, --sampler and --reasoning_format"
        ),
    )
    return parser


def parse_eval_options(args: list[str]) -> EvalOptions:
    """``thinksafe eval`` arguments → :class:`EvalOptions` (the recipe's values as defaults)."""
    parser = eval_parser()
    # the recipe's values go first, so that flags override them, or parts of them (--sampler.init_args.x); a
    # parser default would be replaced whole by such a flag, and a flag into a recipe's sampler needs it first
    recipe = next((b for a, b in zip(args, args[1:]) if a == "--recipe"), None)
    recipe = next((a.split("=", 1)[1] for a in args if a.startswith("--recipe=")), recipe)
    first = []
    if recipe:
        import json

        first = [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in recipe_defaults(recipe).items()]
    cfg = parse_args(parser, first + args, PROG)
    init = parser.instantiate_classes(cfg)
    return EvalOptions(**{k: v for k, v in vars(init).items() if k != "__path__"})
