"""Timing primitives: statistics, plain-session timing, multiply-add counts, the GEMM peak."""

import numpy as np
import pytest
from helpers import mnist12_like, pattern_linear

from quant import models, prepare, timing


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
    targets = [timing.Timed(k, timing.plain_session(b), timing.feed("input", x), 4, c) for k, c in (("a", 1), ("b", 2))]
    times = timing.time_interleaved(targets, 7, 2, progress=False)
    assert set(times) == {"a", "b"} and all(len(v) == 7 and (v > 0).all() for v in times.values())


def test_block_ratios_repeat_the_p50_ratio_over_consecutive_stretches():
    base = np.full(100, 1000)
    model = np.concatenate([np.full(40, 500), np.full(60, 900)])  # a quiet phase, then a loaded one
    assert timing.block_ratios(model, base, 5) == [0.5, 0.5, 0.9, 0.9, 0.9]
    assert timing.block_ratios(model[:3], base, 5) == [0.5, 0.5, 0.5]  # fewer rounds than blocks: one per round
    assert timing.block_ratios(model[:0], base, 5) == []
    # each stretch compares the two models in the same rounds: a host slowdown that hits both cancels
    slow = np.where(np.arange(100) < 50, 1, 3)
    assert timing.block_ratios(model * 0 + 800 * slow, base * slow, 4) == pytest.approx([0.8] * 4)


def test_profile_ops_profiles_every_model_in_the_same_rounds():
    a, b = models.serialize(pattern_linear()), models.serialize(mnist12_like())
    prof = timing.profile_ops({"lin": (a, "input", np.zeros((2, 784), np.float32)),
                               "cnn": (b, models.signature(mnist12_like(), "m").input_name, np.zeros((1, 1, 28, 28), np.float32))}, runs=5)
    assert list(prof) == ["lin", "cnn"]
    assert {r["op"] for r in prof["cnn"]} >= {"MaxPool"} and not {r["op"] for r in prof["lin"]} & {"MaxPool", "Conv"}
    assert all(r["median_us"] >= 0 for rows in prof.values() for r in rows)
    assert [r["median_us"] for r in prof["cnn"]] == sorted((r["median_us"] for r in prof["cnn"]), reverse=True)


def test_gemm_peak_reports_both_rates():
    p = timing.gemm_peak(size=64, repeats=3)
    assert p["fp32_gmacs"] > 0 and p["u8s8_gmacs"] > 0 and p["size"] == 64
