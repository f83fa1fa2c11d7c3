"""thinksafe.distributed: the process group is destroyed before interpreter finalization."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_process_group_is_destroyed_at_exit(tmp_path):
    """A gloo group left to finalization can abort a finished run with SIGABRT (exit -6, seen in CI on a 2-process
    DDP fit); after destroy_process_group_at_exit the group is gone by the time later atexit handlers run."""
    script = textwrap.dedent(
        f"""
        import atexit
        import torch.distributed as dist
        from thinksafe.distributed import destroy_process_group_at_exit

        # registered first, so it runs last (atexit is LIFO)
        atexit.register(lambda: print("initialized at exit:", dist.is_initialized()))
        destroy_process_group_at_exit()  # before init: a no-op
        dist.init_process_group("gloo", init_method="file://{tmp_path / "store"}", rank=0, world_size=1)
        destroy_process_group_at_exit()
        destroy_process_group_at_exit()  # idempotent
        print("initialized at end:", dist.is_initialized())
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["initialized at end: True", "initialized at exit: False"]
