"""Accuracy-aware post-training quantization with Intel Neural Compressor (2.x API, onnxrt).

This is the only module that imports neural_compressor. INC's workspace (which holds its tuning
history as a pickle) lives in a private temporary folder deleted after the run, and resuming is
never enabled, so nothing a user supplies is ever unpickled.

One result on every machine: INC reads the host CPU in two places of its onnxrt path, and both are
pinned here (:func:`pinned_options`): ``reduce_range`` (INC: ``not CpuInfo().vnni``, i.e. 7-bit
ranges on CPUs without AVX-512 VNNI) is always passed from ``quantization.reduce_range``, and bf16/fp16
are excluded from the tuning space (INC adds bf16 when ``CpuInfo().bf16`` or ``$FORCE_BF16``).

INC 3.7.1 runs inside :func:`quant.quantize.inc_compat.inc_compat`, which supplies what it needs from older
onnx and setuptools.

Stop signals and time bounds reach INC's own work too: while its loop runs, every
``onnxruntime.InferenceSession.run`` that passes no RunOptions (its calibration sessions) runs with the
toolkit's shared ones (:func:`stoppable_runs`), and its ``tuning.timeout`` is raised without a signal
(:func:`_time_limit`). A system error writing its workspace is exit 5 naming the folder (:meth:`_Fit.workspace_error`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import onnx

from quant import stop
from quant.config.criterion import Criterion
from quant.errors import AccuracyError, Interrupted, ModelError, QuantError, first_line, handle_signals, restore_signals
from quant.graph import controlflow
from quant.graph.models import sort_nodes
from quant.quantize.inc_compat import inc_compat

_FORMAT = {"QOperator": "default", "QDQ": "QDQ"}


@dataclass
class Trial:
    index: int  # 0 = fp32 baseline
    accuracy: float
    seconds: float
    fp32_layers: list[str] = field(default_factory=list)  # quantizable nodes (Conv, MatMul, Gemm...) left fp32 in the model evaluated
    int8_layers: list[str] = field(default_factory=list)  # the quantized ones, by their fp32 node's name


QUANTIZABLE = ("Conv", "ConvTranspose", "MatMul", "Gemm")
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger")


def layer_precisions(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(fp32, int8) names of the quantizable layers of a candidate model INC evaluates, in graph order.

    QOperator: a quantized layer is an int8 kernel (QLinearConv, QGemm, ...); QDQ: the layer keeps its op
    type and reads its weight (input 1) through a DequantizeLinear. INC names a quantized node
    ``<fp32 name>_quant``; the fp32 name is reported."""
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    fp32, int8 = [], []
    for n in model.graph.node:
        name = n.name or n.output[0]
        if n.op_type in INT8_KERNELS:
            int8.append(name.removesuffix("_quant"))
        elif n.op_type in QUANTIZABLE:
            if len(n.input) > 1 and produced_by.get(n.input[1]) == "DequantizeLinear":
                int8.append(name.removesuffix("_quant"))
            else:
                fp32.append(name)
    return fp32, int8


@dataclass
class TuneResult:
    model: onnx.ModelProto
    trials: list[Trial] = field(default_factory=list)
    inc_version: str = ""

    @property
    def baseline_accuracy(self) -> float:
        return self.trials[0].accuracy


@dataclass(frozen=True)
class IncSpec:
    """Everything INC's loop is given, built once by the tune workflow from the config and the precision
    plan (:func:`quant.workflows.tune.inc_spec`): this module never sees the config itself."""

    quant_format: str  # "QDQ" | "QOperator"
    per_channel: bool
    reduce_range: bool
    kernel_aware: bool  # our INC recipes (keep Gemm a Gemm) with the kernel-aware form
    sampling_size: int
    op_types_to_keep_fp32: tuple[str, ...]
    nodes_to_keep_fp32: tuple[str, ...]
    criterion: tuple[str, float]
    strategy: str
    timeout: int
    max_trials: int
    random_seed: int


# INC recipes: keep Gemm a Gemm (INC splits it into MatMul + Add by default, which onnxruntime then runs as
# an int8 MatMul plus a separate Add instead of one QGemm).
RECIPES = {"gemm_to_matmul": False}


