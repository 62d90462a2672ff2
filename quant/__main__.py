"""``python -m quant``: stop signals are handled from the first line of the toolkit's code on.

Before :func:`quant.cli.main` installs its handlers (while Python imports the command line), a SIGINT,
SIGTERM or SIGHUP would end the process by the signal's default action (143 and no line) or with a
KeyboardInterrupt traceback. The handlers installed here, before anything else is imported, end it with the
command line's own closing line and exit code (128 + signal): nothing has been written yet, so there is nothing
to clean up. ``main()`` replaces them as its first step (no gap: each handler stays until the next is
installed) and puts them back when it returns; from then on they change nothing, as the run is over.

What no code of ours can cover: a signal during the interpreter's own start-up, before this file runs
(about 20 ms after the process starts), ends the process by the signal's default action.
"""

import os
import signal
import sys


def _early(signum, frame):
    cli = sys.modules.get("quant.cli")
    if getattr(cli, "main_started", False):  # put back by main() once the run is over: a late signal changes nothing
        return
    name = signal.Signals(signum).name
    line = "interrupted; no output written" if signum == signal.SIGINT else f"interrupted by {name}; no output written"
    try:
        os.write(2, (line + "\n").encode())
    finally:
        os._exit(128 + signum)


for _s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_s) is not signal.SIG_IGN:  # ignored (nohup, a script's background job): stays ignored
        signal.signal(_s, _early)

from quant.cli import main  # after the handlers, on purpose

code = main()
# CPython (3.11-3.13) remembers a KeyboardInterrupt that passed through any exec() of a string (dataclasses and
# namedtuple build their classes that way while modules are imported) and, for ``python -m``, ends the process by
# SIGINT after it has exited with our code (-2 to a parent instead of 130, although the closing line was printed).
# Running a string once more clears that memory.
exec("")
sys.exit(code)
