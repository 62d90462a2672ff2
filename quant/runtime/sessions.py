"""The one place onnxruntime sessions and their options are made.

Three kinds of session, all on the CPU provider with onnxruntime's default ``SessionOptions`` apart from
what :class:`Options` holds (no optimizer is ever disabled, so what is measured is what a user's
program runs):

- :func:`make_session`, the evaluation session: stoppable and time-bounded (:func:`quant.stop.session`),
  an unloadable model said in one line (exit 4);
- :func:`plain_session`, the timing session: what ``onnxruntime.InferenceSession(path)`` gives a user's
  program, apart from the thread count (and profiling, when asked); :func:`plain_run` is onnxruntime's
  own ``run`` for it, without the stoppable wrapper's per-call cost;
- :func:`onnxruntime_graph`, a session made only to read back the graph onnxruntime executes.

Before onnxruntime loads a model, :func:`refuse_aborting` stops a model whose loading would end the
process and :func:`quant.runtime.threads.check_threads` a thread count the process cannot serve.
"""

from __future__ import annotations

import functools
import hashlib
import signal
import subprocess
import sys
from dataclasses import dataclass

import onnxruntime as ort

from quant import stop
from quant.errors import ModelError, first_line
from quant.graph import controlflow
from quant.runtime.threads import check_threads

GRAPH_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_PROVIDERS = ["CPUExecutionProvider"]
_QUIET = 4  # log severity: fatal only; an error reaches us as an exception, said once in the one-line message


@dataclass(frozen=True)
class Options:
    """What a session differs in from onnxruntime's defaults: the thread count, the optimization level
    (named as in :data:`GRAPH_OPT_LEVELS`; "all" is the default and left unset), onnxruntime's profiler
    (on when ``profile_prefix`` is given, writing there) and where the optimized graph is written."""

    threads: int = 1
    opt_level: str = "all"
    profile_prefix: str | None = None
    optimized_model_filepath: str | None = None

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        if self.opt_level != "all":
            so.graph_optimization_level = GRAPH_OPT_LEVELS[self.opt_level]
        so.log_severity_level = _QUIET
        if self.profile_prefix is not None:
            so.enable_profiling = True
            so.profile_file_prefix = self.profile_prefix
        if self.optimized_model_filepath is not None:
            so.optimized_model_filepath = self.optimized_model_filepath
        return so


# ------------------------------------------------------------------------ checks before a load
# the child imports nothing of ours (a fresh interpreter importing quant would cost more than the load); its
# options are Options(opt_level=...).session_options() spelled out
_LOAD_IN_CHILD = ("import sys, onnxruntime as o\n"
                  f"so = o.SessionOptions(); so.log_severity_level = {_QUIET}; "
                  "so.graph_optimization_level = o.GraphOptimizationLevel(int(sys.argv[1]))\n"
                  f"o.InferenceSession(sys.stdin.buffer.read(), so, providers={_PROVIDERS!r})\n")
_CRASH_SIGNALS = {signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}
_probed: dict[tuple[str, str], str | None] = {}  # (sha256, level) -> how a load in a child process died, or None


def _crash_in_child(model: bytes, opt_level: str) -> str | None:
    """Load the model in a child process, as :func:`make_session` would; how it crashed, or None when it
    loaded or failed with an ordinary exception (which make_session then says in one line)."""
    key = (hashlib.sha256(model).hexdigest(), opt_level)
    if key not in _probed:
        try:
            r = subprocess.run([sys.executable, "-c", _LOAD_IN_CHILD, str(int(GRAPH_OPT_LEVELS[opt_level]))], input=model,
                               capture_output=True, timeout=300)
        except subprocess.TimeoutExpired:
            r = None
        crashed = r is not None and r.returncode < 0 and -r.returncode in _CRASH_SIGNALS
        last = (r.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1] if crashed else ""
        last = last[last.rfind("Assertion"):] if "Assertion" in last else last[-200:]  # not the C++ template's signature
        _probed[key] = f"{signal.Signals(-r.returncode).name}: {last}" if crashed else None
    return _probed[key]


