import json

import numpy as np
import pytest
from conftest import run_cli, synth_config
from helpers import api_options, mnist12_like, pattern_linear, save

from quant.config import criterion
from quant.errors import AccuracyError, UsageError
from quant.graph import models, prepare
from quant.workflows import benchmark


def test_accuracy_stats_confusion_agreement_diff():
    labels = np.array([0, 1, 2, 2])
    out = np.eye(10, dtype=np.float32)[[0, 1, 1, 2]]
    base = np.eye(10, dtype=np.float32)[[0, 1, 2, 2]]
    s = benchmark.accuracy_stats(out, labels, base)
    assert s["top1"] == 0.75 and s["per_class"][:3] == [1.0, 1.0, 0.5] and s["per_class"][5] is None
    cm = np.array(s["confusion_matrix"])
    assert cm[2, 1] == 1 and cm[2, 2] == 1 and cm.sum() == 4
    assert s["agreement_with_baseline"] == 0.75
    assert s["output_abs_diff"] == {"mean": pytest.approx(2 / 40), "max": 1.0}


@pytest.mark.parametrize("crit,base,flag,budget", [(("relative", 0.01), 0.98, None, 0.0098), (("absolute", 0.02), 0.98, None, 0.02),
                                                   (("relative", 0.01), 0.98, 0.001, 0.001)])
def test_budget(crit, base, flag, budget):
    assert criterion.budget(crit, base, flag) == pytest.approx(budget)


def test_gate_logic_and_verdict():
    g = criterion.gate(0.9890, 0.9880, 0.001)
    assert g["passed"] and "GATE PASSED" in g["verdict"] and "margin 0.00 pp" in g["verdict"]
    g = criterion.gate(0.9890, 0.5452, 0.00989)
    assert not g["passed"] and "exceeds budget 0.99 pp by 43.39 pp" in g["verdict"]
    assert criterion.gate(0.5, 0.6, 0.0)["passed"]  # improvements always pass


@pytest.mark.parametrize("kind,tol,base,acc", [("relative", 0.01, 0.9890, 0.9791), ("relative", 0.01, 0.9890, 0.9792),
                                               ("absolute", 0.02, 0.98, 0.96), ("absolute", 0.02, 0.98, 0.9599)])
def test_tuning_and_the_gate_apply_one_criterion(kind, tol, base, acc):
    c = criterion.Criterion(kind, tol)
    assert c.meets(base, acc) == criterion.gate(base, acc, c.budget(base))["passed"] == (acc >= c.min_accuracy(base) - 1e-12)


def _bench(tmp_path, synth_dir, inputs, baseline=None, **kw):
    cfg = synth_config(tmp_path, {"preprocessing": {"layout": kw.pop("layout", "NCHW")}})
    return benchmark.benchmark_models([str(p) for p in inputs], str(baseline) if baseline else None, config=cfg, data_dir=str(synth_dir),
                                      log=lambda m: None, **api_options(benchmark.BenchmarkOptions, {"report_path": str(tmp_path / "rep.json"), **kw}))


def test_report_schema_performance_and_accuracy(tmp_path, synth_dir):
    a = save(mnist12_like(seed=1), tmp_path / "a.onnx")
    b = save(mnist12_like(seed=2), tmp_path / "b.onnx")
    doc = _bench(tmp_path, synth_dir, [a], b, mode="all", iterations=20, warmup=2, max_accuracy_drop=0.99, plots=False)
    rep = json.loads((tmp_path / "rep.json").read_text())
    for key in ("path", "bytes", "accuracy", "throughput_per_s"):
        assert key in rep["model"] and key in rep["baseline"]
    for key in ("mean", "p50", "p90", "p99"):
        assert rep["model"]["latency_ms"][key] > 0 and rep["baseline"]["latency_ms"][key] > 0
    assert rep["schema_version"] == 1 and rep["gate"]["max_accuracy_drop"] == 0.99 and rep["gate"]["passed"] is True
    assert rep["accuracy_drop"] == pytest.approx(rep["baseline"]["accuracy"] - rep["model"]["accuracy"])
    assert rep["latency_ratio"] == pytest.approx(rep["model"]["latency_ms"]["p50"] / rep["baseline"]["latency_ms"]["p50"])
    assert rep["throughput_ratio"] == pytest.approx(rep["model"]["throughput_per_s"] / rep["baseline"]["throughput_per_s"])
    assert rep["model"]["latency_ms"]["n"] == 20 and rep["timing"]["threads"] == 1
    assert set(rep["environment"]["cpu"]["int8_flags"]) >= {"avx2", "avx512_vnni"}
    assert "| top-1 (10k test images) |" in doc["markdown"] and (tmp_path / "rep.md").exists()


