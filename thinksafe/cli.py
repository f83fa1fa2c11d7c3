"""`thinksafe` command line: wiring only.

    thinksafe fit      --recipe R [--section.key=value …]   LightningCLI fit: data stage, then SFT
    thinksafe generate --recipe R [--section.key=value …]   the data stage (self-generated safety set)
    thinksafe generate --merge DIR… --output OUT           one set from the shards of a multi-process run
    thinksafe eval     --recipe R --benchmarks a,b --output DIR [--model …]   benchmarks
    thinksafe score    --benchmark B --responses FILE --output DIR   re-score saved responses
    thinksafe export   ADAPTER_DIR OUTPUT_DIR               merge a LoRA adapter into a full model
    thinksafe tiny-model OUTPUT_DIR [--template qwen3|r1]   a tiny random model for tests and debugging
    thinksafe testbed build|check|compare …                 the offline testbed (data/testbed/README.md)
    thinksafe recipes ls | cp NAME [--dest DIR]             the shipped recipes: list them, copy one out

`thinksafe COMMAND --help` lists a command's options. User errors print one paragraph and exit 2; ``--debug``
shows the traceback.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from thinksafe.errors import UserError, parse_args, user_message

USAGE = __doc__.split("\n\n")[1]
COMMANDS = ("fit", "generate", "eval", "score", "export", "tiny-model", "testbed", "recipes")
REPORT = "thinksafe: this is a bug in thinksafe; please report it with the command and the traceback above."


def _lightning_cli(args: list[str], run: bool, prog: str = "thinksafe"):
    from thinksafe.lightning_cli import ThinkSafeCLI

    return ThinkSafeCLI(args, run=run, prog=prog)


def generate(args: list[str]) -> None:
    if "--merge" in args:
        return merge(args)
    from thinksafe.distributed import launched_rank
    from thinksafe.lightning_cli import plain

    cli = _lightning_cli(args, run=False, prog="thinksafe generate")
    dm = cli.datamodule
    dm.recipe = plain(cli.config)
    result = dm.build_safety_set()
    report = launched_rank() == 0  # under torchrun, rank 0 reports on the merged set
    dm.sampler.close()  # the score below loads the model; the engine's memory is needed
    if report and dm.in_distribution_rows != 0 and result.stats.get("all", {}).get("kept", 0):
        from thinksafe.metrics.in_distribution import report_generated

        report_generated(dm, limit=dm.in_distribution_rows)


def merge(args: list[str]) -> None:
    """``thinksafe generate --merge DIR [DIR …] --output OUT``: one set from the shards of a run (or the shard
    directories of jobs that split one recipe's prompts), made with the same settings."""
    import argparse  # a plain parser: jsonargparse reads lists as [a,b], and users will type `--merge a b`

    from thinksafe.data.shards import merge_shards, merge_sources

    parser = argparse.ArgumentParser(prog="thinksafe generate", description=merge.__doc__)
    parser.add_argument(
        "--merge",
        nargs="+",
        required=True,
        metavar="DIR",
        help=("shard directories (output_dir/shards/rank_<r>_of_<n>), or output directories holding them"),
    )
    parser.add_argument("--output", required=True, metavar="OUT", help="the merged set's directory (new or empty)")
    opts = parser.parse_args(args)
    merge_shards(Path(opts.output), merge_sources(opts.merge))


def _function_command(fn, args: list[str], prog: str, as_positional: bool = True):
    """Run ``fn`` with its arguments parsed from ``args``: its signature is the schema (``as_positional``: the
    required ones are given without a flag)."""
    from jsonargparse import auto_parser

    from thinksafe.lightning_cli import strict_parser_kwargs

    parser = auto_parser(fn, as_positional=as_positional, **strict_parser_kwargs({"prog": prog}))
    cfg = parser.instantiate_classes(parse_args(parser, args, prog))
    return fn(**{k: v for k, v in vars(cfg).items() if k not in ("__path__", "config")})


def tiny_model(args: list[str]) -> None:
    from thinksafe.model.tiny import build_tiny_model

    print(_function_command(build_tiny_model, args, "thinksafe tiny-model"))


def export(args: list[str]) -> None:
    from thinksafe.model.export import export_merged

    print(_function_command(export_merged, args, "thinksafe export"))


def score(args: list[str]) -> None:
    from thinksafe.eval import score as score_fn

    _function_command(score_fn, args, "thinksafe score", as_positional=False)


def evaluate(args: list[str]) -> None:
    from thinksafe.eval.options import parse_eval_options

    parse_eval_options(args).run()


def dispatch(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "fit":
        _lightning_cli(argv, run=True)
    elif cmd == "generate":
        generate(rest)
    elif cmd == "export":
        export(rest)
    elif cmd == "tiny-model":
        tiny_model(rest)
    elif cmd == "eval":
        evaluate(rest)
    elif cmd == "score":
        score(rest)
    elif cmd == "testbed":
        from thinksafe.testbed.command import main as testbed

        testbed(rest)
    elif cmd == "recipes":
        from thinksafe.recipes import main as recipes

        recipes(rest)
    else:
        raise UserError(f"unknown command {cmd!r}; expected one of {', '.join(COMMANDS)} (`thinksafe --help`).")


def main(argv: list[str] | None = None) -> int:
    # sys.argv is left as launched: Lightning's DDP launcher starts the other ranks by running it again
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        dispatch(argv)
    except KeyboardInterrupt:
        print(
            "thinksafe: interrupted; finished chunks are kept, run the same command again to resume.", file=sys.stderr
        )
        return 130
    except Exception as e:  # noqa: BLE001 — the one place that decides between "your error" and "our bug"
        message = user_message(e)
        if message is None:
            traceback.print_exc()
            print(REPORT, file=sys.stderr)
            return 1
        if debug:
            traceback.print_exc()
        print(message if message.startswith("thinksafe") else f"thinksafe: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
