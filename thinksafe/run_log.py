"""What a fit run puts in TensorBoard beyond the module's own scalars: the resolved recipe as hparams, the data
stage's statistics, and a real ``hp_metric``.

:class:`RecipeLogger` is LightningCLI's ``SaveConfigCallback`` (it still writes ``config.yaml`` beside the
logs) that also logs the whole resolved recipe, flattened (``model.adapter.init_args.r``,
``data.sampling.temperature``, ``data.guard.class_path`` …), to the HParams tab, and the data stage's
acceptance by label and reject reasons as ``data/…`` scalars, a ``data/stats`` text table, a histogram of the
kept responses' lengths and a ``data/figure`` image of all three. Lightning's TensorBoardLogger writes
``hp_metric = -1`` beside any hparams unless told otherwise; here the HParams session declares ``hp_metric``
and its value is the last epoch's training loss, logged when training ends (none when it never ends).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import SaveConfigCallback

from thinksafe.files import run_dir

HP_METRIC = "hp_metric"
#: The value ``hp_metric`` takes when training ends: the first of these the run logged.
HP_METRIC_FROM = ("train/loss_epoch", "train/loss")


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested recipe as ``{"a.b.c": value}`` with values TensorBoard's HParams accepts (numbers, strings,
    booleans); lists are JSON text, None is ``"null"``."""
    out: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(config, list) and any(isinstance(v, dict) for v in config):  # trainer.callbacks.0.class_path …
        for i, value in enumerate(config):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    key = prefix[:-1]
    if isinstance(config, Path):
        config = str(config)
    if isinstance(config, (bool, int, float, str)):
        out[key] = config
    elif config is None:
        out[key] = "null"
    else:
        out[key] = json.dumps(config, default=str)
    return out


def _tensorboard_loggers(trainer) -> list:
    from lightning.pytorch.loggers import TensorBoardLogger

    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def log_hparams(logger, params: dict[str, Any]) -> None:
    """Write the HParams session of ``params`` declaring ``hp_metric`` without a value (Lightning's
    ``log_hyperparams`` would log ``hp_metric`` at once, -1 when none is given)."""
    from torch.utils.tensorboard.summary import hparams

    # Lightning's own call with the module's hyperparameters then writes hparams.yaml and no -1
    logger._default_hp_metric = False
    exp, ssi, sei = hparams(params, {HP_METRIC: 0.0})
    writer = logger.experiment._get_file_writer()
    for summary in (exp, ssi, sei):
        writer.add_summary(summary)


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "unknown"


def data_stage_stats(datamodule) -> tuple[dict[str, Any], Path] | None:
    """stats.json of the self-generated set a SafetyDataModule trains first (round 1's with ``data.rounds`` > 1;
    the later rounds' go to ``rounds/…``), with its directory; None with ``data.responses`` or no finished set."""
    if datamodule is None or getattr(datamodule, "responses", None):
        return None
    round_dir = getattr(datamodule, "round_dir", None)
    out = round_dir(1) if callable(round_dir) else getattr(datamodule, "output_dir", None)
    if not out or not (Path(out) / "stats.json").is_file():
        return None
    return json.loads((Path(out) / "stats.json").read_text(encoding="utf-8")), Path(out)


def log_data_stats(logger, stats: dict[str, Any], output_dir: Path) -> None:
    """The data stage's statistics as scalars (step 0), a text table and the kept responses' length histogram."""
    scalars: dict[str, float] = {}
    for label, d in stats.get("per_label", {}).items():
        for key in ("acceptance_rate", "format_ok_rate", "safe_rate", "kept", "samples"):
            scalars[f"data/{key}/{label}"] = float(d[key])
    for side in ("harmful", "benign"):
        rate = (stats.get(side) or {}).get("acceptance_rate")
        if rate is not None:
            scalars[f"data/acceptance_rate/all_{side}"] = float(rate)
    for reason, count in stats.get("reject_reasons", {}).items():
        scalars[f"data/rejected/{_tag(reason)}"] = float(count)
    scalars["data/data_starved"] = float(bool(stats.get("data_starved")))
    logger.log_metrics(scalars, step=0)
    rows = "\n".join(
        f"| {label} | {d['samples']} | {d['format_ok']} | {d['safe']} | {d['kept']} | {d['acceptance_rate']:.1%} |"
        for label, d in stats.get("per_label", {}).items()
    )
    reasons = "\n".join(f"- {k}: {v}" for k, v in stats.get("reject_reasons", {}).items()) or "- none"
    starved = f"\n\n**{stats['data_starved_message']}**" if stats.get("data_starved") else ""
    text = (
        f"self-generated set: `{output_dir}`\n\n| label | samples | think block closed | safe | kept | acceptance |"
        f"\n|---|---|---|---|---|---|\n{rows}\n\nrejected:\n\n{reasons}{starved}"
    )
    experiment = logger.experiment
    experiment.add_text("data/stats", text, global_step=0)
    samples = output_dir / "samples.jsonl"
    lengths = []
    if samples.is_file():
        import numpy as np

        lengths = [
            r.get("num_tokens") or 0
            for r in map(json.loads, samples.read_text(encoding="utf-8").splitlines())
            if r.get("kept")
        ]
        if lengths:
            experiment.add_histogram("data/kept_response_tokens", np.asarray(lengths), global_step=0)
    from thinksafe.metrics.figures import data_stage_figure

    # the Images tab: rates by label, reject reasons and the kept lengths in one picture
    experiment.add_image("data/figure", data_stage_figure(stats, lengths), global_step=0, dataformats="HWC")


class RecipeLogger(SaveConfigCallback):
    """``config.yaml`` in the log directory (as LightningCLI does), plus the resolved recipe as TensorBoard
    hparams and the data stage's statistics; ``hp_metric`` is the final training loss."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        loggers = _tensorboard_loggers(trainer)
        if not loggers:
            return
        params = flatten(self.config.as_dict())
        found = data_stage_stats(getattr(trainer, "datamodule", None))
        for logger in loggers:
            log_hparams(logger, params)
            if found is not None:
                log_data_stats(logger, *found)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        for name in HP_METRIC_FROM:
            value = trainer.callback_metrics.get(name)
            if value is not None:
                for logger in _tensorboard_loggers(trainer):
                    logger.log_metrics({HP_METRIC: float(value)}, step=trainer.global_step)
                    logger.save()
                return

    def on_fit_end(self, trainer, pl_module) -> None:
        # after the module's on_train_end has written the adapter: say where everything is
        if not trainer.is_global_zero:
            return
        import sys

        log_dir = run_dir(trainer)
        adapter = log_dir / "adapter"
        lines = []
        if adapter.is_dir():
            lines.append(f"fit: wrote the adapter to {adapter} (model card: {adapter / 'README.md'})")
        if _tensorboard_loggers(trainer):
            root = Path(_tensorboard_loggers(trainer)[0].root_dir)
            lines.append(f"fit: TensorBoard logs in {log_dir}; view them with `tensorboard --logdir {root}`")
        for line in lines:
            print(line, file=sys.stderr)
