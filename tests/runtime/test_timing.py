"""Timing primitives: statistics, plain-session timing, multiply-add counts, the GEMM peak."""

import os

import numpy as np
import pytest
from helpers import mnist12_like, pattern_linear

from quant.graph import models, prepare
from quant.runtime import sessions, timing


def _profile(targets, runs):
    """OpProfiler on its own: a warm-up round, ``runs`` rounds back to back, the medians."""
    with timing.OpProfiler(targets) as prof:
        prof.warmup()
        for _ in range(runs):
            prof.round()
        return prof.results()


def _peak(size, repeats):
    """GemmPeak on its own: ``repeats`` samples back to back."""
    peak = timing.GemmPeak(size)
    for _ in range(repeats):
        peak.sample()
    return peak.result()


def test_latency_stats_on_known_values():
    ns = np.arange(1, 101) * 1_000_000  # 1..100 ms
    s = timing.latency_stats(ns)
    assert s["min"] == 1 and s["max"] == 100 and s["mean"] == 50.5 and s["n"] == 100
    assert s["p50"] == pytest.approx(50.5) and s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)


def test_macs_per_image_counts_conv_and_fc_layers():
    # mnist12_like: Conv 1->8 5x5 on 28x28 (same padding), Conv 8->16 5x5 on 14x14, FC 256->10
    want = 28 * 28 * 8 * 25 + 14 * 14 * 16 * 8 * 25 + 256 * 10
    m = mnist12_like()
    assert timing.macs_per_image(m) == want
    dyn, _ = prepare.make_batch_dynamic(m, models.signature(m, "m"))  # a symbolic batch counts per image
    assert timing.macs_per_image(dyn) == want
    assert timing.macs_per_image(pattern_linear()) == 784 * 10


def test_interleaved_timing_runs_every_target_in_plain_sessions():
    b = models.serialize(pattern_linear())
    x = np.zeros((4, 784), np.float32)
    targets = [timing.Timed(k, sessions.plain_session(b), timing.feed("input", x), 4, c) for k, c in (("a", 1), ("b", 2))]
    times = timing.time_interleaved(targets, 7, 2, progress=False)
    assert set(times) == {"a", "b"} and all(len(v) == 7 and (v > 0).all() for v in times.values())


def test_interleaved_timing_calls_between_after_each_round_outside_the_clock(monkeypatch):
    """``between(i)`` (the benchmark's profiled rounds) runs after round i's timed runs and before the
    next round's, and its time is in no target's reading."""
    order, now = [], [0]

    class Sess:
        def __init__(self, key, cost):
            self.key, self.cost = key, cost

        def run(self, _out, _feed):
            order.append(self.key)
            now[0] += self.cost

    def between(i):
        order.append(f"between {i}")
        now[0] += 10_000  # a slow profiled round: must not show in the timings

    monkeypatch.setattr(timing.time, "perf_counter_ns", lambda: now[0])
    targets = [timing.Timed("a", Sess("a", 5), {}, 1, 2), timing.Timed("b", Sess("b", 7), {}, 1, 1)]
    times = timing.time_interleaved(targets, 3, 1, progress=False, between=between)
    assert order == ["a", "a", "b"] + ["a", "a", "b", "between 0", "a", "a", "b", "between 1", "a", "a", "b", "between 2"]
    assert list(times["a"]) == [10] * 3 and list(times["b"]) == [7] * 3


def test_interleaved_timing_rewarms_every_model_untimed_after_a_side_job(monkeypatch):
    """A ``between`` that ran something (returns true) evicted the caches: one untimed round of every
    model follows before the next timed round, so the round's first model does not pay alone for the
    cold start (not after the last round: nothing is timed after it). Warm-up rounds are round-robin."""
    order, now, cold = [], [0], {"a": True, "b": True}

    class Sess:
        def __init__(self, key, cost):
            self.key, self.cost = key, cost

        def run(self, _out, _feed):
            order.append(self.key)
            now[0] += self.cost * (3 if cold[self.key] else 1)  # a cold run is slower
            cold[self.key] = False

    def between(i):
        order.append(f"between {i}")
        if i in (0, 2):  # a side job that evicts the caches
            cold.update(a=True, b=True)
            return True
        return None

    monkeypatch.setattr(timing.time, "perf_counter_ns", lambda: now[0])
    targets = [timing.Timed("a", Sess("a", 5), {}, 1, 2), timing.Timed("b", Sess("b", 7), {}, 1, 1)]
    times = timing.time_interleaved(targets, 3, 2, progress=False, between=between)
    assert order == (["a", "a", "b"] * 2 + ["a", "a", "b", "between 0", "a", "a", "b"]  # warm-up rounds; a re-warm round
                     + ["a", "a", "b", "between 1", "a", "a", "b", "between 2"])  # none after the last round
    assert list(times["a"]) == [10] * 3 and list(times["b"]) == [7] * 3  # no timed run was cold


