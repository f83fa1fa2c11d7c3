"""What every rank of a multi-process run needs beyond what Lightning does for it."""

from __future__ import annotations

import atexit
import os

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


def launched_world_size() -> int:
    """The number of processes a launcher started for this job (torchrun, or srun with torchrun's variables),
    from ``WORLD_SIZE`` in the environment; 1 when nothing launched several."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def join_launched_group() -> bool:
    """Join the process group a launcher describes in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``), destroyed at exit; False (and nothing done) when this process runs alone.

    Always gloo, GPUs or not: outside ``fit`` the group only carries a few small objects (who holds the directory,
    which shards are done), and NCCL would put a CUDA context in every rank's own process, taking GPU memory from
    the vLLM engine that rank starts on the same GPU."""
    if launched_world_size() == 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    destroy_process_group_at_exit()
    return True


def launched_rank() -> int:
    """This process's rank among those a launcher started (``RANK``; 0 when nothing launched several)."""
    return int(os.environ.get("RANK", "0")) if launched_world_size() > 1 else 0


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``, set by the launcher; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))
