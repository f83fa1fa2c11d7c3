"""Self-generation rounds (``data.rounds: K``): sample, guard, train, then sample again with the trained weights.

With ``K = 1`` (the default) nothing here runs: the data stage writes ``data.output_dir`` and fit trains on it, as
it always did. With ``K > 1`` fit is cut into K rounds of ``trainer.max_epochs / K`` epochs each (so the whole run
trains as many epochs, and takes as many optimizer steps per epoch, as the same recipe with one round):

* round 1 trains on the set the data stage builds before fit, in ``<output_dir>/round_1/``;
* when round k's last epoch ends, :class:`SelfGenRounds` writes the weights as they are to
  ``<output_dir>/adapters/round_<k>/`` (the module's own ``save_trained``: the adapter fit writes at its end),
  points the sampler at them (:func:`follow_training`: a vLLM LoRA request, no merge), and runs the same data stage
  (steering, think-block check, guard; :meth:`SafetyDataModule.build_safety_set`) into
  ``<output_dir>/round_<k+1>/``; round k+1 trains on that set (the loader is rebuilt at the next epoch);
* each round's acceptance rates and in-distribution score go to the loggers with the round as the step
  (``rounds/…``) and to ``<output_dir>/rounds.json``.

``thinksafe fit`` adds :class:`SelfGenRounds` to the trainer when ``data.rounds > 1``; a Python script passes it in
``Trainer(callbacks=[…])`` (the data module refuses to train several rounds without it). It sits above the data
module and the metrics (it scores each round's set), so the data module never imports it.

Resuming (``--ckpt_path last``): the round being trained and the step each round started at travel in the
checkpoint with the data module's state, so a resumed run trains the round it stopped in, on that round's set, and
never builds a finished round's set again (a finished set is reused as is; a half-built one resumes chunk by chunk,
sampled from the adapter saved for it). The epoch-end checkpoint is written after the next round's set is built.

The cosine schedule is planned by Lightning from round 1's set (``estimated_stepping_batches``); a later round
keeps fewer or more rows, so when a round starts the schedule's length is planned again for the steps that remain
(:func:`replan_schedule`), and a resumed run plans it the same way.
"""

from __future__ import annotations

import json
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from thinksafe.errors import UserError
from thinksafe.sampling.hf_sampler import TransformersSampler
from thinksafe.sampling.vllm_sampler import VLLMSampler


def follow_training(sampler, module, directory: str | Path) -> str:
    """Point ``sampler`` at the weights ``module`` (a ThinkSafeModule) holds now, written to ``directory``; returns
    the model name to sample with. VLLMSampler: :meth:`VLLMSampler.follow` (LoRA hot-loaded, full fine-tuning
    reloaded). TransformersSampler: the module's model itself, in this process (the adapter is written all the
    same, as the record of what sampled)."""
    if isinstance(sampler, VLLMSampler):
        return sampler.follow(module, directory)
    if isinstance(sampler, TransformersSampler):
        module.save_trained(directory)
        name = str(module.hparams.name_or_path)
        sampler.attach(name, module.model, module.tokenizer)
        return name
    raise UserError(
        f"data.rounds samples with the weights in training through VLLMSampler or TransformersSampler; "
        f"data.sampler is {type(sampler).__name__}."
    )


def epochs_per_round(rounds: int, max_epochs: int | None) -> int:
    if max_epochs is None or max_epochs < 1 or max_epochs % rounds:
        raise UserError(
            f"data.rounds={rounds} cuts fit into rounds of equal epochs: set trainer.max_epochs to a multiple of "
            f"{rounds} (got {max_epochs}); each round trains max_epochs/rounds epochs on its own set."
        )
    return max_epochs // rounds