def test_fixed_batch_model_runs_image_by_image(tmp_path, synth_dir):
    fixed = save(mnist12_like(batch=1), tmp_path / "f.onnx")
    dyn = save(mnist12_like(batch="N"), tmp_path / "d.onnx")
    doc = _bench(tmp_path, synth_dir, [fixed], dyn, mode="performance", batch_size=8, iterations=5, warmup=1, plots=False)
    assert doc["model"]["image_by_image"] is True and doc["baseline"]["image_by_image"] is False
    assert "fixed batch 1: run image by image" in doc["markdown"]


def test_gate_failure_raises_exit_3_and_still_reports(tmp_path, synth_dir):
    good = save(pattern_linear("N", "flat"), tmp_path / "good.onnx")
    bad_model = pattern_linear("N", "flat")
    bad_model.graph.initializer[0].raw_data = np.zeros((784, 10), np.float32).tobytes()
    bad = save(bad_model, tmp_path / "bad.onnx")
    with pytest.raises(AccuracyError, match="GATE FAILED") as e:
        _bench(tmp_path, synth_dir, [bad], good, mode="accuracy", layout="flat", plots=False)
    assert e.value.exit_code == 3
    assert json.loads((tmp_path / "rep.json").read_text())["gate"]["passed"] is False


def test_usage_errors(tmp_path, synth_dir):
    a = save(mnist12_like(), tmp_path / "a.onnx")
    with pytest.raises(UsageError, match="needs --baseline_model"):
        _bench(tmp_path, synth_dir, [a], None, mode="accuracy", max_accuracy_drop=0.01)
    with pytest.raises(UsageError, match="--mode"):
        _bench(tmp_path, synth_dir, [a], None, mode="speed")
    for flag in ("batch_size", "iterations", "threads"):  # 0 is an error, not "use the default"
        with pytest.raises(UsageError, match=f"--{flag} 0: must be >= 1"):
            _bench(tmp_path, synth_dir, [a], None, **{flag: 0})


def test_plots_and_step_summary(tmp_path, synth_dir, monkeypatch):
    pytest.importorskip("matplotlib")
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    a = save(mnist12_like(), tmp_path / "a.onnx")
    doc = _bench(tmp_path, synth_dir, [a], a, mode="all", iterations=5, warmup=1)
    assert list(doc["plots"]) == ["summary", "latency", "confusion"]
    for name, png in doc["plots"].items():
        assert png == str(tmp_path / f"rep.{name}.png") and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "# Benchmark (all)" in summary.read_text() and "- plots: " in doc["markdown"]
    assert json.loads((tmp_path / "rep.json").read_text())["plots"] == doc["plots"]


def test_latency_samples_are_collected_for_every_batch_size(tmp_path, synth_dir, monkeypatch):
    """--batch_size=1,2 used to plot batch 1 only: every batch size's runs now reach the latency figure."""
    pytest.importorskip("matplotlib")
    from quant.report import plots

    seen = {}
    real = plots.latency_png

    def spy(doc, samples):
        seen.update(samples)
        return real(doc, samples)

    monkeypatch.setattr(plots, "latency_png", spy)
    a = save(mnist12_like(batch="N"), tmp_path / "a.onnx")
    b = save(mnist12_like(batch="N", seed=3), tmp_path / "b.onnx")
    doc = _bench(tmp_path, synth_dir, [a], b, mode="performance", batch_size=1, extra_batch_sizes=(2,), iterations=7, warmup=0)
    assert sorted(seen) == ["1", "2"]
    for bs, runs in seen.items():
        assert len(runs) == 2 and all(r.shape == (7,) and (r > 0).all() for r in runs)  # baseline and model, every run
        for r, e in zip(runs, plots.columns(doc)):  # in plots.columns order: the report's p50 comes from these runs
            assert e["by_batch"][bs]["latency_ms"]["p50"] == pytest.approx(np.percentile(r, 50) / 1e6)
    assert list(doc["plots"]) == ["summary", "latency"]  # performance mode: no accuracy, no confusion matrices


