"""What every sub-command's CLI shares (progress on stderr, the command line for reports), so the
sub-command modules and ``cli`` depend on this and not on each other."""

from __future__ import annotations

import shlex
import sys


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def command_line() -> str:
    return shlex.join(["python", "-m", "quant", *sys.argv[1:]])
