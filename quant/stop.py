"""Stop signals and time bounds that reach into onnxruntime's native code.

Python acts on a signal only when the main thread runs Python again; a session.run of a model that
never finishes (a Loop of 10^12 trips) would ignore Ctrl-C and SIGTERM until SIGKILL. Every session
the toolkit makes (:class:`Session`) runs with one shared ``onnxruntime.RunOptions``; a watcher thread
sets its ``terminate`` flag, which onnxruntime checks between nodes (inside Loop bodies too), when

- a stop signal arrives (:func:`watch_signals`: the C-level signal handler writes the signal number to
  a wakeup pipe at once, even while the main thread is inside onnxruntime; the Python handlers then do
  what they always did once the run has returned), or
- one inference runs longer than ``evaluation.timeout_seconds`` (:func:`configure`): the run ends with
  :class:`RunTimeout` (exit 4) naming the model.

neural-compressor makes sessions of its own (calibration); while its loop runs, :mod:`quant.quantize.inc` routes
every ``InferenceSession.run`` that passes no RunOptions through :func:`bounded_run`, so those runs are stopped and
time-bounded alike. Native code that no RunOptions reaches (a session being created, a graph being optimized)
cannot be interrupted; if the command has not ended FORCED_EXIT_SECONDS after a stop signal,
the watcher removes the run's temporaries (:func:`track`), prints the closing line and ends the process
with 128 + signal. A commit in progress is let finish first.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import threading
import time

from quant.errors import Interrupted, ModelError, closing_line

DEFAULT_TIMEOUT = 600.0  # seconds for one session.run; mnist-12 at the largest batch (10,000 images) takes about 1 s
_TICK = 0.1  # how often the watcher looks at the running inference
FORCED_EXIT_SECONDS = 2.0


class RunTimeout(ModelError):
    """One inference ran longer than ``evaluation.timeout_seconds`` (exit 4)."""


class _State:
    def __init__(self):
        self.lock = threading.Lock()
        self.options = None  # the shared onnxruntime.RunOptions, made with the first session (onnxruntime loads slowly)
        self.timeout = DEFAULT_TIMEOUT
        self.started: float | None = None  # monotonic start of the inference running now
        self.timed_out = False
        self.signum: int | None = None  # the first stop signal received
        self.thread: threading.Thread | None = None
        self.pipe: tuple[int, int] | None = None
        self.stopped_at: float | None = None  # monotonic time of the first stop signal
        self.temporaries: set = set()  # paths removed on a forced exit
        self.committing = 0  # commits in progress: a forced exit waits for them
        self.committed = False  # a commit completed since watch_signals: the closing line says so


_state = _State()


def track(path) -> None:
    """A temporary file or folder of the run (staged output, neural-compressor's workspace): removed by a forced exit."""
    _state.temporaries.add(str(path))


def untrack(path) -> None:
    _state.temporaries.discard(str(path))


class committing:
    """``with committing():`` around a commit: a forced exit waits until it is over."""

    def __enter__(self):
        _state.committing += 1

    def __exit__(self, kind, value, tb):
        _state.committing -= 1
        with _state.lock:
            if _state.stopped_at is not None:  # the signal came during the commit: the main thread acts on it now
                _state.stopped_at = time.monotonic()
        if kind is None or issubclass(kind, Interrupted):  # Interrupted from a commit: raised after the moves
            _state.committed = True


def _force_exit(signum: int) -> None:
    for p in list(_state.temporaries):
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass
    try:
        os.write(2, (closing_line(signum, _state.committed) + "\n").encode())
    finally:
        os._exit(128 + signum)


def configure(timeout_seconds: float | None) -> None:
    """The time bound of one inference (``evaluation.timeout_seconds``); None keeps the default."""
    if timeout_seconds is not None:
        _state.timeout = float(timeout_seconds)


def stop_signal() -> int | None:
    """The stop signal received since :func:`watch_signals`, if any."""
    return _state.signum


def run_options():
    """The RunOptions every run shares (the watcher sets ``terminate`` on a stop signal)."""
    with _state.lock:
        return _state.options or _options()


def _options():
    """The shared RunOptions (under the lock), made on first use in the main thread: the watcher never imports
    onnxruntime (a signal during start-up would import it beside the main thread's interrupted import)."""
    if _state.options is None:
        import onnxruntime as ort

        _state.options = ort.RunOptions()
        _state.options.terminate = _state.signum is not None
    return _state.options


def _terminate() -> None:
    if _state.options is not None:
        _state.options.terminate = True


def _watch() -> None:
    """The watcher thread. It never imports anything: a stop signal's KeyboardInterrupt raised inside importlib's
    own code (a module lock's callback) can leave the import lock held by the main thread for good, and an import
    here would then wait forever instead of ending the run."""
    while True:
        pipe = _state.pipe
        if pipe is not None:
            try:
                ready, _, _ = select.select([pipe[0]], [], [], _TICK)
            except (OSError, ValueError):  # closed by unwatch_signals
                ready = []
            if ready:
                try:
                    got = os.read(pipe[0], 64)
                except OSError:
                    got = b""
                stops = [s for s in got if s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)]
                if stops:
                    with _state.lock:
                        if _state.signum is None:
                            _state.signum, _state.stopped_at = stops[0], time.monotonic()
                        _terminate()
            with _state.lock:
                late = (_state.pipe is not None and _state.stopped_at is not None and not _state.committing
                        and time.monotonic() - _state.stopped_at > FORCED_EXIT_SECONDS)
                signum = _state.signum
            if late:
                _force_exit(signum)
        else:
            time.sleep(_TICK)
        with _state.lock:
            started = _state.started
            if started is not None and not _state.timed_out and time.monotonic() - started > _state.timeout:
                _state.timed_out = True
                _terminate()


