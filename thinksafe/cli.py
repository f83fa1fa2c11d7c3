"""`thinksafe` command line: wiring only.

    thinksafe generate --recipe R [--section.key=value …]   the data stage (self-generated safety set)
    thinksafe fit      --recipe R [--section.key=value …]   LightningCLI fit: data stage, then SFT
    thinksafe export   ADAPTER_DIR OUTPUT_DIR               merge a LoRA adapter into a full model
    thinksafe eval / score …                                 benchmarks (see `thinksafe eval --help`)
    thinksafe tiny-model OUTPUT_DIR [--template qwen3|r1]   a tiny random model for tests and debugging
    thinksafe testbed build|check|compare …                 the offline testbed (data/testbed/README.md)

``--recipe`` is LightningCLI's ``--config`` (both work). User errors print one paragraph and exit 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from thinksafe.errors import UserError

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
USAGE = __doc__.split("\n\n")[1]


def _recipe_to_config(argv: list[str]) -> list[str]:
    out = []
    for a in argv:
        if a == "--recipe":
            out.append("--config")
        elif a.startswith("--recipe="):
            out.append("--config=" + a.split("=", 1)[1])
        else:
            out.append(a)
    return out


def _lightning_cli(args: list[str], run: bool):
    from lightning.pytorch.cli import LightningCLI

    from thinksafe.data.datamodule import SafetyDataModule
    from thinksafe.model.module import ThinkSafeModule

    class ThinkSafeCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # the data side samples from the model being trained
            parser.link_arguments("model.name_or_path", "data.model_name_or_path")

        def before_fit(self) -> None:
            from thinksafe.metrics.in_distribution import InDistributionLogger

            self.datamodule.recipe = _plain(self.config.get("fit", self.config))
            # the training set's in-distribution score under the initial model, logged when fit starts
            rows = self.datamodule.in_distribution_rows
            if rows != 0 and not any(isinstance(c, InDistributionLogger) for c in self.trainer.callbacks):
                self.trainer.callbacks.append(InDistributionLogger(limit=rows))

    argv0, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when both args and sys.argv hold arguments
    try:
        return ThinkSafeCLI(
            ThinkSafeModule,
            SafetyDataModule,
            args=args,
            run=run,
            save_config_kwargs={"overwrite": True},
        )
    finally:
        sys.argv = argv0


def _plain(cfg) -> Any:
    """A JSON-able copy of a jsonargparse Namespace (for the manifest)."""
    from jsonargparse import Namespace

    if isinstance(cfg, Namespace):
        return {k: _plain(v) for k, v in vars(cfg).items()}
    if isinstance(cfg, dict):
        return {k: _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    if isinstance(cfg, (str, int, float, bool)) or cfg is None:
        return cfg
    return str(cfg)


def generate(args: list[str]) -> None:
    cli = _lightning_cli(args, run=False)
    dm = cli.datamodule
    dm.recipe = _plain(cli.config)
    result = dm.build_safety_set()
    if hasattr(dm.sampler, "shutdown"):
        dm.sampler.shutdown()  # the score below loads the model; the engine's memory is needed
    if dm.in_distribution_rows != 0 and result.stats.get("all", {}).get("kept", 0):
        from thinksafe.metrics.in_distribution import report_generated

        report_generated(dm, limit=dm.in_distribution_rows)


def tiny_model(args: list[str]) -> None:
    import argparse

    from thinksafe.model.tiny import build_tiny_model

    p = argparse.ArgumentParser(prog="thinksafe tiny-model", description="Write a tiny random Qwen3 with a real chat template.")
    p.add_argument("output_dir")
    p.add_argument("--template", choices=["qwen3", "r1"], default="qwen3")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(args)
    print(build_tiny_model(a.output_dir, template=a.template, seed=a.seed))


def export(args: list[str]) -> None:
    import argparse

    from thinksafe.model.export import export_merged

    p = argparse.ArgumentParser(prog="thinksafe export", description="Merge a trained LoRA adapter into a full model.")
    p.add_argument("adapter_dir", help="the run's adapter directory (…/adapter)")
    p.add_argument("output_dir")
    p.add_argument("--base", default=None, help="base model (default: the one recorded in adapter_config.json)")
    p.add_argument("--dtype", default="auto")
    a = p.parse_args(args)
    print(export_merged(a.adapter_dir, a.output_dir, base=a.base, dtype=a.dtype))


def _split_recipe(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Pull ``--recipe FILE`` out of ``args`` and return the recipe's YAML with the remaining args."""
    import yaml

    rest, recipe = [], None
    it = iter(args)
    for a in it:
        if a in ("--recipe", "--config"):
            recipe = next(it, None)
        elif a.startswith(("--recipe=", "--config=")):
            recipe = a.split("=", 1)[1]
        else:
            rest.append(a)
    if recipe is None:
        return {}, rest
    try:
        with open(recipe, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}, rest
    except OSError as e:
        raise UserError(f"--recipe: cannot read {recipe}: {e.strerror}.") from None
    except yaml.YAMLError as e:
        raise UserError(f"--recipe: {recipe} is not valid YAML: {e}") from None