@pytest.mark.realdata
def test_zoo_int8_fails_the_gate_with_default_config(models_dir, mnist_dir, tmp_path):
    r = run_cli("--input_model", str(models_dir / "mnist-12-int8.onnx"), f"--baseline_model={models_dir / 'mnist-12.onnx'}",
                "--mode=accuracy", "--config=mnist.yaml", f"--data_dir={mnist_dir}", f"--report={tmp_path}/zoo.json", "--no_plots",
                script="run_benchmark.sh")
    assert r.returncode == 3, r.stderr
    assert "54.52 %" in r.stdout and "98.90 %" in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert "GATE FAILED" in last and "exceeds budget 0.99 pp by 43.39 pp" in last
    rep = json.loads((tmp_path / "zoo.json").read_text())
    assert rep["model"]["accuracy"] == pytest.approx(0.5452, abs=1e-4) and rep["gate"]["passed"] is False


@pytest.mark.realdata
def test_our_int8_passes_the_gate_and_performance_mode(tuned_mnist12, models_dir, mnist_dir, tmp_path):
    out, _ = tuned_mnist12
    r = run_cli(f"--input_model={out}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", "--mode=accuracy", "--config=mnist.yaml",
                f"--data_dir={mnist_dir}", f"--report={tmp_path}/ours.json", "--no_plots", script="run_benchmark.sh")
    assert r.returncode == 0, r.stderr
    assert "GATE PASSED" in r.stderr.strip().splitlines()[-1]
    r = run_cli(f"--input_model={out}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", "--config=mnist.yaml", "--iterations=200",
                "--mode=performance", f"--data_dir={mnist_dir}", f"--report={tmp_path}/perf.json", "--no_plots", script="run_benchmark.sh")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "perf.json").read_text())
    assert rep["mode"] == "performance" and rep["model"]["latency_ms"]["n"] == 200 and rep["latency_ratio"] > 0


def test_several_batch_sizes_and_dynamic_batch_rewrite(tmp_path, synth_dir):
    fixed = save(mnist12_like(batch=1), tmp_path / "fixed.onnx")
    cfg = synth_config(tmp_path)
    r = run_cli("benchmark", f"--input_model={fixed}", f"--baseline_model={fixed}", f"--config={cfg}", f"--data_dir={synth_dir}",
                "--batch_size=1,8", "--iterations=20", "--warmup=2", "--dynamic_batch", "--no_plots", "--profile", f"--report={tmp_path / 'b.json'}")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "b.json").read_text())
    assert set(doc["model"]["by_batch"]) == {"1", "8"} and doc["timing"]["extra_batch_sizes"] == [8]
    assert not doc["model"]["by_batch"]["8"]["image_by_image"] and "batch dimension 1 -> N" in doc["model"]["rewritten"]
    assert "throughput ratio, batch 8" in r.stdout and "batch rewrite (--dynamic_batch)" in r.stdout
    prof = doc["model"]["profile"]["8"]
    assert {p["op"] for p in prof} >= {"MaxPool"} and all(p["median_us"] >= 0 for p in prof) and "Per-op profile" in r.stdout
    assert "x the baseline's" in r.stdout and "taken between the timed rounds, the models round-robin" in r.stdout  # same rounds, same phases
    assert all(len(doc["model"]["by_batch"][bs]["latency_ratio_blocks"]) == 5 for bs in ("1", "8"))  # 20 rounds, 5 stretches
    assert r.stdout.count("| paired ratio, batch ") == 2
    no_rewrite = run_cli("benchmark", f"--input_model={fixed}", f"--config={cfg}", f"--data_dir={synth_dir}", "--batch_size=1,8",
                         "--iterations=5", "--warmup=0", "--no_plots", f"--report={tmp_path / 'c.json'}")
    assert no_rewrite.returncode == 0 and json.loads((tmp_path / "c.json").read_text())["model"]["by_batch"]["8"]["image_by_image"]
    for bad, words in (("--batch_size=1,x", "expected an integer or comma-separated integers"), ("--batch_size=1,0", "--batch_size 0: must be >= 1")):
        e = run_cli("benchmark", f"--input_model={fixed}", f"--config={cfg}", f"--data_dir={synth_dir}", bad, f"--report={tmp_path / 'd.json'}")
        assert e.returncode == 2 and words in e.stderr and not (tmp_path / "d.json").exists()