def test_block_ratios_pair_the_rounds_and_repeat_over_consecutive_stretches():
    base = np.full(100, 1000)
    model = np.concatenate([np.full(40, 500), np.full(60, 900)])  # a quiet phase, then a loaded one
    assert timing.block_ratios(model, base, 5) == [0.5, 0.5, 0.9, 0.9, 0.9]
    assert timing.block_ratios(model[:3], base[:3], 5) == [0.5, 0.5, 0.5]  # fewer rounds than stretches: one per round
    assert timing.block_ratios(model[:0], base[:0], 5) == []
    # paired round by round: a load that hits both models in a round cancels, even when it comes and
    # goes between rounds (the medians of the two whole columns would not pair: 1600 / 1000 here)
    load = np.tile([1, 3], 50)
    assert timing.block_ratios(800 * load, 1000 * load, 4) == pytest.approx([0.8] * 4)
    assert timing.block_ratios(np.full(4, 5), np.zeros(4), 2) == [5.0, 5.0]  # a 0 ns reading cannot divide by zero
    with pytest.raises(ValueError, match="not the same interleaved run"):
        timing.block_ratios(model, base[:99])
    with pytest.raises(ValueError, match="must be >= 1"):
        timing.block_ratios(model, base, 0)


def test_profiler_capacity_counts_the_events_of_a_call_in_a_real_profile(monkeypatch, tmp_path):
    """OpProfiler.capacity: measured rounds (after the warm-up round) that fit under onnxruntime's
    event cap, from each model's events per call in a real profile; the model with the most events
    per round decides. (The cap itself, 1,000,000 events, was checked by hand: a one-Relu model at
    50,000 calls per round had capacity 5 and kept exactly 5 of 7 rounds; too slow for a test.)"""
    import json

    b = models.serialize(pattern_linear())
    x = np.zeros((1, 784), np.float32)
    counts = []
    for n in (1, 3):  # onnxruntime records a session's set-up events, then as many events for every call
        s = sessions.plain_session(b, sessions.Options(profile_prefix=str(tmp_path / f"p{n}")))
        for _ in range(n):
            s.run(None, {"input": x})
        with open(s.end_profiling()) as f:
            counts.append(len(json.load(f)))
    per_call, setup = (counts[1] - counts[0]) // 2, counts[0] - (counts[1] - counts[0]) // 2
    assert per_call >= 3 and setup >= 1  # the kernels and the run's own events; the session's loading
    monkeypatch.setattr(timing.OpProfiler, "MAX_EVENTS", 2000)
    with timing.OpProfiler({"a": (b, "input", x, 10), "b": (b, "input", x, 1)}) as prof:
        assert prof.capacity == (2000 - setup) // (per_call * 10) - 1 > 0
    monkeypatch.setattr(timing.OpProfiler, "MAX_EVENTS", setup + per_call)  # the warm-up round fits, no measured round
    with timing.OpProfiler({"b": (b, "input", x, 1)}) as prof:
        assert prof.capacity == 0


def _fake_profiled_sessions(monkeypatch, tmp_path, durs: dict[str, dict[str, list]], order: list):
    """Fake profiled sessions that log their calls and write profiles with known kernel times:
    ``durs[model][node]`` lists a node's kernel times in call order."""
    import json

    class Fake:
        def __init__(self, key):
            self.key = key

        def run(self, _out, feed):
            order.append((self.key, tuple(feed)))

        def end_profiling(self):
            p = tmp_path / f"{self.key}.json"
            ev = [{"cat": "Session", "name": "model_run", "dur": 999}]
            ev += [{"cat": "Node", "name": f"{node}_kernel_time", "dur": d, "args": {"op_name": "Conv"}}
                   for node, ds in durs[self.key].items() for d in ds]
            p.write_text(json.dumps(ev))
            return str(p)

    class Probe:  # OpProfiler's one-call profile that sizes its capacity: 2 set-up events, 3 per call
        def run(self, _out, _feed):
            pass

        def end_profiling(self):
            p = tmp_path / "probe.json"
            p.write_text(json.dumps([{"cat": "Session", "name": "model_loading_array", "ts": 1},
                                     {"cat": "Session", "name": "session_initialization", "ts": 2},
                                     {"cat": "Node", "name": "n_kernel_time", "ts": 6}, {"cat": "Session", "name": "model_run", "ts": 5},
                                     {"cat": "Session", "name": "SequentialExecutor::Execute", "ts": 5}]))
            return str(p)

    fakes = iter([Fake(k) for k in durs])
    monkeypatch.setattr(sessions, "plain_session",
                        lambda model, options, name: Probe() if os.path.basename(options.profile_prefix).startswith("probe")
                        else next(fakes))


