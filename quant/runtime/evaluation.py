"""onnxruntime inference over MNIST: sessions, batched prediction, accuracy figures."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from quant import stop
from quant.errors import InputError, ModelError, QuantError, RunError, first_line
from quant.graph import controlflow
from quant.runtime.threads import check_threads

GRAPH_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(threads: int = 1, opt_level: str = "all") -> ort.SessionOptions:
    """onnxruntime's default session options, except the thread count (and the optimization level
    when asked); no optimizer is ever disabled, so what is measured is what a user's program runs."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if opt_level != "all":
        so.graph_optimization_level = GRAPH_OPT_LEVELS[opt_level]
    so.log_severity_level = 4  # fatal only: an error reaches us as an exception, said once in the one-line message
    return so


_LOAD_IN_CHILD = ("import sys, onnxruntime as o\n"
                  "so = o.SessionOptions(); so.log_severity_level = 4; so.graph_optimization_level = o.GraphOptimizationLevel(int(sys.argv[1]))\n"
                  "o.InferenceSession(sys.stdin.buffer.read(), so, providers=['CPUExecutionProvider'])\n")
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


def make_session(model: bytes, threads: int = 1, opt_level: str = "all", name: str = "model") -> ort.InferenceSession:
    """An onnxruntime CPU session from serialized model bytes."""
    refuse_aborting(model, name, opt_level)
    check_threads(threads)
    try:
        return stop.session(model, sess_options=session_options(threads, opt_level), providers=["CPUExecutionProvider"], name=name)
    except Exception as e:
        msg = first_line(e)
        raise ModelError(f"{name}: onnxruntime cannot load it: {msg}") from None


def predict(sess: ort.InferenceSession, x: np.ndarray, input_name: str, batch_size: int = 1, name: str = "model") -> np.ndarray:
    """Run ``x`` through the session in batches; returns the stacked [N, 10] float32 outputs. RunError
    (exit 4) naming the model when onnxruntime fails running it; ModelError when its output has no row per
    image. A model with a fixed batch larger than the images left gets its last batch padded with copies of
    the last image (10,000 test images at a fixed batch of 64 end in a batch of 16), whose rows are dropped."""
    outs = []
    run = sess.run
    dims = sess.get_inputs()[0].shape
    fixed = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 1 else None
    try:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            n = len(xb)
            if fixed and n < fixed:
                xb = np.concatenate([xb, np.repeat(xb[-1:], fixed - n, axis=0)])
            y = np.asarray(run(None, {input_name: xb})[0])
            if len(xb) > 1 and (y.ndim == 0 or y.shape[0] != len(xb)):
                raise ModelError(f"{name}: its output has shape {list(y.shape)} for a batch of {len(xb)} images; expected one row "
                                 "per image (run it at batch 1: evaluation.batch_size: 1)")
            outs.append(y.reshape(len(xb), -1)[:n])
    except QuantError:  # stop.RunTimeout, an output without a row per image: said as it is
        raise
    except Exception as e:  # onnxruntime's Fail/InvalidArgument/RuntimeException: the model, not our code
        detail = first_line(e)
        raise RunError(f"{name}: onnxruntime loads it but fails running it: {detail}", detail) from None
    y = np.concatenate(outs, axis=0).astype(np.float32, copy=False)
    return y.reshape(len(x), -1)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == labels))


CHANCE_LIMIT = 0.20  # 10 classes: chance is 10 %; an fp32 baseline below 20 % means its inputs are wrong, not the model


def require_above_chance(acc: float, path: str, preprocessing: dict, md5_checked: bool) -> None:
    """Stop (exit 4) when the fp32 baseline scores near chance on the configured data: shifted labels,
    wrong files or a wrong preprocessing would make every comparison against it meaningless (an int8
    model at 0.1 % would pass a gate against an fp32 model at 0.1 %)."""
    if acc < CHANCE_LIMIT:
        hint = "the MNIST files (md5 checks are off: dataset.verify_md5)" if not md5_checked else "the MNIST folder"
        raise InputError(f"{path}: fp32 top-1 {acc:.2%} on the test set is near chance level (10 %); the labels or images, or the "
                         f"preprocessing {preprocessing}, do not match this model: check {hint} and the config's preprocessing")


def effective_batch(fixed_batch: int | None, requested: int) -> int:
    """A model whose batch dimension is fixed runs at that batch (1 for the zoo's MNIST)."""
    return fixed_batch if fixed_batch else requested


@dataclass
class Evaluator:
    """Top-1 accuracy of a serialized model over preprocessed images (used as INC's eval_func)."""

    x: np.ndarray
    labels: np.ndarray
    input_name: str
    batch_size: int = 1
    threads: int = 1

    def outputs(self, model_bytes: bytes, name: str = "model") -> np.ndarray:
        sess = make_session(model_bytes, self.threads, name=name)
        return predict(sess, self.x, self.input_name, self.batch_size, name)

    def __call__(self, model_bytes: bytes, name: str = "model") -> float:
        return accuracy(self.outputs(model_bytes, name), self.labels)


def tied_top1(outputs: np.ndarray) -> int:
    """Images whose two largest outputs are exactly equal (their top-1 depends on the tie rule)."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return 0
    top2 = np.sort(outputs, axis=1)[:, -2:]
    return int(np.sum(top2[:, 0] == top2[:, 1]))


def onnxruntime_graph(model_bytes: bytes, name: str = "model"):
    """The graph onnxruntime executes for this model after its portable rewrites (level EXTENDED:
    QuantizeLinear/DequantizeLinear groups fused into int8 kernels such as QLinearConv and QGemm,
    constants folded), read back from ``SessionOptions.optimized_model_filepath``. Level ALL would add
    host-specific layouts (NCHWc), so it is not used here; what runs in int8 does not change with it."""
    import os
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="mnist-quant-ort-") as d:
        path = os.path.join(d, "optimized.onnx")
        so = session_options(1, "extended")
        so.optimized_model_filepath = path
        refuse_aborting(model_bytes, name)
        try:
            ort.InferenceSession(model_bytes, sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"{name}: onnxruntime cannot load it: {first_line(e)}") from None
        return onnx.load(path)


def check_same_outputs(reference: bytes, candidate: bytes, x: np.ndarray, input_name: str, batch: int, path: str = "model",
                       atol: float = 1e-5, rtol: float = 1e-6, hint: str = "") -> float:
    """Run ``x`` image by image through ``reference`` and in batches of ``batch`` through
    ``candidate``; raise ModelError unless the outputs agree within ``atol + rtol * max|reference|``
    (rewrites may change float summation order, which moves the last bits), or when the candidate fails
    to run (e.g. a Reshape to the old fixed batch that the batch rewrite cannot see, inside an If body).
    ``hint`` ends that message. Returns the largest difference."""
    ref = predict(make_session(reference, name=path), x, input_name, 1, path)
    try:
        got = predict(make_session(candidate, name=path), x, input_name, batch, path)
    except RunError as e:  # the original runs, the rewritten one does not
        raise ModelError(f"{path}: the rewritten model fails at batch {batch} where the original runs: {e.detail}"
                         + (f" ({hint})" if hint else "")) from None
    diff = float(np.max(np.abs(ref - got))) if len(x) else 0.0
    limit = atol + rtol * (float(np.max(np.abs(ref))) if len(x) else 0.0)
    if not diff <= limit:
        raise ModelError(f"{path}: the rewritten model's outputs differ from the original by {diff:g} (> {limit:g})"
                         + (f" ({hint})" if hint else ""))
    return diff