def _comma_list(args: list[str], flag: str) -> list[str]:
    """``--benchmarks a,b`` → ``--benchmarks [a, b]`` (jsonargparse reads lists as YAML)."""
    out, it = [], iter(args)
    for a in it:
        value = None
        if a == flag:
            value = next(it, "")
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        if value is None:
            out.append(a)
        else:
            items = value if value.startswith("[") else "[" + ", ".join(v.strip() for v in value.split(",") if v.strip()) + "]"
            out += [flag, items]
    return out


def evaluate(args: list[str]) -> None:
    """``thinksafe eval``: the recipe gives the model, the sampler and the reasoning format; flags override."""
    from jsonargparse import ArgumentParser

    from thinksafe.eval import run_eval

    recipe, args = _split_recipe(args)
    parser = ArgumentParser(prog="thinksafe eval", description=run_eval.__doc__.split("\n")[0])
    parser.add_argument("--model.name_or_path", type=str, help="model directory, hub id, or trained adapter directory")
    parser.add_function_arguments(run_eval, skip={"model"})
    data = recipe.get("data") or {}
    defaults = {"model.name_or_path": (recipe.get("model") or {}).get("name_or_path")}
    if data.get("sampler"):
        defaults["sampler"] = data["sampler"]
    if data.get("reasoning_format"):
        defaults["reasoning_format"] = data["reasoning_format"]
    parser.set_defaults(defaults)
    cfg = parser.instantiate_classes(parser.parse_args(_comma_list(args, "--benchmarks")))
    kwargs = {k: v for k, v in vars(cfg).items() if k not in ("model", "__path__")}
    model = cfg.model.name_or_path
    if not model:
        raise UserError("thinksafe eval: no model: give --recipe with model.name_or_path, or --model.name_or_path=DIR.")
    run_eval(model=model, **kwargs)


def score(args: list[str]) -> None:
    from jsonargparse import ArgumentParser

    from thinksafe.eval import score as score_fn

    parser = ArgumentParser(prog="thinksafe score", description=score_fn.__doc__.split("\n")[0])
    parser.add_function_arguments(score_fn)
    cfg = parser.instantiate_classes(parser.parse_args(args))
    score_fn(**{k: v for k, v in vars(cfg).items() if k != "__path__"})


def dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return
    cmd, rest = argv[0], _recipe_to_config(argv[1:])
    if cmd in LIGHTNING_COMMANDS:
        _lightning_cli([cmd, *rest], run=True)
    elif cmd == "generate":
        generate(rest)
    elif cmd == "export":
        export(rest)
    elif cmd == "tiny-model":
        tiny_model(rest)
    elif cmd == "eval":
        evaluate(argv[1:])
    elif cmd == "score":
        score(argv[1:])
    elif cmd == "testbed":
        from thinksafe.testbed.command import main as testbed

        testbed(argv[1:])
    else:
        raise UserError(f"unknown command {cmd!r}; expected one of generate, fit, eval, score, export, tiny-model, testbed.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        dispatch(argv)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"thinksafe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("thinksafe: interrupted; finished chunks are kept, run the same command again to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
