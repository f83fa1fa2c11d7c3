"""One writer per output directory: a lock that dies with the process holding it.

The lock is ``filelock``'s ``flock(2)`` on ``.thinksafe.lock`` inside the directory: the kernel releases it when
its holder exits in any way, SIGKILL included, so a crashed job never leaves a stale lock behind (the soft,
file-exists fallback is switched off for that reason: it would outlive a killed holder). Who holds it is written
beside it, so a refused job can name the other one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from thinksafe.errors import UserError
from thinksafe.files import disk_errors, write_json_atomic

LOCK_FILE = ".thinksafe.lock"
HOLDER_FILE = ".thinksafe.writer.json"
#: Files of the lock itself: a directory holding only these is as good as empty.
LOCK_FILES = (LOCK_FILE, HOLDER_FILE)


@contextmanager
def writer_lock(directory: str | Path, option: str = "data.output_dir"):
    """Hold the directory's writer lock for the block; refuse at once (a :class:`UserError` naming the holder)
    when a live job holds it. The directory must exist."""
    from filelock import FileLock, Timeout

    directory = Path(directory)
    lock = FileLock(directory / LOCK_FILE, timeout=0, fallback_to_soft=False)
    try:
        with disk_errors(directory / LOCK_FILE):
            lock.acquire()
    except Timeout:
        raise UserError(
            f"{option}: {directory} is being written by another running job ({_holder(directory)}). Two jobs "
            "writing one directory would interleave their rows; wait for that job to end (its finished set is "
            "then reused), stop it, or choose another directory. Nothing was changed."
        ) from None
    try:
        write_json_atomic(
            directory / HOLDER_FILE,
            dict(
                pid=os.getpid(),
                host=socket.gethostname(),
                since=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                command=" ".join(sys.argv),
            ),
        )
        yield
    finally:
        lock.release()


def _holder(directory: Path) -> str:
    try:
        h = json.loads((directory / HOLDER_FILE).read_text())
        return f"pid {h['pid']} on {h['host']} since {h['since']}: {h['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its process is unknown"


def remove_lock_files(directory: Path) -> None:
    """Remove the lock's files (after the lock is released), for a run that leaves the directory as found."""
    for name in LOCK_FILES:
        (directory / name).unlink(missing_ok=True)
