"""Progress of generation that tells the truth: samples finished, generated tokens/s and time left, updated as each
request completes, with the engine's start labelled while it happens.

The vLLM engine runs in another process (:mod:`thinksafe.sampling.engine`); it reports each finished request
back through its pipe, and the parent hands the reports to the :class:`GenerationProgress` that is active
(:func:`reporting`). Callers that know the whole job (the data stage: every chunk of every prompt) open one for
the job and :meth:`~GenerationProgress.commit` after each call; anything else gets one per engine call.

On a terminal the display is a live bar; elsewhere (a log file, a batch job) a plain line is printed every
``every_s`` seconds, so a log shows the same numbers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

Reporter = Callable[[dict[str, Any]], None]

_active: list[Reporter] = []
_lock = threading.Lock()


@contextmanager
def reporting(reporter: Reporter):
    """Within this block, engine events go to ``reporter`` (innermost wins)."""
    with _lock:
        _active.append(reporter)
    try:
        yield reporter
    finally:
        with _lock:
            _active.remove(reporter)


def active_reporter() -> Reporter | None:
    return _active[-1] if _active else None


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class GenerationProgress:
    """A progress display for ``total`` samples (rows) and a reporter for the engine's events.

    Events (dicts, from :class:`~thinksafe.sampling.engine.EngineProcess`):

    * ``{"kind": "starting", "what", "model", "elapsed"}`` while an engine starts (every second);
    * ``{"kind": "ready", "what", "model", "seconds", "log", "warnings"}`` once it runs;
    * ``{"kind": "requests", "done", "total", "tokens"}``: requests finished and tokens generated so far in the
      current engine call.

    Args:
        description: what is being generated ("sampling", "judging (llama-guard-3)").
        total: samples in the whole job; None: the size of the first engine call.
        completed: samples already done before this run (a resumed job); not counted in the rate.
        console: a rich Console (stderr by default).
        unit: what a sample is called in the plain lines ("rows", "verdicts").
        every_s: seconds between plain lines when the console is not a terminal.
    """

    def __init__(
        self,
        description: str,
        total: int | None = None,
        completed: int = 0,
        console=None,
        unit: str = "rows",
        every_s: float = 30.0,
    ):
        from rich.console import Console

        self.description = description
        self.console = console or Console(stderr=True)
        self.unit = unit
        self.every_s = every_s
        self.total = total
        self.resumed = completed
        self.base_done = completed  # committed samples
        self.base_tokens = 0
        self._call = (0, 0)  # (requests finished, tokens) the current engine call has reported
        self._call_committed = (0, 0)  # of which committed already (a streaming call commits as it goes)
        self._in_call = False  # the current engine call has unfinished requests
        self.busy = 0.0  # seconds of generation in committed calls
        self.call_started: float | None = None
        self._mark = time.monotonic()  # end of the last committed call
        self._last_line = 0.0
        self._progress = None
        self._task = None

    # ------------------------------------------------------------------------------------------ display
    def __enter__(self) -> GenerationProgress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
            disable=not self.console.is_terminal,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task(
            self.description, total=self.total, completed=self.base_done, rate="", eta=""
        )
        self._last_line = self._mark = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self._refresh(final=True)
        self._progress.__exit__(*exc)
        if not self.console.is_terminal:
            self.console.print(self.line())

    @property
    def call_done(self) -> int:
        return max(0, self._call[0] - self._call_committed[0])

    @property
    def call_tokens(self) -> int:
        return max(0, self._call[1] - self._call_committed[1])

    @property
    def done(self) -> int:
        return self.base_done + self.call_done

    @property
    def tokens(self) -> int:
        return self.base_tokens + self.call_tokens

    def seconds(self) -> float:
        """Seconds spent generating (engine starts and time between calls excluded)."""
        now = time.monotonic()
        return self.busy + (now - self.call_started if self.call_started is not None else 0.0)

    def rates(self) -> tuple[float | None, float | None, float | None]:
        """(samples/s, generated tokens/s, seconds left) from this run's own samples."""
        secs = self.seconds()
        new = self.done - self.resumed
        if secs <= 0 or new <= 0:
            return None, None, None
        per_s = new / secs
        left = (self.total - self.done) / per_s if self.total is not None else None
        return per_s, self.tokens / secs, left

    def line(self) -> str:
        per_s, tok_s, left = self.rates()
        total = f"/{self.total}" if self.total is not None else ""
        rate = f"{tok_s:,.0f} tok/s, {per_s:.2f} {self.unit}/s" if tok_s is not None else "- tok/s"
        return f"{self.description}: {self.done}{total} {self.unit}, {rate}, ETA {_clock(left)}"

    def _refresh(self, final: bool = False) -> None:
        per_s, tok_s, left = self.rates()
        if self._progress is not None:
            self._progress.update(
                self._task,
                completed=self.done,
                total=self.total,
                rate=f"{tok_s:,.0f} tok/s" if tok_s is not None else "- tok/s",
                eta=f"ETA {_clock(0 if final and self.total == self.done else left)}",
            )
        now = time.monotonic()
        if not final and not self.console.is_terminal and now - self._last_line >= self.every_s:
            self._last_line = now
            self.console.print(self.line())

    def say(self, text: str) -> None:
        """A line above the bar (rich keeps the bar at the bottom)."""
        (self._progress.console if self._progress is not None else self.console).print(text)

    # ---------------------------------------------------------------------------------------- reporting
    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        if kind == "starting":
            if self._progress is not None:
                self._progress.update(
                    self._task,
                    description=(
                        f"{self.description} · starting {event['what']} for {event['model']} … {event['elapsed']:.0f} s"
                    ),
                )
        elif kind == "ready":
            if self._progress is not None:
                self._progress.update(self._task, description=self.description)
            self.say(ready_line(event))
        elif kind == "requests":
            if self.call_started is None:
                self.call_started = time.monotonic()
            if self.total is None:
                self.total = self.base_done + int(event["total"])
            done, total = int(event["done"]), int(event["total"])
            if done == 0:  # a new engine call: its counts start from zero
                self._call_committed = (0, 0)
            self._call = (done, int(event.get("tokens") or 0))
            self._in_call = done < total
            self._refresh()

    def commit(self, done: int, tokens: int = 0) -> None:
        """``done`` samples and ``tokens`` generated tokens are finished for good (the truth from the results,
        whatever the engine reported on the way): after an engine call, or during a streaming one, whose
        reported counts include them."""
        now = time.monotonic()
        # a sampler that reports nothing on the way (transformers): the whole call counts as generation
        self.busy += now - (self.call_started if self.call_started is not None else self._mark)
        self.call_started = now if self._in_call else None
        self._mark = now
        self.base_done += done
        self.base_tokens += tokens
        self._call_committed = (self._call_committed[0] + done, self._call_committed[1] + tokens)
        self._refresh()


def ready_line(event: dict[str, Any]) -> str:
    """The one line the console gets about an engine's start, instead of its log."""
    warnings = event.get("warnings", 0)
    log = f"; its log: {event['log']}" + (f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else "")
    return f"{event['what']} for {event['model']} ready in {event['seconds']:.1f} s{log if event.get('log') else ''}"
