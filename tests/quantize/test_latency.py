"""The performance objective's search (quant/quantize/latency.py) with a fake builder and fake timings: which
candidate wins, the default's margin, failed and duplicate candidates, and the "no int8 candidate
beats fp32" verdict. (The real search runs in test_tune; its timings are too noisy to assert on.)"""

import numpy as np
import pytest

from quant.errors import AccuracyError
from quant.quantize import latency
from quant.runtime import sessions, timing


def _rounds(t, n):
    return [t] * n if np.isscalar(t) else list(np.resize(np.asarray(t, dtype=np.float64), n))


def _run(monkeypatch, times_by_candidate: dict[tuple, object], fp32: object = 100.0, fail: tuple = (), same_bytes: dict | None = None):
    """Run ``latency.search`` over plan keep=['c1'], int8=['c2', 'fc']; candidate ``keep`` takes
    ``times_by_candidate[keep]`` per run at every batch size, fp32 takes ``fp32`` (a number, or a
    sequence of per-round times repeated over the rounds)."""
    built, logs = [], []

    def build(keep):
        built.append(keep)
        if keep in fail:
            raise AccuracyError("below the criterion")
        model = (same_bytes or {}).get(keep, "+".join(keep)).encode()
        return latency.Candidate(keep, model, accuracy=0.99, result=None)

    models_by_session = {}

    def fake_session(model, threads=1):
        s = object()
        models_by_session[id(s)] = model
        return s

    def fake_time(targets, n, warmup, progress=False):
        out = {}
        for t in targets:
            if t.name == "fp32":
                out[t.name] = _rounds(fp32, n)
            else:
                keep = tuple(models_by_session[id(t.sess)].decode().split("+"))
                out[t.name] = _rounds(times_by_candidate[keep], n)
        return out

    monkeypatch.setattr(sessions, "make_session", fake_session)
    monkeypatch.setattr(timing, "time_interleaved", fake_time)
    choice = latency.search(build, ["c1"], ["c2", "fc"], latency.Timing(b"fp32", np.zeros((4, 1, 28, 28), np.float32), "x", [1, 64],
                            iterations=100), log=logs.append)
    return choice, built, logs


def test_the_default_plan_wins_unless_another_is_clearly_faster(monkeypatch):
    # c1+c2 is 2 % faster than the default: inside the margin, the default stays
    choice, built, logs = _run(monkeypatch, {("c1",): 90.0, ("c1", "c2"): 88.2, ("c1", "fc"): 95.0})
    assert built == [("c1",), ("c1", "c2"), ("c1", "fc")]
    assert choice.candidate.keep_fp32 == ("c1",) and choice.score == pytest.approx(0.9) and choice.beats_fp32
    assert [t["chosen"] for t in choice.table] == [True, False, False]
    assert choice.table[1]["latency_ratios"] == {"1": pytest.approx(0.882), "64": pytest.approx(0.882)}
    assert any(line.endswith("<- chosen") and "(default plan)" in line for line in logs)
    # 4 % faster: beyond the 3 % margin, it replaces the default
    choice, _, _ = _run(monkeypatch, {("c1",): 90.0, ("c1", "c2"): 86.0, ("c1", "fc"): 95.0})
    assert choice.candidate.keep_fp32 == ("c1", "c2") and choice.score == pytest.approx(0.86)


def test_failed_and_duplicate_candidates_are_skipped_and_all_failing_is_an_error(monkeypatch):
    choice, _, logs = _run(monkeypatch, {("c1",): 90.0, ("c1", "fc"): 80.0}, fail=(("c1", "c2"),),
                           same_bytes={("c1", "fc"): "c1"})  # keeping fc fp32 happens to give the default's bytes
    assert [t["keep_fp32"] for t in choice.table] == [["c1"]]
    assert "[latency] fp32 ['c1', 'c2']: no int8 model met the criterion" in logs
    with pytest.raises(AccuracyError, match="no candidate met the accuracy criterion"):
        _run(monkeypatch, {}, fail=(("c1",), ("c1", "c2"), ("c1", "fc")))


def test_it_says_so_when_no_candidate_beats_fp32(monkeypatch):
    choice, _, logs = _run(monkeypatch, {("c1",): 104.0, ("c1", "c2"): 103.0, ("c1", "fc"): 110.0})
    assert not choice.beats_fp32 and choice.candidate.keep_fp32 == ("c1",)  # 1 % faster is inside the margin
    assert any("no int8 candidate beats fp32 on this machine" in line for line in logs)


def test_ratios_are_paired_round_by_round(monkeypatch):
    # fp32 and the candidates run back to back in each round, under the same host load, so the
    # search compares each round's times. c1+c2 is 2.5x in fp32's quiet rounds and 0.7x, 1.0x,
    # 1.0x in its loaded ones: paired, its median round is 1.0x and the default (0.9x in every
    # round) stays; p50 / p50 would compare times from different rounds (250 / 300 = 0.83x) and
    # pick it
    load = [100.0, 100.0, 300.0, 300.0, 300.0]
    choice, _, _ = _run(monkeypatch, {("c1",): [0.9 * t for t in load],
                                      ("c1", "c2"): [250.0, 250.0, 210.0, 300.0, 300.0],
                                      ("c1", "fc"): [1.2 * t for t in load]}, fp32=load)
    assert choice.candidate.keep_fp32 == ("c1",) and choice.score == pytest.approx(0.9)
    assert choice.table[1]["latency_ratios"] == {"1": pytest.approx(1.0), "64": pytest.approx(1.0)}
