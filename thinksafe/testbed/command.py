"""``thinksafe testbed build|check``: the arguments are the signatures of the functions they run.

thinksafe testbed build [--output_dir data/testbed] [--seed 0] [--pretraining.steps N] [--force true] …
thinksafe testbed check [--output_dir data/testbed] [--n 40]
thinksafe testbed compare [--runs [lightning_logs/quickstart, lightning_logs/quickstart-teacher]]
"""

from __future__ import annotations

from thinksafe.testbed.build import build_testbed, load_testbed
from thinksafe.testbed.check import check_model


def check_testbed(output_dir: str = "data/testbed", n: int = 40) -> dict[str, float]:
    """Print how the testbed model behaves on the first ``n`` items of each held-out set (greedy, offline judge).

    Args:
        output_dir: a built testbed directory.
        n: held-out items per kind.
    """
    testbed = load_testbed(output_dir)
    rates = check_model(str(testbed.model), testbed.root, n)
    for name, value in rates.items():
        print(f"{name:>16}: {value}")
    return rates


def compare_runs(runs: list[str] = ["lightning_logs/quickstart", "lightning_logs/quickstart-teacher"]) -> dict:  # noqa: B006 (shown in --help; never mutated)
    """Print the before/after tables of several runs side by side (self-generation against teacher distillation).

    Args:
        runs: directories holding a ``before_after.json`` (the ``output_dir`` of :class:`BeforeAfterEval`).
    """
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from thinksafe.errors import UserError

    reports = {}
    for run in runs:
        path = Path(run) / "before_after.json"
        if not path.is_file():
            raise UserError(
                f"testbed compare: {path} does not exist; run the recipe that writes it first "
                "(`make quickstart` runs both quickstart recipes)."
            )
        reports[run] = json.loads(path.read_text())
    metrics = [m for m in next(iter(reports.values())) if m != "details"]
    table = Table(title="before → after, per training set")
    table.add_column("metric")
    for run, report in reports.items():
        table.add_column(f"{Path(run).name}\n({report['details'].get('training_set', '?')})", justify="right")
    for m in metrics:
        cells = []
        for report in reports.values():
            b, a = (report.get(m) or {}).get("before"), (report.get(m) or {}).get("after")
            cells.append("–" if b is None or a is None else f"{b:.3f} → {a:.3f}")
        table.add_row(m, *cells)
    # what each run cost (thinksafe.cost.CostLog's cost.json beside before_after.json; – where absent)
    costs = {run: json.loads(p.read_text()) if (p := Path(run) / "cost.json").is_file() else {} for run in runs}
    for key in ("generated_tokens", "trained_tokens", "guard_calls", "seconds"):
        table.add_row(f"cost: {key}", *["–" if costs[run].get(key) is None else f"{costs[run][key]:,}" for run in runs])
    Console().print(table)
    return reports


def main(argv: list[str]) -> None:
    from jsonargparse import auto_cli, auto_parser

    from thinksafe.errors import parse_args
    from thinksafe.lightning_cli import strict_parser_kwargs

    commands = {"build": build_testbed, "check": check_testbed, "compare": compare_runs}
    kwargs = strict_parser_kwargs({"prog": "thinksafe testbed"})
    parse_args(
        auto_parser(commands, **kwargs), argv, "thinksafe testbed"
    )  # a user error is explained before anything runs
    result = auto_cli(commands, args=argv, **kwargs)
    if hasattr(result, "root"):
        print(result.root)