def _ensure_thread() -> None:
    if _state.thread is None or not _state.thread.is_alive():
        _state.thread = threading.Thread(target=_watch, name="quant-stop-watcher", daemon=True)
        _state.thread.start()


def watch_signals() -> int | None:
    """From the main thread: route stop signals to the watcher through a wakeup pipe (Python's C-level handler
    writes to it at once). Returns the previous wakeup fd for :func:`unwatch_signals`. Outside the main thread
    nothing changes (None)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    r, w = os.pipe()
    os.set_blocking(w, False)
    os.set_blocking(r, False)
    previous = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    with _state.lock:
        _state.pipe, _state.signum, _state.stopped_at, _state.committed = (r, w), None, None, False
        _state.options = None  # a fresh flag for this command
        _state.timed_out = False
    _ensure_thread()
    return previous


def unwatch_signals(previous: int | None) -> None:
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    signal.set_wakeup_fd(previous)
    with _state.lock:
        pipe, _state.pipe, _state.stopped_at = _state.pipe, None, None
    if pipe:
        for fd in pipe:
            os.close(fd)


_session_class = None


def session(*args, name: str = "model", **kwargs):
    """``onnxruntime.InferenceSession(*args, **kwargs)`` whose runs share the watcher's RunOptions (stoppable,
    time-bounded). ``name`` names the model in the timeout's message. A run costs about 1 us more than a plain
    session's (two attribute writes and a clock read; no lock on the path the benchmark times)."""
    global _session_class
    if _session_class is None:
        import onnxruntime as ort

        class Session(ort.InferenceSession):
            quant_name = "model"

            def run(self, output_names, input_feed, run_options=None):
                return bounded_run(ort.InferenceSession.run, self, output_names, input_feed, run_options, self.quant_name)

        _session_class = Session
    _ensure_thread()
    s = _session_class(*args, **kwargs)
    s.quant_name = name
    return s


def bounded_run(run, sess, output_names, input_feed, run_options=None, name: str = "model"):
    """``run(sess, output_names, input_feed, options)`` (onnxruntime's own ``InferenceSession.run``) with the shared
    RunOptions (unless ``run_options`` are given) and the started-clock the watcher compares with the time bound;
    a run the watcher ended raises what ended it (KeyboardInterrupt / :class:`Interrupted`, :class:`RunTimeout`)."""
    state = _state
    options = run_options or state.options or _options()
    state.started = time.monotonic()
    try:
        return run(sess, output_names, input_feed, options)
    except Exception:
        _stopped_or_timed_out(name)
        raise
    finally:
        state.started = None


def end_run() -> None:
    """End the inference running now (from another thread: neural-compressor's tuning.timeout), as a stop signal
    would, without recording a stop: later runs get a fresh RunOptions. Its error is :func:`ended_by_end_run`."""
    with _state.lock:
        if _state.options is not None and _state.started is not None:
            _state.options.terminate = True
            _state.options = None


def ended_by_end_run(e: BaseException) -> bool:
    """``e`` is onnxruntime's error for a run that :func:`end_run` ended."""
    return "terminate flag" in str(e)


def ensure_watcher() -> None:
    """Start the watcher thread if it is not running (sessions made by :func:`session` start it themselves)."""
    _ensure_thread()


def _stopped_or_timed_out(name: str) -> None:
    """After a failed run: raise what ended it when it was the watcher (a stop signal, the time bound)."""
    with _state.lock:
        signum, timed_out = _state.signum, _state.timed_out
        if timed_out and signum is None:  # later runs (another candidate) get a fresh flag
            _state.options, _state.timed_out = None, False
    if signum is not None:  # stopped by a signal: end like the signal's own handler would
        raise (KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum)) from None
    if timed_out:
        raise RunTimeout(f"{name}: one inference ran longer than evaluation.timeout_seconds ({_state.timeout:g} s) and was "
                         "stopped; the model may never finish (a Loop with a huge trip count?) or needs a larger bound") from None
