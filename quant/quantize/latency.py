"""``tuning.objective: performance``: a timed search over int8 candidates that are all fast in stock
onnxruntime (no session hints exist any more): the default precision plan, and the plan with each of
its int8 compute layers kept fp32 in turn. Each candidate is built by the caller (rewrites, INC's
accuracy-aware loop, finishing touches) and timed against fp32 interleaved in plain sessions; a
candidate's ratio at a batch size is the median over the rounds of its time / fp32's time in the same
round (paired, as the benchmark's stretch ratios are: both ran back to back under the same host load).

The default candidate wins unless another is faster by more than :data:`MARGIN`, so the search never
writes a model slower than the default one; when no candidate beats fp32 here it says so.
Timings decide, so another machine may choose differently; the report records the choice and pinning
``quantization.nodes_to_keep_fp32`` to it reproduces the model byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from quant.errors import AccuracyError
from quant.runtime import sessions, timing

MARGIN = 0.03  # another candidate must be > 3 % faster (geometric mean over batch sizes) to replace the default
RATIO = ("paired: per batch size, the median over the interleaved rounds of the candidate's time / fp32's time in the "
         "same round; score: their geometric mean over the batch sizes")


@dataclass
class Candidate:
    keep_fp32: tuple[str, ...]  # layers kept fp32 on top of the user's list
    model: bytes
    accuracy: float
    result: object  # what the builder returned (inc.TuneResult)


@dataclass
class Choice:
    candidate: Candidate
    score: float  # geometric mean over the batch sizes of the paired int8 / fp32 latency ratio
    beats_fp32: bool
    table: list[dict]
    ratio: str = RATIO  # how the candidates were scored (recorded in the report)


def candidate_sets(plan_keep: list[str], plan_int8: list[str]) -> list[tuple[str, ...]]:
    base = tuple(plan_keep)
    return [base] + [base + (name,) for name in plan_int8]


@dataclass(frozen=True)
class Timing:
    """How the candidates are timed against fp32: ``x`` (resized to each batch size) fed to ``input_name``,
    about ``iterations`` images per batch size, sessions with ``threads`` threads."""

    fp32_model: bytes
    x: np.ndarray
    input_name: str
    batches: list[int]
    iterations: int = 1500
    threads: int = 1


def search(build: Callable[[tuple[str, ...]], Candidate], plan_keep: list[str], plan_int8: list[str], timed: Timing,
           log: Callable[[str], None] = print) -> Choice:
    """Build every candidate (:func:`candidate_sets`), time those that met the criterion and are distinct against
    fp32, and choose (:data:`MARGIN`); AccuracyError when none met the criterion."""
    cands: list[Candidate] = []
    seen = set()
    for keep in candidate_sets(plan_keep, plan_int8):
        try:
            c = build(keep)
        except AccuracyError:
            log(f"[latency] fp32 {list(keep) or 'none'}: no int8 model met the criterion")
            continue
        if c.model in seen:
            continue
        seen.add(c.model)
        cands.append(c)
        log(f"[latency] fp32 {list(keep) or 'none'}: int8 top-1 {c.accuracy:.2%}")
    if not cands:
        raise AccuracyError("objective performance: no candidate met the accuracy criterion")
    ratios: dict[int, list[float]] = {i: [] for i in range(len(cands))}
    batches, threads = timed.batches, timed.threads
    for bs in batches:
        xb = np.resize(timed.x, (bs, *timed.x.shape[1:])).astype(np.float32)
        targets = [timing.Timed("fp32", sessions.make_session(timed.fp32_model, threads), timing.feed(timed.input_name, xb), bs, 1)]
        for i, c in enumerate(cands):
            targets.append(timing.Timed(str(i), sessions.make_session(c.model, threads), timing.feed(timed.input_name, xb), bs, 1))
        n = max(50, timed.iterations // bs)
        times = timing.time_interleaved(targets, n, max(10, n // 10), progress=False)
        for i in range(len(cands)):  # median of the per-round ratios: one stretch of the whole run
            ratios[i].append(timing.block_ratios(times[str(i)], times["fp32"], blocks=1)[0])
    table = []
    for i, c in enumerate(cands):
        rs = ratios[i]
        table.append({"keep_fp32": list(c.keep_fp32), "latency_ratios": dict(zip(map(str, batches), rs)),
                      "score": float(np.exp(np.mean(np.log(rs)))), "accuracy": c.accuracy,
                      "default": tuple(c.keep_fp32) == tuple(plan_keep)})
    best = min(range(len(table)), key=lambda i: table[i]["score"])
    default = next((i for i, t in enumerate(table) if t["default"]), None)
    pick = best if default is None or table[best]["score"] < table[default]["score"] * (1 - MARGIN) else default
    for i, t in enumerate(table):
        t["chosen"] = i == pick
        log(f"[latency] fp32 {t['keep_fp32'] or 'none'}{' (default plan)' if t['default'] else ''}: int8/fp32 (paired) "
            + ", ".join(f"batch {b} {r:.2f}x" for b, r in t["latency_ratios"].items()) + (" <- chosen" if t["chosen"] else ""))
    beats = table[pick]["score"] < 1.0
    if not beats:
        log("[latency] no int8 candidate beats fp32 on this machine; writing the chosen int8 model anyway (smaller; "
            "see the report's latency table)")
    return Choice(cands[pick], table[pick]["score"], beats, table)
