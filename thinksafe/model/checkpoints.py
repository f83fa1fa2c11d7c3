"""Checkpoints a run resumes from exactly, and a clean stop on SIGINT/SIGTERM.

What makes a resumed run train exactly as the uninterrupted one would (adapter ``allclose``, no step skipped or
repeated): the weights, optimizer and schedule (Lightning's checkpoint); the loops' counters (Lightning's); the
data loader's epoch and position (:class:`thinksafe.data.batching.ResumableLoader`, saved by Lightning with the
loops); and the random number generators (saved here, restored when training restarts), which dropout reads.

A checkpoint is only ever written at an optimizer-step boundary (gradients being accumulated are not saved), to
a temporary name first and then renamed, so a run killed while writing leaves the previous ``last.ckpt`` whole.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from thinksafe.errors import UserError
from thinksafe.files import disk_errors, fsync_dir, fsync_tree

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ResumableCheckpoint(ModelCheckpoint):
    """``last.ckpt`` in ``dirpath`` every ``every_n_train_steps`` optimizer steps, at the end of each epoch, and when
    the run is stopped with SIGINT (Ctrl-C) or SIGTERM; ``--ckpt_path last`` resumes from it.

    On SIGINT/SIGTERM the current optimizer step is finished, ``last.ckpt`` written, the command that resumes
    printed, and the process exits with 130 (SIGINT) or 143 (SIGTERM); a second signal stops at once, without a
    checkpoint.

    Args:
        dirpath: where checkpoints go. Give it explicitly: the default (inside the logger's numbered version
            directory) changes with every run, so ``--ckpt_path last`` would look in a new, empty directory.
        every_n_train_steps: optimizer steps between checkpoints (0: only at epoch ends and on a signal).
        save_top_k: also keep this many step-numbered checkpoints (0: ``last.ckpt`` only).
        filename: name pattern of the step-numbered checkpoints (Lightning's default when None).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 50, save_top_k: int = 0, filename: str | None = None):
        if every_n_train_steps < 0:
            raise UserError(f"ResumableCheckpoint.every_n_train_steps must be ≥ 0, got {every_n_train_steps}.")
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            save_last=True,
            save_top_k=save_top_k,
            every_n_train_steps=every_n_train_steps or None,
        )
        self._signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._rng_to_restore: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------ atomic saving
    def _save_checkpoint(self, trainer, filepath: str) -> None:
        # Lightning writes in place: a kill during the write would leave a torn last.ckpt and nothing to resume.
        # Written under a temporary name (the same on every rank: sharded checkpoints are written by all of them),
        # fsynced, then renamed. The bookkeeping below is ModelCheckpoint._save_checkpoint's (Lightning 2.6).
        tag = trainer.strategy.broadcast(f"{os.getpid()}-{os.urandom(4).hex()}")
        final = Path(filepath)
        tmp = final.with_name(f".{final.name}.{tag}.tmp")
        with disk_errors(final):
            try:
                trainer.save_checkpoint(tmp, self.save_weights_only)
                if trainer.is_global_zero:
                    fsync_tree(tmp)
                    if final.is_dir() and not final.is_symlink():  # a sharded checkpoint replaced by another
                        import shutil

                        shutil.rmtree(final)
                    os.replace(tmp, final)
                    fsync_dir(final.parent)
            finally:
                if trainer.is_global_zero and tmp.exists():
                    import shutil

                    shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        trainer.strategy.barrier("thinksafe-checkpoint")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            from weakref import proxy

            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        saved = self._last_checkpoint_saved, self._last_global_step_saved
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning 2.6 writes last.ckpt at an epoch end only when a top-k checkpoint is written there too, which
        # save_top_k=0 or every_n_train_steps never do. Written again even when a step checkpoint has this step:
        # epoch-end hooks change what resumes (data.rounds builds the next round's set there).
        done = (self._last_checkpoint_saved, self._last_global_step_saved) != saved
        if not done and not trainer.sanity_checking and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    # ------------------------------------------------------------------------------------------- RNG state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": _rng_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        self._rng_to_restore = state.pop("rng", None)
        super().load_state_dict(state)

    # --------------------------------------------------------------------------------------------- signals
    def on_train_start(self, trainer, pl_module) -> None:
        if self._rng_to_restore is not None:
            # here, not when the checkpoint is read: what on_fit_start runs (probes, the "before" evaluation)
            # must not shift the generators the next training step reads
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        self._signal = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handlers = {s: signal.signal(s, self._on_signal) for s in _SIGNALS}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:
            print(
                f"thinksafe: {signal.Signals(signum).name} again: stopping now, without a checkpoint.",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(128 + signum)
        self._signal = signum
        print(
            f"thinksafe: {signal.Signals(signum).name} received: finishing the current optimizer step, then "
            "writing a checkpoint (send it again to stop at once, without one).",
            file=sys.stderr,
            flush=True,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.fit_loop._should_accumulate():  # mid-step: gradients in flight are not checkpointed
            return
        stop = self._signal is not None
        if trainer.world_size > 1:  # every rank stops at the same step (a signal may reach only some)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self._stop(trainer)

    def _stop(self, trainer) -> None:
        signum = self._signal if self._signal is not None else signal.SIGTERM
        if self._last_global_step_saved != trainer.global_step or not self.last_model_path:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._restore_handlers()
        if trainer.is_global_zero:
            print(
                f"thinksafe: stopped by {signal.Signals(signum).name} after optimizer step {trainer.global_step}; "
                f"checkpoint written to {self.last_model_path}. To continue exactly where it stopped, run the same "
                "command again with --ckpt_path last (same recipe and options).",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(128 + signum)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s, handler in self._previous_handlers.items():
                signal.signal(s, handler)
        self._previous_handlers = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(_python_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state():
    version, internal, gauss = random.getstate()
    return version, list(internal), gauss


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def require_last_checkpoint(trainer) -> None:
    """``--ckpt_path last`` with no last checkpoint in any checkpoint directory is an error: Lightning only warns
    and starts over from step 0."""
    dirs = [cb.dirpath for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    if not any(Path(d).is_dir() and any(Path(d).glob("last*.ckpt")) for d in dirs):
        where = ", ".join(str(d) for d in dirs) or "(no checkpoint directory is configured)"
        raise UserError(
            f"--ckpt_path last: no last checkpoint in {where}, so there is nothing to resume. Checkpoints are written "
            "by the recipe's thinksafe.model.ResumableCheckpoint callback (with an explicit dirpath); run "
            "without --ckpt_path to start over, or give the checkpoint file."
        )
