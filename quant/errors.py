"""The toolkit's error types, the exit codes they map to, and the helpers their one-line messages use
(:func:`first_line`, :func:`printable`, the did-you-mean :func:`suggest`).

Every failure a user can cause is raised as a :class:`QuantError` subclass carrying a one-line
message and an exit code; the CLI prints the message and exits with the code (no traceback
unless ``--verbose``).
"""

import difflib
import signal
import threading

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2  # bad command line or config
EXIT_ACCURACY = 3  # accuracy goal not met / gate failed
EXIT_INVALID_INPUT = 4  # invalid model or data
EXIT_SYSTEM = 5  # the system refused an operation on a path the run needs (disk full, name too long, I/O error)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT); SIGHUP ends with 129 and SIGTERM with 143 (128 + the signal number)


class QuantError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    exit_code = EXIT_UNEXPECTED

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(QuantError):
    """Bad command-line flags, paths for outputs, or a bad config file (exit 2)."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The YAML config is malformed, has unknown keys, wrong types or out-of-range values."""


class InputError(QuantError):
    """An input model or data file is missing, unreadable or invalid (exit 4)."""

    exit_code = EXIT_INVALID_INPUT


class DataError(InputError):
    """MNIST files missing, corrupt, or failing their checksum."""


class ModelError(InputError):
    """An ONNX model that cannot be used for the requested operation."""


class RunError(ModelError):
    """onnxruntime loaded the model but fails running it (e.g. a bias whose length is not the conv's
    output channels: the ONNX checker passes it). ``detail`` is onnxruntime's message."""

    def __init__(self, message: str, detail: str):
        super().__init__(message)
        self.detail = detail


class AccuracyError(QuantError):
    """The accuracy goal was not met (exit 3). ``details`` carries figures for the report."""

    exit_code = EXIT_ACCURACY

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def first_line(e: BaseException) -> str:
    """The first line of a library exception's message (its type name when the message is empty),
    for wrapping third-party errors into one-line toolkit errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# bidirectional overrides and isolates reorder what a terminal shows; line and paragraph separators break lines
_INVISIBLE = {0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0xFEFF}
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
PRINT_LIMIT = 300  # characters of one untrusted value shown in a message or a report


def _hidden(c: str) -> bool:
    o = ord(c)
    if o < 0x20 or 0x7F <= o < 0xA0 or o in _INVISIBLE:
        return True
    return o > 0xFF and not c.isprintable()  # format characters, separators, surrogates (a non-UTF-8 file name), unassigned


def printable(text, limit: int | None = PRINT_LIMIT) -> str:
    """``text`` safe to print on one line or put into a report: every control character (C0, DEL, C1), line
    separator, bidirectional override and invisible format character is escaped (``\\n``, ``\\x1b``, ``\\u202e``),
    so a model's metadata or a file name cannot forge lines or colours or reorder what is shown; longer than
    ``limit`` characters, it is cut and its length said. The one helper for every untrusted string the tool
    prints or writes into a report."""
    text = str(text)
    cut = limit is not None and len(text) > limit
    shown = text[:limit] if cut else text
    if not shown.isprintable():
        shown = "".join((_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")) if _hidden(c) else c
                        for c in shown)
    return shown + (f"… ({len(text):,} characters)" if cut else "")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, a service manager's stop, a closed terminal


def suggest(value: str, options) -> str | None:
    """The closest option (case-insensitive prefix first, then difflib), for did-you-mean hints."""
    opts = [str(o) for o in options]
    low = str(value).lower()
    pref = [o for o in opts if o.lower().startswith(low) or low.startswith(o.lower())]
    if pref and low:
        return pref[0]
    hit = difflib.get_close_matches(low, [o.lower() for o in opts], n=1, cutoff=0.5)
    return opts[[o.lower() for o in opts].index(hit[0])] if hit else None


def handle_signals(handler, signals=STOP_SIGNALS) -> dict:
    """Install ``handler`` for ``signals``; returns the previous handlers for :func:`restore_signals`. A signal the
    process ignores (``nohup`` ignores SIGHUP; a script's background job, SIGINT) stays ignored: the user asked
    the command to survive it. Python sets handlers from the main thread only: elsewhere nothing changes and
    ``{}`` is returned."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, handler) for s in signals if signal.getsignal(s) is not signal.SIG_IGN}


def restore_signals(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


class Interrupted(BaseException):
    """SIGTERM or SIGHUP during a run (the CLI turns them into this), or any stop signal during a commit. A BaseException, like Ctrl-C's
    KeyboardInterrupt, so no ``except Exception`` (neural-compressor has several) swallows it, while
    every ``finally`` (INC's workspace, temporary outputs) still runs."""

    def __init__(self, signum: int, written: bool = False):
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum
        self.written = written  # the signal arrived while the outputs were being committed: they are complete

    @property
    def message(self) -> str:
        return closing_line(self.signum, self.written)


def closing_line(signum: int, written: bool = False) -> str:
    """The one line a run ended by a stop signal closes with; it says whether the outputs were written.
    (``python -m quant``'s start-up handler says it too, before this module may be imported.)"""
    name = signal.Signals(signum).name
    if written:
        return f"interrupted by {name} after the outputs were written"
    return "interrupted; no output written" if signum == signal.SIGINT else f"interrupted by {name}; no output written"
