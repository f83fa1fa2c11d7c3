"""What every rank of a multi-process run needs beyond what Lightning does for it."""

from __future__ import annotations

import atexit

import torch.distributed as dist

_registered = False


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group while the interpreter is still whole.

    Lightning registers this only for NCCL. A gloo group (DDP or FSDP2 on CPUs) left to interpreter finalization
    can abort the process with SIGABRT ("terminate called without an active exception", pytorch/pytorch#190489):
    a finished ``thinksafe fit`` then exits -6 although its adapter is written. Idempotent; a no-op outside a
    distributed run.
    """
    global _registered
    if not _registered and dist.is_available() and dist.is_initialized():
        atexit.register(_destroy_process_group)
        _registered = True
