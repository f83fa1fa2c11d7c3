"""What a training run cost: ``cost.json`` in the run's log dir and beside its ``before_after.json``.

``thinksafe fit`` adds :class:`CostLog` to every run (a recipe may list its own to choose ``output_dir``).
The totals are ``generated_tokens`` (new tokens sampled: the data stage's responses, or GRPO's in-loop
completions), ``trained_tokens`` (tokens through forward and backward, padding excluded, summed over ranks),
``guard_calls`` ((prompt, response) pairs judged) and ``seconds`` (data stage + training; the before/after
evaluation is not a cost of the method and is left out). ``stages`` breaks them down:

* ``data``: the self-generated set (ThinkSafe): tokens and guard calls read from its ``samples.jsonl``, seconds
  measured from the CLI building the run to the end of the data stage (``reused: true`` when a finished set
  was found and nothing was sampled: its seconds are then not this run's cost and are reported as null);
* ``training``: optimizer steps and wall seconds of ``fit``'s training loop, and, for a module that samples
  while training (:class:`thinksafe.rl.GRPOModule`), its ``generation``/``guard`` tokens, calls and seconds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from thinksafe.files import run_dir, write_text_atomic


def selfgen_cost(output_dir: str | Path) -> dict[str, Any]:
    """Generated tokens, samples and guard calls of a finished self-generated set (its ``samples.jsonl``)."""
    from thinksafe.data.jsonl_log import read_jsonl

    rows = read_jsonl(Path(output_dir) / "samples.jsonl")
    return {
        "samples": len(rows),
        "generated_tokens": sum(int(r.get("num_tokens") or 0) for r in rows),
        "guard_calls": sum(r.get("guard_verdict") is not None for r in rows),
    }


class CostLog(Callback):
    """Writes ``cost.json`` when training ends.

    Args:
        output_dir: a second place for ``cost.json`` (None: the logger's root directory, where
            :class:`~thinksafe.testbed.BeforeAfterEval` writes ``before_after.json``); a copy always goes to the
            run's log dir.
    """

    def __init__(self, output_dir: str | None = None):
        self.output_dir = output_dir
        self.created = time.time()
        self.data_seconds: float | None = None
        self.first_reused = False
        self.train_started: float | None = None
        self.trained_tokens = 0
        self.cost: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # prepare_data (the data stage) has run by now
        if self.data_seconds is None:
            self.data_seconds = time.time() - self.created
            # the set fit starts on (data.rounds: round 1; later rounds replace datamodule.selfgen)
            self.first_reused = bool(getattr(getattr(trainer.datamodule, "selfgen", None), "reused", False))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.train_started = time.time()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "attention_mask" in batch:
            if "loss_scale" in batch and float(batch["loss_scale"]) == 0:
                return  # a filler that only keeps ranks in step
            self.trained_tokens += int(batch["attention_mask"].sum())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import torch

        train_seconds = time.time() - (self.train_started or time.time())
        online = getattr(pl_module, "cost", None)
        trained = self.trained_tokens + int((online or {}).get("trained_tokens", 0))
        trained = int(trainer.strategy.reduce(torch.tensor(float(trained), device=pl_module.device), reduce_op="sum"))
        stages: dict[str, Any] = {}
        dm = trainer.datamodule
        selfgen = getattr(dm, "selfgen", None)
        if selfgen is not None:
            stages["data"] = {
                **selfgen_cost(selfgen.output_dir),
                "reused": bool(selfgen.reused),
                "seconds": None if selfgen.reused else round(self.data_seconds or 0.0, 1),
                "output_dir": str(selfgen.output_dir),
            }
        if selfgen is not None and getattr(dm, "rounds", 1) > 1:
            # data.rounds: every round's set counts; the later rounds were built inside fit, so their seconds move
            # from training to the data stage
            first = None if self.first_reused else round(self.data_seconds or 0.0, 1)
            rounds = [self._round_cost(dm, k, first) for k in range(1, dm.round + 1)]
            later = sum(r["seconds"] or 0.0 for r in rounds[1:])
            train_seconds -= later
            stages["data"] = {
                **{key: sum(r[key] for r in rounds) for key in ("samples", "generated_tokens", "guard_calls")},
                "reused": all(r["seconds"] is None for r in rounds),
                "seconds": None
                if all(r["seconds"] is None for r in rounds)
                else round(sum(r["seconds"] or 0.0 for r in rounds), 1),
                "output_dir": str(dm.output_dir),
                "rounds": rounds,
            }
        training: dict[str, Any] = {
            "steps": trainer.global_step,
            "seconds": round(train_seconds, 1),
            "trained_tokens": trained,
        }
        if online:
            training["generation"] = {
                "generated_tokens": int(online["generated_tokens"]),
                "completions": int(online["completions"]),
                "seconds": round(online["generation_seconds"], 1),
            }
            training["guard"] = {
                "guard_calls": int(online["guard_calls"]),
                "seconds": round(online["guard_seconds"], 1),
            }
        stages["training"] = training
        data = stages.get("data", {})
        self.cost = {
            "method": type(pl_module).__name__,
            "generated_tokens": int(data.get("generated_tokens", 0)) + int((online or {}).get("generated_tokens", 0)),
            "trained_tokens": trained,
            "guard_calls": int(data.get("guard_calls", 0)) + int((online or {}).get("guard_calls", 0)),
            "seconds": round((data.get("seconds") or 0.0) + train_seconds, 1),
            "stages": stages,
        }
        if trainer.is_global_zero:
            text = json.dumps(self.cost, indent=2)
            for directory in dict.fromkeys((self._output_dir(trainer), run_dir(trainer))):
                directory.mkdir(parents=True, exist_ok=True)
                write_text_atomic(directory / "cost.json", text)

    @staticmethod
    def _round_cost(dm, k: int, seconds: float | None) -> dict[str, Any]:
        """Round ``k``'s set: its tokens and guard calls, and the seconds this process spent building it (round 1:
        ``seconds``, measured around the data stage; later rounds: as timed by thinksafe.rounds.SelfGenRounds;
        None when the set was built by an earlier, resumed-from process or reused)."""
        directory = Path(dm.round_dir(k))
        if k > 1:
            seconds = getattr(getattr(dm, "rounds_driver", None), "seconds", {}).get(k)
        return {"round": k, **selfgen_cost(directory), "seconds": seconds, "output_dir": str(directory)}

    def _output_dir(self, trainer: Trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        root = getattr(trainer.logger, "root_dir", None)
        return Path(root) if root else run_dir(trainer)
