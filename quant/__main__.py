"""``python -m quant``: stop signals are handled from the first line of the toolkit's code to the process's end.

Before :func:`quant.cli.main` installs its handlers (while Python imports the command line), a SIGINT,
SIGTERM or SIGHUP would end the process by the signal's default action (143 and no line) or with a
KeyboardInterrupt traceback. The handlers installed here, before anything else is imported, end it with the
command line's own closing line and exit code (128 + signal): nothing has been written yet, so there is nothing
to clean up. ``main()`` replaces them as its first step (no gap: each handler stays until the next is
installed) and puts them back when it returns. From then on the run has said its last word: a signal ends the
process at once with main()'s exit code (Python's exit could otherwise wait or, once its own handlers are gone,
be ended by the signal's default action after the closing line), and the last step of Python's exit ignores them.

What no code of ours can cover: a signal during the interpreter's own start-up, before this file runs (about
40 ms, plus what the installed packages' start-up files do), ends the process by the signal's default action,
or with Python's own KeyboardInterrupt traceback (SIGINT).
"""

import atexit
import os
import signal
import sys

_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_result: list[int] = []  # main()'s exit code, once it has returned


def _early(signum, frame):
    if _result:  # the run is over and has said so: end now, with its code
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, RuntimeError):  # a closed pipe or file, a flush in progress
                pass
        os._exit(_result[0])
    cli = sys.modules.get("quant.cli")
    if getattr(cli, "main_started", False):  # main() is putting its handlers back: its result comes next
        return
    name = signal.Signals(signum).name  # quant.errors.closing_line's words: nothing is imported before these handlers
    line = "interrupted; no output written" if signum == signal.SIGINT else f"interrupted by {name}; no output written"
    try:
        os.write(2, (line + "\n").encode())
    finally:
        os._exit(128 + signum)


def _ignore_stops():
    """Registered first, so it runs last at exit (after the threads have ended): Python then removes its own
    handlers, and a signal during the rest of its exit would end the process by the default action."""
    for s in _STOPS:
        if signal.getsignal(s) is not signal.SIG_IGN:
            signal.signal(s, signal.SIG_IGN)


for _s in _STOPS:
    if signal.getsignal(_s) is not signal.SIG_IGN:  # ignored (nohup, a script's background job): stays ignored
        signal.signal(_s, _early)
atexit.register(_ignore_stops)

from quant.cli import main  # after the handlers, on purpose

_result.append(main())
# CPython (3.11-3.13) remembers a KeyboardInterrupt that passed through any exec() of a string (dataclasses and
# namedtuple build their classes that way while modules are imported) and, for ``python -m``, ends the process by
# SIGINT after it has exited with our code (-2 to a parent instead of 130, although the closing line was printed).
# Running a string once more clears that memory.
exec("")  # noqa: S102 (a constant empty string)
sys.exit(_result[0])
