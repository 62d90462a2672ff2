"""What every sub-command's CLI shares (progress on stderr, the command line for reports), so the
sub-command modules and ``cli`` depend on this and not on each other."""

from __future__ import annotations

import shlex
import sys

from .errors import printable

LINE_LIMIT = 20_000  # characters of one log or error line; untrusted values inside are cut far shorter (errors.PRINT_LIMIT)


def log(msg: str) -> None:
    """One line on stderr: control characters escaped (a model's metadata or a file name cannot forge lines)."""
    print(printable(msg, LINE_LIMIT), file=sys.stderr, flush=True)


def command_line() -> str:
    return shlex.join(["python", "-m", "quant", *sys.argv[1:]])