def recipes(spec: IncSpec) -> dict:
    """INC recipes passed: ours with ``quantization.kernel_aware``, INC's defaults without."""
    return dict(RECIPES) if spec.kernel_aware else {}

# INC options that would otherwise be read from the host CPU; the values are passed on every call.
HOST_INDEPENDENT = {"excluded_precisions": ["bf16", "fp16"]}


def pinned_options(spec: IncSpec) -> dict:
    """The PostTrainingQuantConfig options that INC would otherwise derive from the host CPU, as
    passed on every call (and recorded in the report)."""
    return {"reduce_range": spec.reduce_range, **copy.deepcopy(HOST_INDEPENDENT)}

def _op_dicts(spec: IncSpec) -> tuple[dict | None, dict | None]:
    q = spec
    gran = "per_channel" if q.per_channel else "per_tensor"
    op_type = {op: {"weight": {"granularity": [gran]}} for op in ("Conv", "MatMul", "Gemm")}
    fp32 = {"weight": {"dtype": ["fp32"]}, "activation": {"dtype": ["fp32"]}}
    for op in q.op_types_to_keep_fp32:
        op_type[op] = copy.deepcopy(fp32)
    op_name = {name: copy.deepcopy(fp32) for name in q.nodes_to_keep_fp32}
    return op_type, (op_name or None)


def tune(fp32: onnx.ModelProto, spec: IncSpec, calib_loader, eval_fn: Callable[[bytes], float], verbose: bool = False,
         log: Callable[[str], None] = print, name: str = "model") -> TuneResult:
    """Run INC's accuracy-aware tuning loop as ``spec`` says; ``eval_fn`` maps serialized model bytes to top-1.
    ``name`` names the model when one of INC's own inferences outlasts ``evaluation.timeout_seconds``.

    Raises AccuracyError (exit 3) when no configuration meets ``spec``'s accuracy criterion.
    """
    with inc_compat():
        return _tune(fp32, spec, calib_loader, eval_fn, verbose, log, name)


class _INCLogFilter(logging.Filter):
    """INC sets its logger's level from $LOGLEVEL when it is first imported and logs at import time
    (``Pandas package is required ...``); a filter on the logger, installed before that import, keeps
    its records below ``level`` out of our output (``--verbose`` lowers it to INFO)."""

    level = logging.ERROR
    run_failed = False  # an exception was caught inside INC's loop: _tune then says why in its own one-line error

    def filter(self, record: logging.LogRecord) -> bool:
        if self.level > logging.INFO:  # not --verbose: no copy of an error _tune raises itself
            msg = str(record.msg)
            if msg.startswith("Unexpected exception") or "Not found any quantized model" in msg:  # tune's own error says it
                return False
        return record.levelno >= self.level


_INC_FILTER = _INCLogFilter()


def _tune(fp32, spec: IncSpec, calib_loader, eval_fn, verbose, log, name="model") -> TuneResult:
    """INC's loop in its steps: quiet its logging, build its config, run fit() (stoppable, time-bounded, in a
    private workspace), then turn what it returned or swallowed into a model or one error."""
    _quiet_inc_logging(verbose)
    from neural_compressor import __version__ as version

    record = _Record(spec, eval_fn, log)
    run = _Fit(spec, _inc_config(spec), calib_loader, name)
    q = run.fit(fp32, record.eval_func, verbose)
    if run.stopped:
        raise KeyboardInterrupt if run.stopped[0] == signal.SIGINT else Interrupted(run.stopped[0])
    return _outcome(q, record, run, version)


def _quiet_inc_logging(verbose: bool) -> None:
    inc_logger = logging.getLogger("neural_compressor")
    _INC_FILTER.level = logging.INFO if verbose else logging.ERROR
    if _INC_FILTER not in inc_logger.filters:
        inc_logger.addFilter(_INC_FILTER)
    import neural_compressor  # noqa: F401 (imported after the filter: INC logs at import time)

    inc_logger.setLevel(logging.INFO if verbose else logging.ERROR)


