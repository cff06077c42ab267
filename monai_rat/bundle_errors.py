"""Make a failing ``python -m monai.bundle`` command end on its reason, not on MONAI's wrapper.

MONAI's bundle runner wraps whatever goes wrong: ``RuntimeError: Failed to evaluate ConfigExpression``,
``Failed to instantiate component``, ``applying transform <...>``, a DataLoader worker's ``Caught
ValueError in DataLoader worker process 0``. The message that names the file or argument sits 20-150
lines above the last line, which is the one a user reads. :func:`install` replaces ``sys.excepthook``
(the function Python calls for an uncaught exception, just before it exits with status 1) with
:func:`report`, which finds the reason in the exception chain (the outermost exception that is not
one of MONAI's wrappers) and prints it last:

- the reason was raised on purpose by monai-rat (a ``raise`` statement in the package: our errors name
  the input, what was expected, what was found and what to do): a one-line note on how to get the
  whole traceback, then the reason;
- anything else (a bug, an error from another library): the whole traceback as Python prints it, then
  the reason again when MONAI had wrapped it, so nothing is hidden.

With ``--debug`` on the command line or ``MONAI_RAT_DEBUG=1`` (``MONAI_DEBUG=1`` too) the whole
traceback is always printed, still followed by the reason. The exit status is Python's own (1), and
``KeyboardInterrupt`` / ``SystemExit`` are left alone. ``monai_rat/__init__.py`` calls :func:`install`
only when the process runs ``python -m monai.bundle`` (a bundle config's ``$import monai_rat``), so
importing monai-rat elsewhere changes nothing.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TextIO

__all__ = ["install", "report", "reason", "running_monai_bundle", "debug_requested", "DEBUG_ENV"]

#: environment variable that asks for MONAI's whole traceback (also ``--debug`` on the command line).
DEBUG_ENV = "MONAI_RAT_DEBUG"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_WRAPPERS = re.compile(
    r"^(Failed to evaluate ConfigExpression|Failed to instantiate component|applying transform |"
    r"Caught \w+ in DataLoader worker process)"
)
_CHAIN_SEPARATOR = re.compile(
    r"\n\s*\n(?:The above exception was the direct cause of the following exception:|"
    r"During handling of the above exception, another exception occurred:)\s*\n\s*\n"
)
_installed: dict[str, Any] = {}


def running_monai_bundle() -> bool:
    """Whether this process runs ``python -m monai.bundle`` (also under ``torchrun -m monai.bundle``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) in ("monai.bundle.__main__", "monai.bundle"):
        return True
    argv0 = os.path.normpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return argv0.endswith(os.path.join("monai", "bundle", "__main__.py"))


def debug_requested() -> bool:
    """``--debug`` on the command line (``--debug``, ``--debug true``, ``--debug=True``) or ``MONAI_RAT_DEBUG`` / ``MONAI_DEBUG`` set."""
    for var in (DEBUG_ENV, "MONAI_DEBUG"):
        if os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no", "off"):
            return True
    args = sys.argv[1:]
    for i, a in enumerate(args):
        if a == "--debug":
            nxt = args[i + 1].lower() if i + 1 < len(args) else ""
            return nxt not in ("false", "0", "no", "off")
        if a.lower().startswith("--debug="):
            return a.split("=", 1)[1].lower() not in ("false", "0", "no", "off")
    return False


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)


def _from_worker(message: str) -> tuple[str, str, bool] | None:
    """The reason inside a DataLoader worker's formatted traceback: (type name, message, raised by monai-rat)."""
    if "Original Traceback" not in message:
        return None
    text = message.split("Original Traceback", 1)[1]
    blocks = _CHAIN_SEPARATOR.split(text)
    found = []
    for block in blocks:
        lines = block.splitlines()
        frames = [i for i, ln in enumerate(lines) if ln.startswith("  File ")]
        last_frame = max((i for i, ln in enumerate(lines) if ln.startswith("  ")), default=-1)
        tail = "\n".join(lines[last_frame + 1 :]).strip()
        m = re.match(r"^([A-Za-z_][\w.]*): ?(.*)$", tail, re.S)
        if not m:
            continue
        code = lines[frames[-1] + 1].strip() if frames and frames[-1] + 1 < len(lines) else ""
        ours = bool(frames) and _PACKAGE_DIR in lines[frames[-1]] and code.startswith("raise")
        found.append((m.group(1).rsplit(".", 1)[-1], m.group(2).strip(), ours))
    for name, msg, ours in reversed(found):  # outermost first
        if not _WRAPPERS.match(msg):
            return name, msg, ours
    return None


def _raised_by_us(exc: BaseException) -> bool:
    """Raised on purpose by monai-rat: by a ``raise`` statement in the package (a bug's implicit error is not)."""
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    if not tb or not os.path.abspath(tb[-1].filename).startswith(_PACKAGE_DIR):
        return False
    return (tb[-1].line or "").lstrip().startswith("raise")


def reason(exc: BaseException) -> tuple[str, str, bool, bool]:
    """The reason of a failure: the outermost exception of the chain that is not one of MONAI's wrappers.

    Args:
        exc: the exception that ended the command.

    Returns:
        ``(type name, message, raised by monai-rat, the reason is exc itself)``.
    """
    for e in _chain(exc):
        msg = str(e).strip()
        worker = _from_worker(msg)
        if worker is not None:
            return worker[0], worker[1], worker[2], False
        if isinstance(e, RuntimeError) and _WRAPPERS.match(msg):
            continue
        return type(e).__name__, msg, _raised_by_us(e), e is exc
    return type(exc).__name__, str(exc).strip(), _raised_by_us(exc), True


def report(
    exc_type: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,
    file: TextIO | None = None,
    debug: bool | None = None,
) -> None:
    """Print an uncaught exception so that its reason is the last thing printed (the ``sys.excepthook``).

    Args:
        exc_type: the exception's type.
        exc: the exception.
        tb: its traceback.
        file: where to print (default ``sys.stderr``).
        debug: print the whole traceback (default: :func:`debug_requested`).
    """
    file = file if file is not None else sys.stderr
    for stream in (sys.stdout, sys.stderr):  # log lines still buffered (stdout into a file or pipe) go out first
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    if exc is None or issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
        _installed.get("previous", sys.__excepthook__)(exc_type, exc, tb)
        return
    debug = debug_requested() if debug is None else debug
    name, message, ours, is_outermost = reason(exc)
    if debug or not ours:
        traceback.print_exception(exc_type, exc, tb, file=file)
        if is_outermost:
            file.flush()
            return
        print("\nmonai-rat: the reason, from the traceback above:", file=file)
    else:
        print(
            f"\nmonai-rat: the command stopped (for the whole traceback add --debug, or set {DEBUG_ENV}=1):",
            file=file,
        )
    print(f"{name}: {message}", file=file)
    file.flush()


def install() -> bool:
    """Make :func:`report` the ``sys.excepthook`` (once; the previous hook handles ``KeyboardInterrupt``).

    Returns:
        True when installed by this call.
    """
    if sys.excepthook is report:
        return False
    _installed["previous"] = sys.excepthook
    sys.excepthook = report
    return True
