"""What the benchmark's side jobs (profiled rounds, GEMM-peak samples, run between the timed rounds)
cost the timed round after them, with and without the untimed re-warm round the benchmark now runs
after each (``--rewarm=1``, as ``quant.runtime.timing.time_interleaved`` does when ``between`` returns true).

Times an fp32 and an int8 model interleaved, like ``run_benchmark.sh``, with the benchmark's own
spacing of side jobs (``benchmark.PROFILE_RUNS`` profiled rounds and ``benchmark.PEAK_SAMPLES`` GEMM
samples spread over ``--iterations``), then prints each model's p50 in the rounds right after a side
job and in the other rounds, and the paired int8 / fp32 ratio in both. Inputs are uniform [0, 1)
noise (seed 0): the timing does not depend on the pixels.

    .venv/bin/python scripts/cold_rounds.py --fp32=../shared/models/mnist-12.onnx --int8=mnist-12-int8.onnx --rewarm=0
"""

from __future__ import annotations

import argparse

import numpy as np

from quant.graph import models, prepare
from quant.runtime import sessions, timing
from quant.workflows import benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fp32", required=True)
    ap.add_argument("--int8", required=True)
    ap.add_argument("--batch_size", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--rewarm", type=int, choices=(0, 1), default=1)
    a = ap.parse_args()

    feeds, runs = {}, []
    for name, path in (("fp32", a.fp32), ("int8", a.int8)):
        lm = models.load(path)
        sig = models.signature(lm.proto, path)
        m, _ = prepare.make_batch_dynamic(lm.proto, sig, path)  # the zoo's fixed batch of 1 -> any batch
        x = np.random.default_rng(0).random((a.batch_size, *sig.input_shape[1:]), dtype=np.float32)
        feeds[name] = (models.serialize(m), sig.input_name, x, 1)
        runs.append(timing.Timed(name, sessions.plain_session(feeds[name][0], name=path), timing.feed(sig.input_name, x), a.batch_size, 1))

    n = a.iterations
    prof_n, peak_n = min(benchmark.PROFILE_RUNS, n), min(benchmark.PEAK_SAMPLES, n)
    peak = timing.GemmPeak()
    after: list[int] = []
    with timing.OpProfiler(feeds) as prof:
        prof.warmup()

        def between(i: int) -> bool:
            ran = False
            if benchmark._spread(i, prof_n, n):
                prof.round()
                ran = True
            if benchmark._spread(i, peak_n, n):
                peak.sample()
                ran = True
            if ran and i + 1 < n:
                after.append(i + 1)
            return ran and bool(a.rewarm)

        t = timing.time_interleaved(runs, n, 100, progress=False, between=between)
    cold = np.array(after, dtype=int)
    rest = np.setdiff1d(np.arange(n), cold)
    print(f"batch {a.batch_size}, {n} rounds, re-warm round after a side job: {'yes' if a.rewarm else 'no'}; "
          f"{len(cold)} rounds right after a side job, {len(rest)} others")
    for name in ("fp32", "int8"):
        v = t[name]
        c, r = np.median(v[cold]) / 1e3, np.median(v[rest]) / 1e3
        print(f"  {name}: p50 {c:.1f} us after a side job, {r:.1f} us in the others ({100 * (c / r - 1):+.0f} %)")
    ratio = t["int8"] / np.maximum(t["fp32"], 1)
    print(f"  paired int8/fp32: {np.median(ratio[cold]):.3f}x after a side job, {np.median(ratio[rest]):.3f}x in the others")


if __name__ == "__main__":
    main()