class _Record:
    """The trials INC evaluates (through :meth:`eval_func`) and the evaluations that failed."""

    def __init__(self, spec: IncSpec, eval_fn, log):
        self.spec, self.eval_fn, self.log = spec, eval_fn, log
        self.trials: list[Trial] = []
        self.failures: list[Exception] = []  # INC catches an eval_func exception and ends its loop with no model: kept to say why

    def eval_func(self, model) -> float:
        proto = _sorted(model if isinstance(model, onnx.ModelProto) else getattr(model, "model", model))
        proto, _ = controlflow.mend(proto)  # a copy onnxruntime can load (the written model is mended by finalize)
        t0 = time.perf_counter()
        try:
            acc = self.eval_fn(proto.SerializeToString())
        except Exception as e:
            self.failures.append(e)
            raise
        trials = self.trials
        trials.append(Trial(len(trials), acc, time.perf_counter() - t0, *layer_precisions(proto)))
        if len(trials) == 1:
            self.log(f"[tune] fp32 baseline: top-1 {acc:.2%}")
        else:
            base, (kind, tol) = trials[0].accuracy, self.spec.criterion
            ok = "meets" if Criterion.of(self.spec.criterion).meets(base, acc) else "misses"
            self.log(f"[tune] trial {len(trials) - 1}: int8 top-1 {acc:.2%} (drop {base - acc:+.2%}; {ok} the {kind} {tol:g} criterion)")
        return acc


def _inc_config(spec: IncSpec):
    from neural_compressor.config import AccuracyCriterion, PostTrainingQuantConfig, TuningCriterion

    kind, tol = spec.criterion
    op_type_dict, op_name_dict = _op_dicts(spec)
    return PostTrainingQuantConfig(
        approach="static",
        device="cpu",
        backend="default",
        quant_format=_FORMAT[spec.quant_format],
        **pinned_options(spec),  # reduce_range, excluded_precisions: INC's defaults read the host CPU
        calibration_sampling_size=[spec.sampling_size],
        op_type_dict=op_type_dict,
        op_name_dict=op_name_dict,
        recipes=recipes(spec),
        accuracy_criterion=AccuracyCriterion(criterion=kind, tolerable_loss=tol, higher_is_better=True),
        tuning_criterion=TuningCriterion(strategy=spec.strategy, timeout=spec.timeout,
                                         max_trials=spec.max_trials, objective="accuracy"),
    )


class _Fit:
    """One call of INC's fit() in a private workspace, its stop signals remembered and its own inferences stoppable.

    INC's fit() returns from a ``finally`` block, which swallows every exception (KeyboardInterrupt, SIGTERM's
    Interrupted) and reports "no model met the goal". So a stop signal is remembered here (:attr:`stopped`),
    turned into the KeyboardInterrupt that ends INC's loop soonest, and raised again by _tune once fit() is back:
    exit 130/143/129, not 3.

    INC's own ``tuning.timeout`` (its ``time_limit``) is replaced while fit() runs by :func:`_time_limit`, which
    raises the same KeyboardInterrupt in the main thread without a signal: INC's simulated SIGINT
    (``_thread.interrupt_main``) reached the stop watcher's wakeup pipe like a real Ctrl-C (the run's inferences
    terminated, and a forced exit as "interrupted" if the run took 2 s more), and it could not end one of INC's
    runs stuck in native code."""

    def __init__(self, spec: IncSpec, conf, calib_loader, name: str):
        self.spec, self.conf, self.calib_loader, self.name = spec, conf, calib_loader, name
        self.stopped: list[int] = []
        self.swallowed: list[BaseException] = []  # any exception fit() caught and printed (its own ones too)
        self.timeouts: list[BaseException] = []  # INC's own inferences that outlasted evaluation.timeout_seconds
        self.workspace = ""
        self.expired = False  # INC's tuning.timeout ended its loop

    def _on_stop(self, signum, frame):
        if self.stopped:  # a repeated stop changes nothing
            return
        self.stopped.append(signum)
        logging.getLogger("neural_compressor").setLevel(logging.CRITICAL)  # not INC's "no model met the goal"
        raise KeyboardInterrupt

    def _expire(self):
        self.expired = True

    def fit(self, fp32, eval_func, verbose: bool):
        from neural_compressor.config import options
        from neural_compressor.quantization import fit

        self.workspace = _make_workspace()
        stop.track(self.workspace)  # removed also when a stop signal has to end the process from the watcher
        saved = (options.workspace, options.resume_from, options.random_seed)
        options.workspace, options.resume_from, options.random_seed = self.workspace, None, self.spec.random_seed
        previous = handle_signals(self._on_stop)
        _INC_FILTER.run_failed = False
        result = None
        try:
            with _swallowed_exceptions(self.swallowed, print_them=verbose), stoppable_runs(self.name, self.timeouts, not verbose), \
                    _inc_time_limit(self._expire):
                result = fit(copy.deepcopy(fp32), self.conf, calib_dataloader=self.calib_loader, eval_func=eval_func)
            return result
        except KeyboardInterrupt:
            if self.expired and not self.stopped:  # the timeout's, raised where fit() does not catch it (its finally), or
                return result  # after fit() returned: a model it found just before the time was up stands
            raise
        except (Interrupted, QuantError):
            raise
        except OSError as e:  # INC writing its workspace (the disk full)
            raise self.workspace_error(e) from None
        except Exception as e:  # INC raises assorted errors (AssertionError, ValueError, ...)
            msg = first_line(e)
            raise QuantError(f"neural-compressor failed during tuning: {type(e).__name__}: {msg}") from e
        finally:
            restore_signals(previous)
            options.workspace, options.resume_from, options.random_seed = saved
            shutil.rmtree(self.workspace, ignore_errors=True)
            stop.untrack(self.workspace)

    def workspace_error(self, e: OSError) -> OSError:
        """``e`` naming INC's workspace (or the file it names outside it) and what the system said: exit 5."""
        where = e.filename if e.filename and not str(e.filename).startswith(self.workspace) else self.workspace
        said = e.strerror or first_line(e)
        return OSError(e.errno, f"{said} (neural-compressor's temporary workspace; $TMPDIR chooses where it is made)", where)


