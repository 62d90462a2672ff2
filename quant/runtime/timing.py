"""Timing primitives shared by the benchmark and the latency search: interleaved ``session.run``
timing in plain onnxruntime sessions, onnxruntime's per-op profile, the machine's single-thread GEMM
peak and the multiply-adds a model does per image.

Every session here is :func:`quant.runtime.sessions.plain_session`: what a user's program gets from
``onnxruntime.InferenceSession(path)`` with default options, except the thread count
(``intra_op_num_threads``, 1 by default, so two models timed side by side on a shared machine do not
fight over cores).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant import stop
from quant.runtime import sessions

METHOD = ("perf_counter_ns around InferenceSession.run(None, {input: x}) in a plain onnxruntime session "
          "(default SessionOptions except intra_op_num_threads); models timed round-robin; an untimed round of every "
          "model after each side job (profiled round, GEMM sample) before the next timed round")


def latency_stats(ns: np.ndarray) -> dict:
    """Summary of per-inference wall times given in nanoseconds, in milliseconds."""
    ms = np.asarray(ns, dtype=np.float64) / 1e6
    return {"mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "min": float(ms.min()), "max": float(ms.max()), "n": int(len(ms))}


@dataclass
class Timed:
    name: str
    sess: object
    feed: dict  # {input name: array}, built once
    per_call_images: int  # images per run() call
    calls: int  # run() calls per timed unit (batch_size / per_call_images)


def feed(input_name: str, x: np.ndarray) -> dict:
    return {input_name: np.ascontiguousarray(x)}


def _untimed_round(targets: list[Timed]) -> None:
    for t in targets:
        for _ in range(t.calls):
            t.sess.run(None, t.feed)


def time_interleaved(targets: list[Timed], iterations: int, warmup: int, progress: bool = True,
                     between: Callable[[int], object] | None = None) -> dict[str, np.ndarray]:
    """Per-unit (one batch) wall times in ns for each target, measured round-robin; ``between(i)``, if
    given, runs after round ``i``, outside the timed region (the benchmark's profiled rounds and GEMM
    samples). When it returns true (it ran something), one untimed round of every target follows
    before the next timed round: a side job evicts the caches, and the first model of the next round
    would pay for it alone (measured at batch 1: the baseline, timed first, +16 % in the rounds after
    a side job, the int8 model +6 %, which would flatter the int8 / fp32 ratio)."""
    for _ in range(warmup):
        _untimed_round(targets)
    times = {t.name: np.empty(iterations, dtype=np.int64) for t in targets}
    it = range(iterations)
    marks = set()
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        it = tqdm(it, desc="[benchmark] timing", unit="round", file=sys.stderr, mininterval=0.5, leave=False)
    elif progress:  # progress lines for logs (CI): every quarter
        marks = {iterations * q // 4 for q in (1, 2, 3)} - {0}
    clock = time.perf_counter_ns
    # onnxruntime's own InferenceSession.run, as a user's program calls it (not the stoppable wrapper of
    # quant.stop.session, which adds about 1 us per call); the shared RunOptions still let a stop signal end it
    options = stop.run_options()
    runs = {t.name: sessions.plain_run(t.sess, options) for t in targets}
    for i in it:
        for t in targets:
            run, fd, calls = runs[t.name], t.feed, t.calls
            t0 = clock()
            for _ in range(calls):
                run(None, fd)
            times[t.name][i] = clock() - t0
        if i in marks:
            print(f"[benchmark] timing: {i}/{iterations} rounds", file=sys.stderr, flush=True)
        if between is not None and between(i) and i + 1 < iterations:
            _untimed_round(targets)  # re-warm after the side job, outside the clock
    return times


def block_ratios(model_ns: np.ndarray, base_ns: np.ndarray, blocks: int = 5) -> list[float]:
    """The model / baseline latency ratio, paired round by round (each round of ``time_interleaved``
    runs both back to back, under the same host load), as the median of the rounds' ratios in each
    of ``blocks`` consecutive stretches: a headline figure repeated ``blocks`` times within one run,
    so a report shows its spread on a shared host whose load comes in phases."""
    if blocks < 1:
        raise ValueError(f"blocks {blocks}: must be >= 1")
    m, b = np.asarray(model_ns, dtype=np.float64), np.asarray(base_ns, dtype=np.float64)
    if len(m) != len(b):
        raise ValueError(f"{len(m)} model rounds vs {len(b)} baseline rounds: not the same interleaved run")
    if len(m) == 0:
        return []
    ratios = m / np.maximum(b, 1.0)  # a clock tick of 0 ns cannot divide by zero
    return [float(np.median(ratios[c])) for c in np.array_split(np.arange(len(m)), min(blocks, len(m)))]


def _profile_events(sess) -> list[dict]:
    """Ends a profiled session's profiling and reads its events (onnxruntime's JSON trace)."""
    import json

    with open(sess.end_profiling()) as f:
        return json.load(f)


class OpProfiler:
    """onnxruntime's per-node kernel times for ``name: (model, input name, x, calls)``, one profiled
    session per model. Each :meth:`round` runs every model once, round-robin, like
    ``time_interleaved`` runs them (a fixed-batch model fed image by image makes up the batch with
    ``calls`` calls, whose kernel times are summed), so the kernel sums see the same host load and
    compare; the benchmark runs its rounds between the timed rounds so they also see the host phases
    the timing saw. :meth:`warmup` runs a round left out of the medians (the sessions' first runs).
    :meth:`results` gives each node's median over the rounds, slowest first, and sets
    :attr:`recorded`: per model, the rounds every node has in its median. onnxruntime's profiler stops
    recording a session after :data:`MAX_EVENTS` events, so a long profile (large batches run image by
    image) can hold only its first rounds: ``recorded[name] < rounds`` then; :attr:`capacity` is the
    number of rounds after the warm-up that fit under that cap for every model (measured: each model's
    events per call, from a one-call profile of its own), so a caller can spread no more rounds than
    that over a long run instead of losing its end. Use it as a context manager: the profiles are
    written to a temporary folder removed on exit."""

    MAX_EVENTS = 1_000_000  # onnxruntime's profiler: events per session, then "Maximum number of events reached"

    def __init__(self, targets: dict[str, tuple[bytes, str, np.ndarray, int]], threads: int = 1):
        import tempfile

        self.targets, self.rounds, self.warmup_rounds = targets, 0, 0
        self.recorded: dict[str, int] = {}
        self._results: dict[str, list[dict]] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="mnist-quant-prof-")
        try:
            self.sessions = {k: sessions.plain_session(model, sessions.Options(threads, profile_prefix=os.path.join(self._dir.name, f"ort{i}")), k)
                             for i, (k, (model, *_)) in enumerate(targets.items())}
            self._units = [Timed(k, self.sessions[k], feed(name, x), len(x), calls) for k, (_, name, x, calls) in targets.items()]
            self.capacity = min((self._rounds_that_fit(i, *t, threads) for i, t in enumerate(targets.values())), default=0)
        except BaseException:
            self.sessions = {}
            self._dir.cleanup()
            raise

    def _rounds_that_fit(self, i: int, model: bytes, name: str, x: np.ndarray, calls: int, threads: int) -> int:
        """Measured rounds (after one warm-up round) a model's profiled session holds under MAX_EVENTS:
        a one-call profile counts the session's set-up events and the events of one call (every event
        from the call's ``model_run`` on)."""
        probe = sessions.plain_session(model, sessions.Options(threads, profile_prefix=os.path.join(self._dir.name, f"probe{i}")), list(self.targets)[i])
        probe.run(None, {name: x})
        events = _profile_events(probe)
        start = min((e["ts"] for e in events if e.get("name") == "model_run"), default=None)
        # no model_run event (another onnxruntime's profile format): count every event as the call's, which can only
        # underestimate the capacity, never lose the end of a run
        per_call = max(1, len(events) if start is None else sum(1 for e in events if e.get("ts", -1) >= start))
        setup = len(events) - per_call
        return max(0, (self.MAX_EVENTS - setup) // (per_call * calls) - 1)

    def __enter__(self) -> "OpProfiler":
        return self

    def __exit__(self, *exc) -> None:
        self.sessions, self._units = {}, []  # the sessions hold their profile files open
        self._dir.cleanup()

    def warmup(self) -> None:
        if self.rounds:
            raise ValueError("warm-up after measured rounds")
        _untimed_round(self._units)
        self.warmup_rounds += 1

    def round(self) -> None:
        _untimed_round(self._units)
        self.rounds += 1

    def results(self) -> dict[str, list[dict]]:
        if self._results is not None:  # end_profiling works once per session
            return self._results
        out = {}
        for k, sess in self.sessions.items():
            events = _profile_events(sess)
            per: dict[tuple[str, str], list[float]] = {}
            for e in events:
                if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                    per.setdefault((e["args"].get("op_name", "?"), e["name"][:-len("_kernel_time")]), []).append(e["dur"])
            calls = self.targets[k][3]
            rows, complete = [], []
            for (op, node), v in per.items():
                v = np.asarray(v, dtype=np.float64)[self.warmup_rounds * calls:]
                n = len(v) // calls  # whole rounds recorded for this node
                complete.append(n)
                per_round = v[:n * calls].reshape(n, calls).sum(axis=1) if n else v * calls
                rows.append({"op": op, "node": node, "median_us": float(np.median(per_round)) if len(per_round) else 0.0})
            self.recorded[k] = min(complete, default=0)
            out[k] = sorted(rows, key=lambda r: -r["median_us"])
        self._results = out
        return out


# ------------------------------------------------------------------------ work and machine peak
def macs_per_image(model: onnx.ModelProto) -> int:
    """Multiply-adds of the Conv, MatMul and Gemm nodes for one image (static shapes from onnx's
    shape inference with the batch set to 1); fp32 and int8 forms of one network give the same count."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:
        return 0
    shapes = {}
    for vi in [*m.graph.value_info, *m.graph.input, *m.graph.output]:
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
    producers = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name: list(t.dims) for t in m.graph.initializer}

    def weight_dims(name):  # through a DequantizeLinear for QDQ models
        if name in inits:
            return inits[name]
        p = producers.get(name)
        return inits.get(p.input[0]) if p is not None and p.op_type == "DequantizeLinear" else None

    total = 0
    for n in m.graph.node:
        op = n.op_type
        if op in ("Conv", "QLinearConv"):
            w = weight_dims(n.input[3] if op == "QLinearConv" else n.input[1])
            y = shapes.get(n.output[0])
            if w and y and len(y) == 4:
                total += int(np.prod(y[1:])) * int(np.prod(w[1:]))
        elif op in ("MatMul", "Gemm", "QLinearMatMul", "MatMulInteger", "QGemm"):
            a = shapes.get(n.input[0])  # K from the activation: the weight may be computed (the zoo's Reshape)
            y = shapes.get(n.output[0])
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            if a and y and len(a) >= 2:
                total += int(np.prod(y[1:])) * int(a[-2] if trans_a else a[-1])
    return total


class GemmPeak:
    """Single-thread GEMM rate of this machine in onnxruntime: fp32 MatMul and u8s8 MatMulInteger of
    ``size``^3, in GMAC/s: the ceiling a model's conv/FC layers can approach. Each :meth:`sample`
    times one of each, back to back, so both see the same host load; the benchmark takes its samples
    between the timed rounds, spread over the run, since the host's load comes in phases longer than
    a sample (~5 ms). :meth:`result`: the peak is the best sample (what the machine can do when the
    other load lets it), ``*_gmacs_median`` the median."""

    def __init__(self, size: int = 512, threads: int = 1):
        rng = np.random.default_rng(0)
        n = self.size = size
        self.threads = threads

        def model(node, xtype, wt):
            g = helper.make_graph([node], "peak", [helper.make_tensor_value_info("x", xtype, [n, n])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT if xtype == TensorProto.FLOAT else TensorProto.INT32, [n, n])], wt)
            return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()

        fp = model(helper.make_node("MatMul", ["x", "w"], ["y"]), TensorProto.FLOAT,
                   [numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")])
        q = model(helper.make_node("MatMulInteger", ["x", "w", "xz"], ["y"]), TensorProto.UINT8,
                  [numpy_helper.from_array(rng.integers(-64, 64, (n, n)).astype(np.int8), "w"),
                   numpy_helper.from_array(np.array(3, np.uint8), "xz")])
        self.runs = {name: (sessions.plain_session(mb, sessions.Options(threads)), {"x": x}) for name, mb, x in (
            ("fp32", fp, rng.standard_normal((n, n)).astype(np.float32)),
            ("u8s8", q, rng.integers(0, 128, (n, n)).astype(np.uint8)))}
        for sess, fd in self.runs.values():
            for _ in range(3):
                sess.run(None, fd)
        self.times: dict[str, list[float]] = {name: [] for name in self.runs}

    def sample(self) -> None:
        for name, (sess, fd) in self.runs.items():
            t0 = time.perf_counter()
            sess.run(None, fd)
            self.times[name].append(time.perf_counter() - t0)

    def result(self) -> dict:
        out = {"size": self.size, "threads": self.threads, "samples": len(self.times["fp32"])}
        for name, t in self.times.items():
            if not t:
                raise ValueError("GemmPeak.result before any sample")
            out[f"{name}_gmacs"] = float(self.size ** 3 / max(min(t), 1e-9) / 1e9)
            out[f"{name}_gmacs_median"] = float(self.size ** 3 / max(float(np.median(t)), 1e-9) / 1e9)
        return out