def test_profile_ops_runs_the_models_round_robin_and_sums_a_batch_of_calls(monkeypatch, tmp_path):
    order = []
    # a warm-up round first (left out: 100s), then 3 rounds; a's batch is 2 calls
    _fake_profiled_sessions(monkeypatch, tmp_path, {"a": {"n_a": [100, 100, 1, 2, 3, 4, 5, 6]}, "b": {"n_b": [100, 10, 20, 30]}}, order)
    x = np.zeros((1, 4), np.float32)
    prof = _profile({"a": (b"", "in_a", x, 2), "b": (b"", "in_b", x, 1)}, runs=3)
    assert order == [("a", ("in_a",)), ("a", ("in_a",)), ("b", ("in_b",))] * 4  # round-robin, a's batch as 2 calls
    assert prof["a"] == [{"op": "Conv", "node": "n_a", "median_us": 7.0}]  # rounds 1+2, 3+4, 5+6 -> median 7
    assert prof["b"] == [{"op": "Conv", "node": "n_b", "median_us": 20.0}]


def test_op_profiler_reports_the_rounds_a_capped_profile_recorded(monkeypatch, tmp_path):
    """onnxruntime's profiler stops at 1,000,000 events: the nodes late in a session's last rounds
    have fewer kernel times; ``recorded`` says how many whole rounds every node has."""
    order = []
    _fake_profiled_sessions(monkeypatch, tmp_path, {"a": {"first": [9, 1, 2, 3, 4], "last": [9, 5, 6]}}, order)
    x = np.zeros((1, 4), np.float32)
    with timing.OpProfiler({"a": (b"", "in", x, 1)}) as prof:
        folder = prof._dir.name
        assert prof.capacity == (1_000_000 - 2) // 3 - 1  # the probe: 2 set-up events, 3 per call (from its model_run on)
        prof.warmup()
        for _ in range(4):
            prof.round()
        with pytest.raises(ValueError, match="warm-up after measured rounds"):
            prof.warmup()
        res = prof.results()
        assert prof.rounds == 4 and prof.recorded == {"a": 2}  # "last" has 2 of the 4 rounds
        assert {r["node"]: r["median_us"] for r in res["a"]} == {"first": 2.5, "last": 5.5}
        assert prof.results() is res  # a second call does not end the (already ended) profiling again
    assert not os.path.exists(folder) and prof.sessions == {}


def test_profile_ops_on_real_sessions():
    a, b = models.serialize(pattern_linear()), models.serialize(mnist12_like())
    prof = _profile({"lin": (a, "input", np.zeros((2, 784), np.float32), 1),
                               "cnn": (b, models.signature(mnist12_like(), "m").input_name, np.zeros((1, 1, 28, 28), np.float32), 3)},
                              runs=5)
    assert list(prof) == ["lin", "cnn"]
    assert {r["op"] for r in prof["cnn"]} >= {"MaxPool"} and not {r["op"] for r in prof["lin"]} & {"MaxPool", "Conv"}
    assert all(r["median_us"] >= 0 for rows in prof.values() for r in rows)
    assert [r["median_us"] for r in prof["cnn"]] == sorted((r["median_us"] for r in prof["cnn"]), reverse=True)


def test_gemm_peak_reports_both_rates():
    p = _peak(size=64, repeats=3)
    assert p["fp32_gmacs"] > 0 and p["u8s8_gmacs"] > 0 and p["size"] == 64
    assert p["fp32_gmacs"] >= p["fp32_gmacs_median"] and p["u8s8_gmacs"] >= p["u8s8_gmacs_median"]


def _fake_gemm_sessions(monkeypatch, costs: dict[str, list[float]]):
    """Fake fp32 / u8s8 sessions whose runs take ``costs[name]`` seconds each, in order, on a fake clock."""
    order, now, left = [], [0.0], {k: iter(v) for k, v in costs.items()}

    class Sess:
        def __init__(self, key):
            self.key = key

        def run(self, _out, _feed):
            order.append(self.key)
            now[0] += next(left[self.key])

    keys = iter(["fp32", "u8s8"])
    monkeypatch.setattr(sessions, "plain_session", lambda model, options: Sess(next(keys)))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    return order


def test_gemm_peak_interleaves_the_two_and_takes_the_best_sample(monkeypatch):
    """Each sample runs fp32 then u8s8, so a burst of load hits both; the peak is the fastest sample."""
    order = _fake_gemm_sessions(monkeypatch, {"fp32": [9, 9, 9, 2.0, 8.0, 4.0], "u8s8": [9, 9, 9, 1.0, 4.0, 0.5]})
    p = _peak(size=100, repeats=3)  # 3 warm-up runs each, then 3 samples
    assert order == ["fp32"] * 3 + ["u8s8"] * 3 + ["fp32", "u8s8"] * 3
    assert p["samples"] == 3
    assert p["fp32_gmacs"] == pytest.approx(1e6 / 2.0 / 1e9) and p["fp32_gmacs_median"] == pytest.approx(1e6 / 4.0 / 1e9)
    assert p["u8s8_gmacs"] == pytest.approx(1e6 / 0.5 / 1e9) and p["u8s8_gmacs_median"] == pytest.approx(1e6 / 1.0 / 1e9)
    _fake_gemm_sessions(monkeypatch, {"fp32": [9, 9, 9], "u8s8": [9, 9, 9]})
    with pytest.raises(ValueError, match="before any sample"):
        timing.GemmPeak(size=100).result()