def refuse_aborting(model: bytes, name: str = "model", opt_level: str = "all") -> None:
    """Stop (exit 4) before onnxruntime loads a model whose loading would end the whole process (a C++
    assertion: no exception to turn into a message; :mod:`quant.graph.controlflow`). A QDQ model with an
    If/Loop/Scan body or a local function is first loaded in a child process (once per model and
    level); a model without them, like every model of the default command, costs one parse."""
    if opt_level == "disable" or not isinstance(model, (bytes, bytearray)) or b"DequantizeLinear" not in model:
        return  # paths are loaded as bytes before they get here
    import onnx

    try:
        proto = onnx.load_from_string(bytes(model))
    except Exception:
        return  # onnxruntime refuses it with an exception, which make_session says in one line
    if not proto.functions and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                                       for n in proto.graph.node for a in n.attribute):
        return
    crash = _crash_in_child(bytes(model), opt_level)
    if crash:
        found = controlflow.hazards(proto)
        why = (f"{found[0]} (onnxruntime's QDQ propagation cannot reach into a subgraph; a QuantizeLinear/DequantizeLinear "
               "pair on that read avoids it)") if found else crash
        raise ModelError(f"{name}: onnxruntime {ort.__version__} aborts the process loading it (tried in a child process): {why}")


# ------------------------------------------------------------------------ the sessions
def _check(model: bytes, options: Options, name: str) -> None:
    """Both checks before a load (each raises its own one-line error)."""
    refuse_aborting(model, name, options.opt_level)
    check_threads(options.threads)


def _stoppable(model: bytes, options: Options, name: str) -> ort.InferenceSession:
    """A session whose runs share the stop watcher's RunOptions (:func:`quant.stop.session`)."""
    return stop.session(model, sess_options=options.session_options(), providers=_PROVIDERS, name=name)


def make_session(model: bytes, threads: int = 1, opt_level: str = "all", name: str = "model") -> ort.InferenceSession:
    """The evaluation session: an onnxruntime CPU session from serialized model bytes; ModelError (exit 4)
    naming the model when onnxruntime cannot load it."""
    options = Options(threads, opt_level)
    _check(model, options, name)
    try:
        return _stoppable(model, options, name)
    except Exception as e:
        raise ModelError(f"{name}: onnxruntime cannot load it: {first_line(e)}") from None


def plain_session(model: bytes, options: Options = Options(), name: str = "model") -> ort.InferenceSession:
    """The timing session: onnxruntime's defaults but ``options`` (the thread count, profiling); what
    onnxruntime raises loading the model is not rephrased (the timed models were loaded for evaluation first)."""
    _check(model, options, name)
    return _stoppable(model, options, name)


def plain_run(sess, options):
    """onnxruntime's own ``InferenceSession.run`` for ``sess`` with the RunOptions ``options`` (the watcher's
    shared ones, :func:`quant.stop.run_options`): what a user's program calls, without the stoppable
    wrapper's per-call cost; a stand-in session (in tests) runs as it is."""
    if isinstance(sess, ort.InferenceSession):
        return functools.partial(ort.InferenceSession.run, sess, run_options=options)
    return sess.run


def onnxruntime_graph(model_bytes: bytes, name: str = "model"):
    """The graph onnxruntime executes for this model after its portable rewrites (level EXTENDED:
    QuantizeLinear/DequantizeLinear groups fused into int8 kernels such as QLinearConv and QGemm,
    constants folded), read back from ``SessionOptions.optimized_model_filepath``. Level ALL would add
    host-specific layouts (NCHWc), so it is not used here; what runs in int8 does not change with it.
    The session is only loaded, never run: a plain ``InferenceSession``, not a stoppable one."""
    import os
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="mnist-quant-ort-") as d:
        path = os.path.join(d, "optimized.onnx")
        so = Options(1, "extended", optimized_model_filepath=path).session_options()
        refuse_aborting(model_bytes, name)
        try:
            ort.InferenceSession(model_bytes, sess_options=so, providers=_PROVIDERS)
        except Exception as e:
            raise ModelError(f"{name}: onnxruntime cannot load it: {first_line(e)}") from None
        return onnx.load(path)