@pytest.mark.parametrize("flags,overrides,words", [
    (["--threads=1000"], {}, "--threads 1000: must be <= 256"),
    (["--iterations=1000000000000"], {}, "--iterations 1000000000000: must be <= 1000000"),
    (["--warmup=1000000000000"], {}, "--warmup 1000000000000: must be <= 10000"),
    (["--batch_size=100000000", "--dynamic_batch"], {}, "--batch_size 100000000: must be <= 10000"),
    (["--batch_size=1,100000000", "--dynamic_batch"], {}, "--batch_size 100000000: must be <= 10000"),
    (["--max_accuracy_drop=nan", "--mode=accuracy"], {}, "--max_accuracy_drop nan: must be a finite number"),
    (["--max_accuracy_drop=inf", "--mode=accuracy"], {}, "--max_accuracy_drop inf: must be < 1"),
    (["--threads=1e3"], {}, "argument --threads: invalid int value: '1e3'"),
    ([], {"benchmark": {"iterations": 10**12}}, "synth.yaml: benchmark.iterations: must be <= 1000000, got 1000000000000"),
    ([], {"benchmark": {"threads": 1000}}, "synth.yaml: benchmark.threads: must be <= 256, got 1000"),
    (["--batch_size=64,64", "--dynamic_batch"], {}, "--batch_size 64,64: give each batch size once"),
    (["--iterations=1000000", "--batch_size=1,64", "--dynamic_batch"], {}, "65,006,500 images per model, over the 20,000,000 limit"),
])
def test_unbounded_numbers_are_refused_before_any_work(tmp_path, synth_dir, flags, overrides, words):
    """Each of these used to hang, exhaust memory or overload the machine (issue 13): now exit 2, one
    line naming the flag or the config key, nothing written."""
    m = save(mnist12_like(batch=1), tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("benchmark", f"--input_model={m}", f"--baseline_model={m}", f"--config={synth_config(tmp_path, overrides)}",
                f"--data_dir={synth_dir}", f"--report={out / 'b.json'}", *flags, timeout=60)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    assert not list(out.iterdir())


def test_a_step_summary_that_is_no_regular_file_is_skipped(tmp_path, synth_dir, monkeypatch):
    """$GITHUB_STEP_SUMMARY pointing at a FIFO hung the run after its outputs were written; a folder gave exit 5."""
    import os

    os.mkfifo(tmp_path / "fifo")
    a = save(mnist12_like(), tmp_path / "a.onnx")
    for target in (tmp_path / "fifo", tmp_path):
        logs = []
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
        doc = benchmark.benchmark_models([str(a)], None, config=synth_config(tmp_path), data_dir=str(synth_dir), log=logs.append,
                                         **api_options(benchmark.BenchmarkOptions, {"mode": "performance", "iterations": 3, "warmup": 0,
                                                                                    "report_path": str(tmp_path / "b.json"), "plots": False}))
        assert doc["reports"]["json"] and any("not a writable regular file; summary not appended" in m for m in logs)


def test_paired_ratios_and_profiles_of_a_fixed_batch_baseline(tmp_path, synth_dir, monkeypatch):
    """Without --dynamic_batch a fixed-batch baseline runs batch 8 as 8 calls: its timed unit and its
    profile round both cover the 8 calls, so its kernel sum compares with the dynamic model's. The
    ratio rows come from the timed rounds, paired round by round."""
    from quant.runtime import timing

    fixed = save(mnist12_like(batch=1), tmp_path / "fixed.onnx")
    dyn, _ = prepare.make_batch_dynamic(mnist12_like(), models.signature(mnist12_like(), "m"))
    model = save(dyn, tmp_path / "dyn.onnx")
    seen = {}

    def fake_time(targets, iterations, warmup, progress=True, between=None):
        seen.setdefault("timed", []).append({t.name: (t.per_call_images, t.calls) for t in targets})
        for i in range(iterations):
            seen.setdefault("order", []).append("t")
            if between and between(i) and i + 1 < iterations:  # a side job ran: re-warm before the next timed round
                seen.setdefault("rewarm", []).append(i)
        base = np.resize([1000, 3000], iterations)  # load that comes and goes between rounds
        return {t.name: base * (0.5 if t.name == "model" else 1) for t in targets}

    class SpyProfiler(timing.OpProfiler):
        def __init__(self, targets, threads=1):
            seen.setdefault("profiled", []).append({k: (v[2].shape[0], v[3]) for k, v in targets.items()})
            super().__init__(targets, threads)

        def warmup(self):
            seen.setdefault("order", []).append("w")
            super().warmup()

        def round(self):
            seen.setdefault("order", []).append("P")
            super().round()

        def results(self):
            out = super().results()
            if self.targets["model"][2].shape[0] == 8:  # as if onnxruntime's 1,000,000-event cap cut the last 2 rounds
                self.recorded["model"] = 2
            return out

    monkeypatch.setattr(timing, "time_interleaved", fake_time)
    monkeypatch.setattr(timing, "OpProfiler", SpyProfiler)
    monkeypatch.setattr(benchmark, "PROFILE_RUNS", 4)
    doc = _bench(tmp_path, synth_dir, [model], fixed, mode="performance", batch_size=1, extra_batch_sizes=(8,), iterations=20,
                 warmup=0, profile=True, plots=False)
    assert seen["timed"] == [{"baseline": (1, 1), "model": (1, 1)}, {"baseline": (1, 8), "model": (8, 1)}]
    assert seen["profiled"] == seen["timed"]  # the profile runs what the timing ran
    # a warm-up round, then 4 profiled rounds spread evenly between the 20 timed ones, at each batch size
    assert "".join(seen["order"]) == ("w" + "tttttP" * 4) * 2
    assert doc["timing"]["profile"]["rounds"] == {"1": 4, "8": 4}
    assert doc["timing"]["gemm_peak"]["samples"] == 2 * 15  # GEMM samples spread over both batch sizes' timed rounds
    side = [i for i in range(19) if benchmark._spread(i, 4, 20) or benchmark._spread(i, 15, 20)]
    assert seen["rewarm"] == side * 2 and len(side) < 19  # exactly the rounds followed by a profiled round or a GEMM sample
    assert doc["baseline"]["profile_rounds"] == {"1": 4, "8": 4} and doc["model"]["profile_rounds"] == {"1": 4, "8": 2}
    assert "median of 4 rounds taken between the timed rounds, the models" in doc["markdown"]
    assert ("median of 2 rounds taken between the timed rounds (onnxruntime's profiler stopped recording at 1,000,000 events: "
            "the first 2 of 4 rounds, the start of the run)") in doc["markdown"]
    for bs in ("1", "8"):
        assert doc["model"]["by_batch"][bs]["latency_ratio_blocks"] == [0.5] * 5
        assert doc["model"]["by_batch"][bs]["latency_ratio"] == pytest.approx(0.5)
    assert doc["model"]["latency_ratio_blocks"] == [0.5] * 5
    assert "| paired ratio, batch 8: median per round in 5 stretches of the run (min–median–max) |  | 0.50–0.50–0.50x |" in doc["markdown"]
    assert "batch 8 (run image by image: each node's times summed over the batch's calls)" in doc["markdown"]
    few = _bench(tmp_path, synth_dir, [model], fixed, mode="performance", iterations=1, warmup=0, plots=False)
    assert few["model"]["latency_ratio_blocks"] == [0.5] and "paired ratio" not in few["markdown"]  # one round: no spread row


def test_profiled_rounds_never_exceed_what_onnxruntimes_profiler_holds(tmp_path, synth_dir, monkeypatch):
    """When fewer rounds than 200 fit under onnxruntime's 1,000,000-event cap (large batches run image
    by image), the benchmark spreads only as many as fit over the whole run, so the profile covers
    the run, not its start; at a batch size where not one round fits, no profile, and it says so."""
    from quant.runtime import timing

    class Capped(timing.OpProfiler):  # as if batch 1 held 3 rounds and batch 2 none
        def __init__(self, targets, threads=1):
            super().__init__(targets, threads)
            self.capacity = 3 if next(iter(targets.values()))[2].shape[0] == 1 else 0

    monkeypatch.setattr(timing, "OpProfiler", Capped)
    a = save(mnist12_like(seed=1), tmp_path / "a.onnx")
    logs = []
    doc = benchmark.benchmark_models([str(a)], str(a), config=synth_config(tmp_path), data_dir=str(synth_dir), log=logs.append,
                                     **api_options(benchmark.BenchmarkOptions, {"mode": "performance", "iterations": 12, "warmup": 0, "profile": True,
                                                                                "plots": False, "dynamic_batch": True, "extra_batch_sizes": (2,)}))
    assert doc["timing"]["profile"]["rounds"] == {"1": 3, "2": 0} and doc["model"]["profile_rounds"] == {"1": 3}
    assert any("batch 1: 3 profiled rounds, not 12: onnxruntime's profiler holds 1,000,000 events" in m for m in logs)
    assert any("warning: no profile at batch 2: 0 profiled rounds" in m for m in logs)
    assert "median of 3 rounds taken between the timed rounds, the models" in doc["markdown"]
    assert "stopped recording" not in doc["markdown"] and "Per-op profile of `" + str(a) + "`, batch 2" not in doc["markdown"]
    assert "Per-op profile of `" + str(a) + "`, batch 1" in doc["markdown"]
    assert "No per-op profile at batch 2: not one round of the models fits under onnxruntime's profiler cap" in doc["markdown"]
    assert "No per-op profile at batch 1" not in doc["markdown"]


@pytest.mark.parametrize("total,n", [(3000, 200), (399, 200), (20, 4), (7, 7), (5, 1), (1, 1)])
def test_spread_picks_exactly_n_rounds_evenly(total, n):
    picked = [i for i in range(total) if benchmark._spread(i, n, total)]
    assert len(picked) == n and picked[-1] == total - 1
    gaps = np.diff([-1, *picked])
    assert gaps.max() - gaps.min() <= 1  # as even as whole rounds allow


def test_each_model_records_what_was_read_from_it(tmp_path, synth_dir):
    """A run of several models records, per model, the values read from it (name, input name, output kind,
    layout) in ``models[i].inferred`` (and ``baseline.inferred``); the run's ``inferred`` stays the first model's."""
    a = save(pattern_linear("N", "flat"), tmp_path / "a.onnx")
    b = save(pattern_linear("N", "flat", softmax=True), tmp_path / "b.onnx")
    doc = _bench(tmp_path, synth_dir, [a, b], a, mode="performance", layout=None, iterations=2, warmup=0, plots=False)
    first, second = (m["inferred"] for m in doc["models"])
    assert first == doc["inferred"] and first["model.name"] == "a" and first["model.output"] == "logits"
    assert second["model.name"] == "b" and second["model.output"] == "probabilities" and second["preprocessing.layout"] == "flat"
    assert doc["baseline"]["inferred"] == first
    assert json.loads((tmp_path / "rep.json").read_text())["models"][1]["inferred"] == second