@contextlib.contextmanager
def _inc_time_limit(on_expiry: Callable[[], None]) -> Iterator[None]:
    """INC's fit() looks up ``time_limit`` in its module: :func:`_time_limit` stands in for it meanwhile."""
    import neural_compressor.quantization as q

    saved = q.time_limit
    q.time_limit = lambda seconds: _time_limit(seconds, on_expiry)
    try:
        yield
    finally:
        q.time_limit = saved


@contextlib.contextmanager
def _time_limit(seconds: float, on_expiry: Callable[[], None]) -> Iterator[None]:
    """INC's ``time_limit`` (0: none) without a signal: when the time is up, the run of the inference running now
    is ended (:func:`quant.stop.end_run`) and a KeyboardInterrupt is raised in the main thread as an asynchronous
    exception, which INC's loop takes as its timeout. Nothing is raised once the block is over."""
    import ctypes

    if not seconds:
        yield
        return
    main = ctypes.c_ulong(threading.main_thread().ident)
    lock, armed = threading.Lock(), [True]

    def expire():
        with lock:
            if armed[0]:
                on_expiry()
                ctypes.pythonapi.PyThreadState_SetAsyncExc(main, ctypes.py_object(KeyboardInterrupt))
                stop.end_run()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            armed[0] = False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(main, None)  # one not raised yet is withdrawn


def _make_workspace() -> str:
    try:
        return tempfile.mkdtemp(prefix="mnist-quant-inc-")
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror or first_line(e)} (making neural-compressor's temporary workspace there; set "
                      "$TMPDIR to a writable folder with room)", tempfile.gettempdir()) from None


