"""User-facing failures.

Anything the user can fix (a bad file, a bad option, a directory made with other settings) raises
:class:`UserError` with one paragraph that names the file/line/option at fault. The CLI prints that
paragraph and exits with code 2, without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import errno
from pathlib import Path


class UserError(Exception):
    """An error the user can fix; its message is shown as-is, exit code 2."""


def at(path: str | Path, line: int | None = None) -> str:
    """``file`` or ``file:line`` for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def user_message(exc: BaseException) -> str | None:
    """The paragraph to show for ``exc`` when it is the user's to fix, else None (a bug).

    Libraries wrap errors raised while they build objects (jsonargparse chains a :class:`UserError` raised
    in a constructor under several ``ValueError``s), so the whole chain is searched, innermost first.
    """
    from argparse import ArgumentError

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    chain, seen = [], set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for kinds in ((UserError,), (MisconfigurationException,), (ArgumentError,)):
        for e in reversed(chain):
            if isinstance(e, kinds):
                return paragraph(str(e))
    for e in reversed(chain):
        if isinstance(e, OSError) and e.errno in PLACE_ERRNOS:
            return place_message(e)
    return None


#: Errors of a place the user chose or must fix — full, read-only, not permitted, a file where a folder goes (or
#: the reverse) — wherever a library raised them: thinksafe's own writes say so through files.disk_errors, and
#: these are the ones raised inside Lightning, TensorBoard, transformers or vLLM (e.g. a ``trainer.default_root_dir``
#: that is a file surfaces as NotADirectoryError from the TensorBoard logger).
PLACE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOTDIR", "EISDIR")
    if hasattr(errno, name)
)


def place_message(e: OSError) -> str:
    where = e.filename if e.filename is not None else "a path thinksafe writes"
    hint = {
        errno.ENOSPC: "free some space (or point the option at another disk) and run the same command again",
        errno.ENOTDIR: "a file stands where a folder is needed: check the option that names this path "
        "(trainer.default_root_dir, data.output_dir, --output, ...)",
        errno.EISDIR: "a folder stands where a file is needed: check the option that names this path",
    }.get(e.errno, "choose a place thinksafe may write (trainer.default_root_dir, data.output_dir, --output, ...)")
    return paragraph(f"thinksafe: cannot use {where}: {e.strerror or e}. {hint[0].upper()}{hint[1:]}.")


def paragraph(text: str) -> str:
    """``text`` as one paragraph (multi-line library messages joined)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def did_you_mean(bad: str, known: list[str]) -> str:
    """`` did you mean --x?`` for the closest of ``known`` keys to ``bad`` (dotted keys, no dashes), or ''."""
    import difflib

    # jsonargparse accepts --model.lr for --model.init_args.lr: compare and show the short form
    short = sorted({k.replace(".init_args.", ".").removesuffix(".init_args") for k in known})
    bad = bad.lstrip("-").split("=", 1)[0].replace(".init_args.", ".")
    close = difflib.get_close_matches(bad, short, n=1, cutoff=0.6)
    if not close:  # a misspelled last part: compare it among the keys under the same section
        head, _, last = bad.rpartition(".")
        siblings = {k.rpartition(".")[2]: k for k in short if k.rpartition(".")[0] == head}
        close = [siblings[m] for m in difflib.get_close_matches(last, list(siblings), n=1, cutoff=0.6)]
    return f" Did you mean --{close[0]}?" if close else ""


def parse_args(parser, args: list[str], prog: str = "thinksafe"):
    """``parser.parse_args(args)``; an unknown option becomes a :class:`UserError` naming the closest known one.

    jsonargparse (``exit_on_error=False``) raises ``ArgumentError``; its own report is the whole usage, or for
    a misspelled key under a ``class_path`` a nest of union errors.
    """
    from argparse import ArgumentError

    try:
        return parser.parse_args(args)
    except ArgumentError as e:
        raise explain_parse_error(parser, args, str(e), prog) from e


def unknown_key(message: str) -> str | None:
    """The dotted key a jsonargparse error message reports as unknown, if it reports one."""
    import re

    if m := re.search(r"unrecognized arguments: (\S+)", message):
        return m.group(1).lstrip("-").split("=", 1)[0]
    if m := re.search(r"Group '([^']+)' does not accept option '([^']+)'", message):
        return f"{m.group(1)}.{m.group(2)}"
    if m := re.search(r"does not accept option '([^']+)'", message):
        return m.group(1)
    if m := re.search(r"Key '([^']+)' is not expected", message):
        return m.group(1)
    outer = re.search(r'Parser key "([^"]+)"', message)
    nested = re.findall(r"NestedArg\(key='([^']+)'", message)
    if outer and nested:
        return f"{outer.group(1)}.{nested[-1]}"
    option = re.findall(r"Option '([^']+)' is not accepted", message)
    if outer and option:
        return f"{outer.group(1)}.{option[-1]}"
    return None


def known_keys(parser, args: list[str], bad: str) -> list[str]:
    """Every dotted key the parser accepts given ``args`` (parsed again without the unknown option)."""
    from argparse import ArgumentError

    from jsonargparse import Namespace

    kept, skip = [], False
    for a in args:
        if skip:
            skip = False
            if not a.startswith("--"):
                continue
        if a.lstrip("-").split("=", 1)[0].replace(".init_args.", ".") == bad.replace(".init_args.", "."):
            skip = "=" not in a
            continue
        kept.append(a)
    sub = getattr(parser, "_subcommands_action", None)
    if sub is not None and args and args[0] in sub.choices:  # `fit …`: the keys are the subcommand's
        parser, kept = sub.choices[args[0]], kept[1:]
    try:
        cfg = parser.parse_args(kept)
    except (ArgumentError, SystemExit):
        cfg = parser.get_defaults()
    keys: list[str] = []

    def walk(ns, prefix):
        for k, v in vars(ns).items():
            key = f"{prefix}{k}"
            keys.append(key)
            if isinstance(v, Namespace):
                walk(v, key + ".")

    walk(cfg, "")
    keys += [o.lstrip("-") for a in parser._actions for o in a.option_strings if o.startswith("--")]
    return keys


def explain_parse_error(parser, args: list[str], message: str, prog: str) -> UserError:
    bad = unknown_key(message)
    if bad is None:
        return UserError(f"{prog}: {paragraph(message)}")
    bad = bad.replace(".init_args.", ".")
    hint = did_you_mean(bad, known_keys(parser, args, bad))
    flags = {a.lstrip("-").split("=", 1)[0].replace(".init_args.", ".") for a in args if a.startswith("--")}
    what = f"unknown option --{bad}" if bad in flags else f"unknown key {bad} in the recipe (or config)"
    return UserError(f"{prog}: {what}.{hint} `{prog} --help` lists the options.")
