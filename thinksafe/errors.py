"""User-facing failures.

Anything the user can fix (a bad file, a bad option, a directory made with other settings) raises
:class:`UserError` with one paragraph that names the file/line/option at fault. The CLI prints that
paragraph and exits with code 2, without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """An error the user can fix; its message is shown as-is, exit code 2."""


def at(path: str | Path, line: int | None = None) -> str:
    """``file`` or ``file:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)