def _outcome(q, record: _Record, run: _Fit, version: str) -> TuneResult:
    """What fit() returned, or the one error that says why it returned nothing."""
    trials, failures, swallowed = record.trials, record.failures, run.swallowed
    if run.timeouts:  # one of INC's own inferences was stopped by the time bound
        raise run.timeouts[0]
    if any(isinstance(e, OSError) for e in swallowed) and not failures:  # INC could not write its workspace
        raise run.workspace_error(next(e for e in swallowed if isinstance(e, OSError)))
    if run.expired:  # tuning.timeout ended the run inside INC: its error is the timeout's, not a failure
        swallowed, failures = [], [e for e in failures if not stop.ended_by_end_run(e)]
    if q is None:
        kind, tol = record.spec.criterion
        if len(trials) <= 1 and (failures or swallowed):  # not an accuracy verdict: no int8 candidate was evaluated
            if not failures:  # INC itself failed (fit() caught and printed it)
                e = swallowed[0]
                raise QuantError(f"neural-compressor failed during tuning: {type(e).__name__}: {first_line(e)}")
            e = failures[0]
            if isinstance(e, ModelError):
                raise ModelError(f"{e} (neural-compressor's int8 candidate; no model written)") from None
            raise QuantError(f"neural-compressor's int8 candidate could not be evaluated: {type(e).__name__}: {first_line(e)}")
        base = trials[0].accuracy if trials else None
        best = max((t.accuracy for t in trials[1:]), default=None)  # None: no int8 candidate was evaluated (JSON has no NaN)
        failed = f"; {len(failures)} candidate(s) did not run: {first_line(failures[0])}" if failures else ""
        failed += f"; tuning.timeout ({record.spec.timeout} s) ended the search" if run.expired else ""
        best_text = "no int8 candidate was evaluated" if best is None else f"best int8 top-1 {best:.2%}"
        base_text = "" if base is None else f" vs fp32 {base:.2%}"
        raise AccuracyError(
            f"no int8 model met the {kind} {tol:g} accuracy criterion after {max(len(trials) - 1, 0)} trial(s): "
            f"{best_text}{base_text}{failed}; no model written",
            {"baseline_accuracy": base, "best_accuracy": best, "trials": len(trials) - 1, "per_trial": trials, "inc_version": version},
        )
    model = _sorted(q.model if hasattr(q, "model") else q)
    return TuneResult(model=model, trials=trials, inc_version=version)


@contextlib.contextmanager
def stoppable_runs(name: str, timeouts: list, quiet: bool = True) -> Iterator[None]:
    """While INC runs: every ``onnxruntime.InferenceSession.run`` that passes no RunOptions (INC's calibration and
    its other sessions) runs with the shared RunOptions and the time bound (:func:`quant.stop.bounded_run`), so a
    stop signal ends it at once and ``evaluation.timeout_seconds`` bounds it. A run stopped by the bound is recorded
    in ``timeouts`` (fit() swallows the error). The class's own ``run`` is put back afterwards, also on an error.

    ``quiet`` (not --verbose): onnxruntime's default logger says only fatal errors meanwhile, as the toolkit's own
    sessions do (``log_severity_level = 4``): INC's sessions would print "Exiting due to terminate flag being set to
    true" beside the closing line of a stop. onnxruntime has no getter; its default (2, warnings) is put back."""
    import onnxruntime as ort

    cls = ort.InferenceSession
    own = cls.__dict__.get("run")  # None: inherited from onnxruntime's Session base class
    original = cls.run

    def run(self, output_names, input_feed, run_options=None):
        if run_options is not None:  # the toolkit's own sessions (quant.stop.Session) pass theirs
            return original(self, output_names, input_feed, run_options)
        try:
            return stop.bounded_run(original, self, output_names, input_feed, None, f"{name} (neural-compressor's calibration)")
        except stop.RunTimeout as e:
            timeouts.append(e)
            raise

    stop.ensure_watcher()
    cls.run = run
    if quiet:
        ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        if own is None:
            del cls.run
        else:
            cls.run = own
        if quiet:
            ort.set_default_logger_severity(2)


@contextlib.contextmanager
def _swallowed_exceptions(record: list, print_them: bool) -> Iterator[None]:
    """INC's fit() catches every exception of its loop and prints its traceback (``traceback.print_exc()``
    straight to stderr, not through its logger), then reports "no model met the goal". The exception is
    recorded here instead, so _tune can say what went wrong in one line; --verbose prints it as before."""
    import traceback

    saved = traceback.print_exc

    def keep(*args, **kwargs):
        if sys.exc_info()[1] is not None:
            record.append(sys.exc_info()[1])
            _INC_FILTER.run_failed = True  # INC's "Not found any quantized model" line would only repeat it
        if print_them:
            saved(*args, **kwargs)

    traceback.print_exc = keep
    try:
        yield
    finally:
        traceback.print_exc = saved


def _sorted(proto: onnx.ModelProto) -> onnx.ModelProto:
    """INC's model, or a re-sorted copy when INC put a node before a tensor one of its If/Loop bodies
    reads (models.sort_nodes: the ONNX checker refuses such a graph); INC's own object is not touched."""
    if not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in proto.graph.node for a in n.attribute):
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    sort_nodes(out)
    return out