def replan_schedule(trainer, total_steps: int) -> None:
    """Give the learning-rate schedules that count toward a planned length (transformers' warmup/decay schedules,
    which the modules use) ``total_steps`` instead, and set the current rate from it. LambdaLR checkpoints no
    lambda arguments, so this is applied again after a resume (by the caller)."""
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if not lambdas:
            continue
        for i, fn in enumerate(lambdas):
            if isinstance(fn, partial) and "num_training_steps" in fn.keywords:
                lambdas[i] = partial(fn.func, *fn.args, **{**fn.keywords, "num_training_steps": total_steps})
        for group, fn, base in zip(scheduler.optimizer.param_groups, lambdas, scheduler.base_lrs):
            group["lr"] = base * fn(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


class SelfGenRounds(Callback):
    """Builds round k+1's set of the trainer's :class:`~thinksafe.data.datamodule.SafetyDataModule` when round k's
    training ends (see the module docstring). Its state (the round, the step each began at) is the data module's,
    checkpointed with it. Nothing happens with ``data.rounds: 1``."""

    def __init__(self):
        self.datamodule = None
        self._reload: int | None = None
        self.seconds: dict[int, float] = {}  # round -> seconds this process spent building its set (cost.json)

    @staticmethod
    def install(trainer) -> None:
        """Add the callback to ``trainer`` once, before its checkpoint callbacks (the epoch-end checkpoint then
        holds the next round)."""
        from lightning.pytorch.callbacks import Checkpoint

        callbacks = trainer.callbacks
        if any(isinstance(c, SelfGenRounds) for c in callbacks):
            return
        at = next((i for i, c in enumerate(callbacks) if isinstance(c, Checkpoint)), len(callbacks))
        callbacks.insert(at, SelfGenRounds())

    def _per_round(self, trainer) -> int:
        return epochs_per_round(self.datamodule.rounds, trainer.max_epochs)

    def _active(self) -> bool:
        return self.datamodule is not None and self.datamodule.rounds > 1

    def setup(self, trainer, pl_module, stage: str) -> None:
        dm = trainer.datamodule
        if stage != "fit" or getattr(dm, "rounds", 1) == 1:
            return
        self.datamodule = dm
        dm.rounds_driver = self
        self._per_round(trainer)
        if not hasattr(pl_module, "save_trained"):
            raise UserError("data.rounds samples with the weights in training: the model must be a ThinkSafeModule.")

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._active():
            return
        self._plan(trainer)
        dm = self.datamodule
        if dm.round == 1 and trainer.global_step == 0:
            self._log_round(trainer, pl_module, 1)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._active():
            return
        if self._reload is not None:  # the new round's loader is in place (Lightning rebuilt it before this hook)
            trainer.reload_dataloaders_every_n_epochs, self._reload = self._reload, None
            self._plan(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._active():
            return
        done = trainer.current_epoch + 1  # epochs finished, this one included
        per = self._per_round(trainer)
        if done % per or done >= trainer.max_epochs or trainer.should_stop:
            return
        k = done // per + 1
        if self.datamodule.round >= k:
            return
        self.start_round(trainer, pl_module, k)

    def start_round(self, trainer, pl_module, k: int) -> None:
        """Sample round ``k``'s set with the current weights and train on it from the next epoch on."""
        dm = self.datamodule
        model = follow_training(dm.sampler, pl_module, dm.adapter_dir(k - 1))  # every rank: a collective save
        dm.round = k
        dm.round_started[k] = trainer.global_step
        started = time.perf_counter()
        sharded = getattr(dm, "build_safety_set_sharded", None)
        if trainer.world_size > 1 and sharded is not None:  # every rank its share of the prompts, as setup does
            sharded(model=model)
        elif trainer.local_rank == 0:  # one data stage per node, as prepare_data
            dm.build_safety_set(model=model)
        trainer.strategy.barrier("thinksafe-round")
        self.seconds[k] = round(time.perf_counter() - started, 1)
        dm.setup("fit")  # the new round's rows
        # Lightning rebuilds the loader at the next epoch start; the user's setting is put back after that
        self._reload = trainer.reload_dataloaders_every_n_epochs
        trainer.reload_dataloaders_every_n_epochs = 1
        self._log_round(trainer, pl_module, k)

    def _plan(self, trainer) -> None:
        dm = self.datamodule
        started = dm.round_started.get(dm.round)
        if dm.round == 1 or started is None:
            return
        steps_per_epoch = math.ceil(trainer.num_training_batches / max(trainer.accumulate_grad_batches, 1))
        remaining_epochs = trainer.max_epochs - (dm.round - 1) * self._per_round(trainer)
        total = started + steps_per_epoch * remaining_epochs
        if trainer.max_steps is not None and trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        replan_schedule(trainer, max(total, 1))

    def _log_round(self, trainer, pl_module, k: int) -> None:
        """Round ``k``'s acceptance rates and in-distribution score, with ``k`` as the step."""
        from thinksafe.files import write_json_atomic
        from thinksafe.metrics.in_distribution import score_model, subsample

        dm = self.datamodule
        stats = json.loads((Path(dm.round_dir(k)) / "stats.json").read_text(encoding="utf-8"))
        scalars: dict[str, float] = {"rounds/kept": float(stats["all"]["kept"])}
        for label, d in stats.get("per_label", {}).items():
            scalars[f"rounds/acceptance_rate/{label}"] = float(d["acceptance_rate"])
        for side in ("harmful", "benign"):
            rate = (stats.get(side) or {}).get("acceptance_rate")
            if rate is not None:
                scalars[f"rounds/acceptance_rate/all_{side}"] = float(rate)
        if dm.in_distribution_rows != 0:
            rows = subsample(dm.training_rows(), dm.in_distribution_rows)
            pad = dm.encoder().pad_id
            # every rank runs the forwards (a sharded model needs all of them); the loggers write on rank 0
            scalars.update(score_model(pl_module, rows, pad, initial=True).metrics("rounds/in_distribution"))
            if k > 1:  # under the weights that sampled the round (round 1: the initial model, above)
                scalars.update(score_model(pl_module, rows, pad).metrics("rounds/in_distribution_sampler"))
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=k)
        if trainer.is_global_zero:
            path = Path(dm.output_dir) / "rounds.json"
            record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            record[str(k)] = {"directory": str(dm.round_dir(k)), "step": trainer.global_step, **scalars}
            write_json_atomic(path, record)
