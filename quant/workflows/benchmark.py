"""Benchmark harness: size, accuracy and latency of a model (int8) against a baseline (fp32),
measured in one run, plus the CI accuracy gate.

Latency is taken with ``time.perf_counter_ns`` around ``session.run`` in a plain onnxruntime session
(default options except the thread count), as a user's program would load the model
(:mod:`quant.runtime.timing`). Models are timed interleaved (A, B, A, B, ...) so machine drift affects all
alike. The report adds the multiply-adds per image and the machine's single-thread GEMM peak, so the
achieved rate shows the distance to the hardware floor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from quant import report as report_mod
from quant.config import check_value, criterion
from quant.errors import AccuracyError, UsageError, printable
from quant.files import Outputs, append_summary, check_distinct, check_writable_target
from quant.graph import models
from quant.report import plots as plots_mod
from quant.runtime import evaluation, timing
from quant.runtime.sessions import make_session, onnxruntime_graph
from quant.workflows import inputs
from quant.workflows.options import ReportOptions

LOG = logging.getLogger("quant")

MODES = ("performance", "accuracy", "all")
PROFILE_RUNS = 200  # profiled rounds per batch size (fewer when there are fewer timed rounds or onnxruntime's profiler holds fewer), spread evenly over the timed ones
PEAK_SAMPLES = 15  # GEMM peak samples per batch size, spread evenly over the timed rounds
RATIO_BLOCKS = 5  # the paired per-round ratio is also reported in this many consecutive stretches of the timed rounds: its spread
MAX_TIMED_IMAGES = 20_000_000  # (warmup + iterations) x the batch sizes, per model: ~7 min of mnist-12 on one core (batch 10,000 x 1,100 fits)
# (the untimed re-warm round after each profiled round or GEMM sample adds at most PROFILE_RUNS + PEAK_SAMPLES rounds per batch size)


# ---------------------------------------------------------------------------------- statistics
def confusion_matrix(pred: np.ndarray, labels: np.ndarray, k: int = 10) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels.astype(np.int64), pred.astype(np.int64)), 1)
    return cm


def accuracy_stats(outputs: np.ndarray, labels: np.ndarray, baseline_outputs: np.ndarray | None = None) -> dict:
    pred = np.argmax(outputs, axis=1)
    cm = confusion_matrix(pred, labels)
    support = cm.sum(axis=1)
    out = {"top1": float(np.mean(pred == labels)), "images": int(len(labels)),
           "per_class": [float(cm[c, c] / support[c]) if support[c] else None for c in range(10)],
           "confusion_matrix": cm.tolist()}
    if baseline_outputs is not None:
        diff = np.abs(outputs.astype(np.float64) - baseline_outputs.astype(np.float64))
        out["agreement_with_baseline"] = float(np.mean(pred == np.argmax(baseline_outputs, axis=1)))
        out["output_abs_diff"] = {"mean": float(diff.mean()), "max": float(diff.max())}
    return out


# ------------------------------------------------------------------------------------- driver
def _model_entry(lm: models.LoadedModel) -> dict:
    return {**lm.describe(),
            "size": models.size_breakdown(lm.proto, lm.bytes), "ops": models.precision_summary(onnxruntime_graph(lm.raw, lm.path)),
            "macs_per_image": timing.macs_per_image(lm.proto)}


def _spread(i: int, n: int, total: int) -> bool:
    """True after ``n`` of the rounds 0..total-1, evenly spread (the last round always among them)."""
    return (i + 1) * n // total != i * n // total


@dataclass(frozen=True)
class BenchmarkOptions:
    """What :func:`benchmark_models` measures and how.

    - ``mode``: ``"all"`` (size, accuracy, latency), ``"accuracy"`` (size, accuracy) or ``"performance"``
      (size, latency: no accuracy, so no gate).
    - ``max_accuracy_drop``: the gate's budget as a fraction (default: the config's accuracy criterion).
    - ``batch_size`` plus ``extra_batch_sizes``, ``iterations``, ``warmup``, ``threads``: the timing
      (None: the config's ``benchmark`` section).
    - ``dynamic_batch``: rewrite fixed-batch models to a symbolic batch in memory; ``profile``: onnxruntime's
      per-op kernel times; ``progress``: a progress bar on stderr.

    Each value gets its flag's range and message (UsageError, exit 2) when the options are made.
    """

    mode: str = "all"
    batch_size: int | None = None
    extra_batch_sizes: tuple[int, ...] = ()
    iterations: int | None = None
    warmup: int | None = None
    threads: int | None = None
    max_accuracy_drop: float | None = None
    dynamic_batch: bool = False
    profile: bool = False
    progress: bool = False

    def __post_init__(self):
        object.__setattr__(self, "extra_batch_sizes", tuple(self.extra_batch_sizes))
        if self.mode not in MODES:
            raise UsageError(f"--mode {self.mode!r}: must be one of {', '.join(MODES)}")
        if self.max_accuracy_drop is not None:  # a drop, like the config's criterion: [0, 1)
            check_value("tuning.accuracy_criterion", self.max_accuracy_drop, "--max_accuracy_drop")
        if self.max_accuracy_drop is not None and self.mode == "performance":  # a budget nobody checks would be a silent pass
            raise UsageError("--max_accuracy_drop needs accuracy: --mode=performance measures size and latency only; "
                             "use --mode=all (the default) or --mode=accuracy")
        for key, v in (*(("batch_size", x) for x in (self.batch_size, *self.extra_batch_sizes)), ("iterations", self.iterations),
                       ("warmup", self.warmup), ("threads", self.threads)):
            if v is not None:  # the option gets the config key's range
                check_value(f"benchmark.{key}", v, f"--{key}")

    @property
    def measures_accuracy(self) -> bool:
        return self.mode in ("accuracy", "all")

    @property
    def measures_latency(self) -> bool:
        return self.mode in ("performance", "all")


def benchmark_models(input_models: list[str], baseline_model: str | None = None, config=None, data_dir: str | None = None,
                     options: BenchmarkOptions | None = None, report: ReportOptions | None = None,
                     log: Callable[[str], None] | None = None) -> dict:
    """Measure ``input_models`` (int8) and ``baseline_model`` (fp32) side by side in one run: size,
    top-1 accuracy on the 10,000 test images, and latency in plain onnxruntime sessions, the models
    timed interleaved. Returns the report dict (its Markdown under ``"markdown"``).

    - ``options``: :class:`BenchmarkOptions` (mode, gate budget, timing, dynamic batch, profile).
    - The gate: whenever a baseline is given and accuracy is measured, every model is gated against it
      with the budget ``options.max_accuracy_drop`` (a fraction; default the config's accuracy criterion).
      Each verdict is in ``doc["models"][i]["gate"]``, the run's in ``doc["gate"]``.
    - ``config``: a YAML path, a Config, or None (the preprocessing the model documents, else the defaults).
    - ``report``: :class:`quant.workflows.options.ReportOptions`: ``path`` ``NAME.json`` (``NAME.md`` and
      figures ``NAME.<figure>.png`` beside it, with ``plots``); no report files without it (or the config's
      ``output.report``).
    - ``log``: progress lines (default: the ``quant`` logger).

    Raises AccuracyError (exit 3, the report in ``details``) when a model fails the gate,
    UsageError/ConfigError (exit 2) for bad arguments, InputError/ModelError (exit 4) for bad models.
    """
    opts, rep, log = options or BenchmarkOptions(), report or ReportOptions(), log or LOG.info
    input_models = _model_list(input_models, baseline_model, opts)
    cfg = inputs.load_config(config)
    t = _timing_settings(cfg, opts)
    out = _plan_outputs(cfg, input_models, baseline_model, data_dir, rep, opts.mode)
    run, prov, inferred = _load(cfg, config is None, input_models, baseline_model, data_dir, opts.dynamic_batch, t.threads, log)
    if opts.measures_accuracy:
        _measure_accuracy(run)
    timing_doc, samples = _measure_latency(run, t, opts.profile, opts.progress) if opts.measures_latency else (None, {})
    doc = {**report_mod.envelope("benchmark", {"path": run.cfg.source, "sha256": run.cfg.sha256}, run.cfg.preprocessing_dict(), prov,
                                 inferred, rep.command), "mode": opts.mode}
    _compare(doc, run.entries, samples, t.batch_size, timing_doc)
    if opts.measures_accuracy and doc["baseline"] is not None:  # every model under test is gated against the baseline
        _gate(doc, run.cfg, opts.max_accuracy_drop)
    doc["reports"] = {"json": str(out.json), "markdown": str(out.md)} if out.json else None
    doc["markdown"] = _write(doc, out, samples, run.entries, opts.mode, rep.plots, log)
    if doc.get("gate") and not doc["gate"]["passed"]:
        raise AccuracyError(doc["gate"]["verdict"], doc)
    return doc


@dataclass(frozen=True)
class _Timing:
    batch_size: int
    extra_batch_sizes: tuple[int, ...]
    iterations: int
    warmup: int
    threads: int


@dataclass
class _Outputs:
    json: Path | None
    md: Path | None
    plots: list  # (what, path) of the figures
    reads: list  # (what, path) of everything the run reads


@dataclass
class _Run:
    """The loaded models and what every measurement step shares; keys: "baseline", "model", "model1", ..."""

    cfg: object
    loaded: dict
    sigs: dict
    run_bytes: dict  # what runs: the file, or its dynamic-batch rewrite
    sessions: dict
    entries: dict  # key -> the report's entry for that model
    x: np.ndarray
    labels: np.ndarray
    log: Callable[[str], None]


def _model_list(input_models, baseline_model: str | None, opts: BenchmarkOptions) -> list:
    """The models under test as a list (one path may be given alone); the checks that need the model paths."""
    if not input_models:
        raise UsageError("--input_model: at least one model is required")
    if opts.max_accuracy_drop is not None and baseline_model is None:
        raise UsageError("--max_accuracy_drop needs --baseline_model (the drop is measured against it)")
    return [input_models] if isinstance(input_models, (str, os.PathLike)) else list(input_models)


def _timing_settings(cfg, opts: BenchmarkOptions) -> _Timing:
    """The options, else the config's ``benchmark`` section; their product bounded."""
    b = cfg.benchmark
    pick = lambda flag, default: default if flag is None else flag  # noqa: E731  (warmup 0 is not "unset")
    t = _Timing(pick(opts.batch_size, b.batch_size), opts.extra_batch_sizes, pick(opts.iterations, b.iterations),
                pick(opts.warmup, b.warmup), pick(opts.threads, b.threads))
    sizes = [t.batch_size, *t.extra_batch_sizes]
    if len(set(sizes)) != len(sizes):
        raise UsageError(f"--batch_size {','.join(map(str, sizes))}: give each batch size once")
    if (t.warmup + t.iterations) * sum(sizes) > MAX_TIMED_IMAGES:  # each value is in range; their product must be too
        raise UsageError(f"--iterations {t.iterations} and --warmup {t.warmup} at --batch_size {','.join(map(str, sizes))}: "
                         f"{(t.warmup + t.iterations) * sum(sizes):,} images per model, over the {MAX_TIMED_IMAGES:,} limit")
    return t


def _plan_outputs(cfg, input_models, baseline_model, data_dir, rep: ReportOptions, mode: str) -> _Outputs:
    """Where the reports and figures go (only when asked), checked against everything the run reads."""
    json_path = md_path = None
    plot_paths: list = []
    if report_mod.wanted(rep.write, rep.path, cfg.output.report):
        json_path, md_path = report_mod.default_report_paths(input_models[0], rep.path or cfg.output.report, kind="benchmark", folder=".")
        for p in (json_path, md_path):
            check_writable_target(p, "--report")
        plot_paths = [("plot", report_mod.check_replaceable(check_writable_target(p, "plot"), "plot"))
                      for p in plot_targets(json_path, mode)] if rep.plots else []
    reads = [("--input_model", m) for m in input_models] + [("--baseline_model", baseline_model), ("--config", inputs.config_file(cfg)),
                                                          *inputs.data_files(cfg, data_dir)]
    check_distinct(reads=reads, writes=[("--report (JSON)", json_path), ("--report (Markdown)", md_path), *plot_paths])
    for p in (json_path, md_path):
        report_mod.check_replaceable(p)
    return _Outputs(json_path, md_path, plot_paths, reads)


def _load(cfg, adopt_documented: bool, input_models, baseline_model, data_dir, dynamic_batch: bool, threads: int, log):
    """Load and check every model before measuring anything; the first model under test speaks for the run's
    input (layout, name) and every model must take the same. Returns ``(run, provenance, inferred)``."""
    names = ([("baseline", baseline_model)] if baseline_model else []) + [(f"model{i}" if i else "model", p) for i, p in enumerate(input_models)]
    loaded = {key: models.load(path, "baseline model" if key == "baseline" else "input model") for key, path in names}
    cfg0 = cfg
    cfg, _, inferred = inputs.settle_model(cfg, loaded["model"], others=tuple(lm for k, lm in loaded.items() if k != "model"))
    # without --config, the preprocessing the models document (metadata, zoo README); warnings either way
    cfg, prov = inputs.preprocessing_for(cfg, adopt_documented, sorted(loaded.values(), key=lambda lm: lm is loaded.get("baseline")), log)
    sigs = {key: models.signature(lm.proto, lm.path, cfg.model.input_name, cfg.preprocessing.layout) for key, lm in loaded.items()}
    splits = inputs.load_splits(cfg, data_dir, splits=("test",), log=log)
    inputs.say_inferred(inferred, loaded["model"].path, log)
    x_test, labels = inputs.test_inputs(cfg, splits["test"]), splits["test"].labels
    entries = {k: {**_model_entry(lm), "inferred": inputs.inferred_of(cfg0, lm)} for k, lm in loaded.items()}  # each model's own
    run_bytes = {k: lm.raw for k, lm in loaded.items()}
    if dynamic_batch:
        _rewrite_fixed_batches(loaded, sigs, run_bytes, entries, x_test, log)
    sessions = {k: make_session(run_bytes[k], threads, name=lm.path) for k, lm in loaded.items()}
    return _Run(cfg, loaded, sigs, run_bytes, sessions, entries, x_test, labels, log), prov, inferred


def _rewrite_fixed_batches(loaded, sigs, run_bytes, entries, x_test, log) -> None:
    """Serve fixed-batch models (the zoo's) at any batch: rewrite in memory, verify, say so."""
    from quant.graph import prepare

    for k, lm in loaded.items():
        m, note = prepare.make_batch_dynamic(lm.proto, sigs[k], lm.path)
        if note:
            run_bytes[k] = models.serialize(m)
            evaluation.check_same_outputs(lm.raw, run_bytes[k], x_test[:128], sigs[k].input_name, 64, lm.path,
                                          hint="run it without --dynamic_batch")
            sigs[k] = models.signature(m, lm.path, sigs[k].input_name)
            entries[k]["rewritten"] = note + "; outputs checked identical image by image on 128 test images"
            log(f"[benchmark] {lm.path}: {note}")


def _measure_accuracy(run: _Run) -> None:
    """Top-1 of every model on the test images, the baseline first; each entry gets its accuracy statistics."""
    outs = {}
    for k, lm in run.loaded.items():
        t0 = time.perf_counter()
        bs = evaluation.effective_batch(run.sigs[k].fixed_batch, run.cfg.evaluation.batch_size)
        outs[k] = evaluation.predict(run.sessions[k], run.x, run.sigs[k].input_name, bs, lm.path)
        run.log(f"[benchmark] accuracy {lm.path}: {100 * evaluation.accuracy(outs[k], run.labels):.2f} % ({time.perf_counter() - t0:.1f} s)")
    if "baseline" in outs:
        evaluation.require_above_chance(evaluation.accuracy(outs["baseline"], run.labels), run.loaded["baseline"].path,
                                        run.cfg.preprocessing_dict(), run.cfg.dataset.verify_md5)
    for k in run.loaded:
        run.entries[k]["accuracy_stats"] = accuracy_stats(outs[k], run.labels, outs.get("baseline") if k != "baseline" else None)
        run.entries[k]["accuracy"] = run.entries[k]["accuracy_stats"]["top1"]


def _targets(run: _Run, bs: int) -> list:
    """What one timed round runs at batch size ``bs``: each model, image by image when its batch is fixed."""
    targets = []
    for k, lm in run.loaded.items():
        per_call = evaluation.effective_batch(run.sigs[k].fixed_batch, bs)
        if bs % per_call:
            raise UsageError(f"--batch_size {bs}: {lm.path} has a fixed batch of {per_call}; use a multiple of it or --dynamic_batch")
        xb = run.x[:per_call] if per_call <= len(run.x) else np.resize(run.x, (per_call, *run.x.shape[1:]))
        targets.append(timing.Timed(k, run.sessions[k], timing.feed(run.sigs[k].input_name, xb), per_call, bs // per_call))
    return targets


def _measure_latency(run: _Run, t: _Timing, profile: bool, progress: bool) -> tuple[dict, dict]:
    """Every batch size in turn, the models interleaved; returns the report's ``timing`` section and the per-run
    samples (batch size -> model key -> ns) for the ratios and the latency figure."""
    samples: dict[str, dict[str, np.ndarray]] = {}
    profile_rounds: dict[str, int] = {}  # batch size -> profiled rounds
    peak = timing.GemmPeak(threads=t.threads)
    for pos, bs in enumerate([t.batch_size, *t.extra_batch_sizes]):
        targets = _targets(run, bs)
        samples[str(bs)] = _time_one_batch_size(run, t, bs, targets, peak, profile, progress, profile_rounds)
        for k, target in zip(run.loaded, targets):
            st = timing.latency_stats(samples[str(bs)][k])
            m = {"latency_ms": st, "throughput_per_s": bs / (st["mean"] / 1e3), "image_by_image": target.per_call_images < bs}
            if run.entries[k].get("macs_per_image"):  # achieved multiply-add rate at the median latency
                m["gmacs"] = run.entries[k]["macs_per_image"] * bs / (st["p50"] / 1e3) / 1e9
            run.entries[k].setdefault("by_batch", {})[str(bs)] = m
            if pos == 0:
                run.entries[k].update(m)
    if profile_rounds:
        run.log(f"[benchmark] onnxruntime per-op profile taken ({', '.join(f'batch {b}: {n}' for b, n in profile_rounds.items())} "
                f"rounds, between the timed rounds, models round-robin)")
    timing_doc = {"batch_size": t.batch_size, "extra_batch_sizes": list(t.extra_batch_sizes), "iterations": t.iterations,
                  "warmup": t.warmup, "threads": t.threads, "order": "interleaved round-robin: " + ", ".join(k for k in run.loaded),
                  "method": timing.METHOD + "; a model with a fixed batch smaller than batch_size is run image by image inside the timed unit",
                  "session_options": {"intra_op_num_threads": t.threads, "other_options": "onnxruntime defaults",
                                      "providers": ["CPUExecutionProvider"]},
                  "gemm_peak": peak.result()}
    if profile:
        timing_doc["profile"] = {"rounds": profile_rounds,
                                 "when": "after a warm-up round, profiled rounds (every model, round-robin) spread evenly "
                                         "between the timed rounds, outside the clock, no more than onnxruntime's profiler "
                                         "holds; each model's recorded rounds: profile_rounds"}
    pk = timing_doc["gemm_peak"]
    run.log(f"[benchmark] single-thread GEMM peak here (best of {pk['samples']} samples taken between the timed rounds): "
            f"fp32 {pk['fp32_gmacs']:.1f}, u8s8 {pk['u8s8_gmacs']:.1f} GMAC/s (medians {pk['fp32_gmacs_median']:.1f}, "
            f"{pk['u8s8_gmacs_median']:.1f})")
    return timing_doc, samples


def _time_one_batch_size(run: _Run, t: _Timing, bs: int, targets: list, peak, profile: bool, progress: bool,
                         profile_rounds: dict) -> dict:
    """The timed rounds at one batch size, with the profiled rounds and GEMM samples spread evenly between them."""
    peak_n = min(PEAK_SAMPLES, t.iterations)
    feeds = {x.name: (run.run_bytes[x.name], run.sigs[x.name].input_name, x.feed[run.sigs[x.name].input_name], x.calls) for x in targets}
    with (timing.OpProfiler(feeds, t.threads) if profile else contextlib.nullcontext()) as prof:
        # profiled rounds, spread evenly over the timed rounds: no more than onnxruntime's profiler holds
        profile_n = min(PROFILE_RUNS, t.iterations, prof.capacity) if profile else 0
        run.log(f"[benchmark] timing {len(targets)} model(s) interleaved: batch {bs}, {t.iterations} iterations after {t.warmup} "
                f"warm-up, {t.threads} thread(s)" + (f"; {profile_n} profiled rounds spread over them" if profile else ""))
        if profile and profile_n < min(PROFILE_RUNS, t.iterations):
            run.log(f"[benchmark] {'warning: no profile at ' if not profile_n else ''}batch {bs}: {profile_n} profiled rounds, "
                    f"not {min(PROFILE_RUNS, t.iterations)}: onnxruntime's profiler holds {timing.OpProfiler.MAX_EVENTS:,} events "
                    "per session")
        profiling = profile_n > 0
        if profiling:
            prof.warmup()

        def between(i: int) -> bool:  # after timed round i: profiled rounds and GEMM samples spread evenly over the run
            ran = False
            if profiling and _spread(i, profile_n, t.iterations):
                prof.round()
                ran = True
            if _spread(i, peak_n, t.iterations):
                peak.sample()
                ran = True
            return ran  # time_interleaved then re-warms every model, untimed, before the next timed round
        times = timing.time_interleaved(targets, t.iterations, t.warmup, progress=progress, between=between)
        if profile:
            profile_rounds[str(bs)] = prof.rounds  # 0: no profile at this batch size, which the report says
        if profiling:
            _keep_profile(run, bs, prof)
    return times


def _keep_profile(run: _Run, bs: int, prof) -> None:
    for k, rows in prof.results().items():
        run.entries[k].setdefault("profile", {})[str(bs)] = rows
        run.entries[k].setdefault("profile_rounds", {})[str(bs)] = prof.recorded[k]
        if prof.recorded[k] < prof.rounds:
            run.log(f"[benchmark] warning: {run.loaded[k].path}, batch {bs}: onnxruntime's profiler stopped recording at "
                    f"{timing.OpProfiler.MAX_EVENTS:,} events; its profile holds the first {prof.recorded[k]} of "
                    f"{prof.rounds} rounds (the start of the run)")


def _compare(doc: dict, entries: dict, samples: dict, batch_size: int, timing_doc: dict | None) -> None:
    """Each model against the baseline (sizes, accuracy drop, latency and throughput ratios); the report's model lists."""
    base = entries.get("baseline")
    for k, e in entries.items():
        if k == "baseline" or base is None:
            continue
        if "accuracy" in e:
            e["accuracy_drop"] = base["accuracy"] - e["accuracy"]
        if "latency_ms" in e:
            e["latency_ratio"] = e["latency_ms"]["p50"] / base["latency_ms"]["p50"]
            e["throughput_ratio"] = e["throughput_per_s"] / base["throughput_per_s"]
            for bs, m in e["by_batch"].items():
                m["latency_ratio"] = m["latency_ms"]["p50"] / base["by_batch"][bs]["latency_ms"]["p50"]
                m["latency_ratio_blocks"] = timing.block_ratios(samples[bs][k], samples[bs]["baseline"], RATIO_BLOCKS)
                m["throughput_ratio"] = m["throughput_per_s"] / base["by_batch"][bs]["throughput_per_s"]
            e["latency_ratio_blocks"] = e["by_batch"][str(batch_size)]["latency_ratio_blocks"]
        e["size_ratio"] = base["bytes"] / e["bytes"]
    doc["model"] = entries["model"]
    doc["baseline"] = base
    doc["models"] = [entries[k] for k in entries if k != "baseline"]
    for key in ("accuracy_drop", "latency_ratio", "throughput_ratio", "size_ratio"):
        if key in entries["model"]:
            doc[key] = entries["model"][key]
    if timing_doc:
        doc["timing"] = timing_doc


def _gate(doc: dict, cfg, max_accuracy_drop: float | None) -> None:
    """Every model under test against the baseline, one budget: each model's verdict and the run's."""
    base = doc["baseline"]
    source = ("--max_accuracy_drop" if max_accuracy_drop is not None
              else f"config tuning.accuracy_criterion ({cfg.criterion[0]} {cfg.criterion[1]:g})")
    budget = criterion.budget(cfg.criterion, base["accuracy"], max_accuracy_drop)
    for e in doc["models"]:
        e["gate"] = {**criterion.gate(base["accuracy"], e["accuracy"], budget), "budget_source": source}
    doc["gate"] = gate_summary(doc["models"], budget, source)


def _write(doc: dict, out: _Outputs, samples: dict, entries: dict, mode: str, plots: bool, log) -> str:
    """The reports and figures, committed together (when asked), and CI's step summary; returns the Markdown."""
    md = render(doc)
    if out.json:
        with Outputs() as staged:
            if plots:
                doc["plots"] = write_plots(out.json, doc, {bs: [t[k] for k in entries] for bs, t in samples.items()}, mode, log, staged)
                md = render(doc)
            report_mod.write(out.json, doc, out.md, md, staged)
            staged.commit()
    summary = os.environ.get("GITHUB_STEP_SUMMARY") if out.json else None
    if summary:  # CI's summary file; never a FIFO, a folder or a file this run reads or writes
        why = append_summary(summary, md + "\n", out.reads + [("--report (JSON)", out.json), ("--report (Markdown)", out.md), *out.plots])
        if why:
            log(f"[benchmark] $GITHUB_STEP_SUMMARY {summary}: {why}; summary not appended")
    return md


def gate_summary(entries: list[dict], budget: float, source: str) -> dict:
    """The run's gate: passed when every model passed its own; the verdict names each model that did not
    (with one model, that model's own verdict)."""
    failed = [e for e in entries if not e["gate"]["passed"]]
    if len(entries) == 1:
        verdict = entries[0]["gate"]["verdict"]
    elif failed:
        verdict = (f"GATE FAILED for {len(failed)} of {len(entries)} models: "
                   + "; ".join(f"{e['path']}: {e['gate']['verdict'].split(': ', 1)[1]}" for e in failed))
    else:
        verdict = f"GATE PASSED for all {len(entries)} models (budget {100 * budget:.2f} pp)"
    return {"passed": not failed, "max_accuracy_drop": budget, "accuracy_drop": max(e["gate"]["accuracy_drop"] for e in entries),
            "budget_source": source, "verdict": verdict,
            "models": [{"path": e["path"], **{k: e["gate"][k] for k in ("passed", "accuracy_drop", "verdict")}} for e in entries]}


# ------------------------------------------------------------------------------------ output
def _spread_row(cols: list[dict], blocks: list[list[float] | None], bs: int) -> list[list[str]]:
    """The row of paired per-stretch ratios (min–median–max), when the run had at least 2 stretches."""
    n = max((len(b or []) for b in blocks), default=0)
    if n < 2:
        return []
    return [[f"paired ratio, batch {bs}: median per round in {n} stretches of the run (min–median–max)",
             *[f"{min(b):.2f}–{float(np.median(b)):.2f}–{max(b):.2f}x" if b else "" for b in blocks]]]


def render(doc: dict) -> str:
    doc = report_mod.escaped(doc)
    cols = ([doc["baseline"]] if doc.get("baseline") else []) + doc["models"]
    head = ["", *[f"`{e['path']}`" + (" (baseline)" if e is doc.get("baseline") else "") for e in cols]]
    rows = _size_rows(doc, cols) + _accuracy_rows(doc, cols) + _latency_rows(doc, cols)
    if any(e.get("rewritten") for e in cols):
        rows.append(["batch rewrite (--dynamic_batch)", *["yes" if e.get("rewritten") else "" for e in cols]])
    lines = [f"# Benchmark ({doc['mode']})", "", *report_mod.warning_lines(doc), report_mod.md_table(head, rows), ""]
    return "\n".join(lines + _profile_lines(doc, cols) + _closing_lines(doc)) + "\n"


def _size_rows(doc: dict, cols: list[dict]) -> list[list[str]]:
    rows = [["file bytes", *[f"{e['bytes']:,}" for e in cols]],
            ["weight bytes", *[f"{e['size']['weight_bytes']:,}" for e in cols]],
            ["graph overhead bytes", *[f"{e['size']['graph_overhead_bytes']:,}" for e in cols]]]
    if doc.get("baseline"):
        rows.append(["size ratio (baseline / model)", *["1" if e is doc["baseline"] else f"{e['size_ratio']:.2f}x" for e in cols]])
    return rows


def _accuracy_rows(doc: dict, cols: list[dict]) -> list[list[str]]:
    if "accuracy" not in cols[0]:
        return []
    rows = [["top-1 (10k test images)", *[report_mod.pct(e["accuracy"]) for e in cols]]]
    base = doc.get("baseline")
    if base:
        rows.append(["accuracy drop", *["" if e is base else f"{100 * e['accuracy_drop']:.2f} pp" for e in cols]])
        rows.append(["top-1 agreement with baseline", *["" if e is base else report_mod.pct(e["accuracy_stats"]["agreement_with_baseline"])
                                                         for e in cols]])
        if any(e.get("gate") for e in cols):
            rows.append(["gate", *["" if e is base else ("PASSED" if e["gate"]["passed"] else "**FAILED**") for e in cols]])
        rows.append(["mean / max abs output diff", *["" if e is base else
                     f"{e['accuracy_stats']['output_abs_diff']['mean']:.3g} / {e['accuracy_stats']['output_abs_diff']['max']:.3g}" for e in cols]])
    return rows


def _latency_rows(doc: dict, cols: list[dict]) -> list[list[str]]:
    if "latency_ms" not in cols[0]:
        return []
    t, base = doc["timing"], doc.get("baseline")
    rows = [[f"p50 latency, batch {t['batch_size']} (ms)", *[f"{e['latency_ms']['p50']:.4f}" for e in cols]],
            ["mean / p90 / p99 (ms)", *[f"{e['latency_ms']['mean']:.4f} / {e['latency_ms']['p90']:.4f} / {e['latency_ms']['p99']:.4f}" for e in cols]],
            ["throughput (images/s)", *[f"{e['throughput_per_s']:,.0f}" for e in cols]]]
    if base:
        rows.append(["p50 latency ratio (model / baseline)", *["1" if e is base else f"{e['latency_ratio']:.2f}x" for e in cols]])
        rows += _spread_row(cols, [None if e is base else e.get("latency_ratio_blocks") for e in cols], t["batch_size"])
        rows.append(["throughput ratio (model / baseline)", *["1" if e is base else f"{e['throughput_ratio']:.2f}x" for e in cols]])
    for bs in t.get("extra_batch_sizes", []):
        rows += _batch_rows(cols, base, bs)
    if any(e.get("macs_per_image") for e in cols):
        peak = t.get("gemm_peak") or {}
        rows.append(["multiply-adds per image", *[f"{e.get('macs_per_image', 0):,}" for e in cols]])
        for bs in [t["batch_size"], *t.get("extra_batch_sizes", [])]:
            rows.append([f"achieved GMAC/s, batch {bs} (GEMM peak here: fp32 {peak.get('fp32_gmacs', 0):.0f}, u8s8 {peak.get('u8s8_gmacs', 0):.0f})",
                         *[f"{e['by_batch'][str(bs)].get('gmacs', 0):.1f}" for e in cols]])
    if any(x.get("image_by_image") for e in cols for x in e["by_batch"].values()):
        rows.append(["note", *["fixed batch 1: run image by image" if any(x.get("image_by_image") for x in e["by_batch"].values()) else ""
                               for e in cols]])
    return rows


def _batch_rows(cols: list[dict], base: dict | None, bs: int) -> list[list[str]]:
    """The rows of one extra batch size."""
    m = [e["by_batch"][str(bs)] for e in cols]
    rows = [[f"p50 latency, batch {bs} (ms)", *[f"{x['latency_ms']['p50']:.4f}" for x in m]],
            [f"throughput, batch {bs} (images/s)", *[f"{x['throughput_per_s']:,.0f}" for x in m]]]
    if base:
        rows.append([f"p50 latency ratio, batch {bs}", *["1" if e is base else f"{x['latency_ratio']:.2f}x" for e, x in zip(cols, m)]])
        rows += _spread_row(cols, [None if e is base else x.get("latency_ratio_blocks") for e, x in zip(cols, m)], bs)
        rows.append([f"throughput ratio, batch {bs}", *["1" if e is base else f"{x['throughput_ratio']:.2f}x" for e, x in zip(cols, m)]])
    return rows


def _profile_lines(doc: dict, cols: list[dict]) -> list[str]:
    """Each model's per-op profile per batch size, and the batch sizes no profile fitted."""
    lines: list[str] = []
    base_sums = {bs: sum(r["median_us"] for r in prof) for bs, prof in (doc.get("baseline") or {}).get("profile", {}).items()}
    prof_doc = (doc.get("timing") or {}).get("profile", {})
    for e in cols:
        for bs, prof in e.get("profile", {}).items():
            total = sum(r["median_us"] for r in prof)
            vs = f", {total / base_sums[bs]:.2f}x the baseline's" if e is not doc.get("baseline") and base_sums.get(bs) else ""
            one_by_one = " (run image by image: each node's times summed over the batch's calls)" \
                if e.get("by_batch", {}).get(bs, {}).get("image_by_image") else ""
            rounds, recorded = prof_doc.get("rounds", {}).get(bs, "?"), e.get("profile_rounds", {}).get(bs, "?")
            cut = (f" (onnxruntime's profiler stopped recording at {timing.OpProfiler.MAX_EVENTS:,} events: the first {recorded} "
                   f"of {rounds} rounds, the start of the run)") if recorded != rounds else ""
            lines += [f"Per-op profile of `{e['path']}`, batch {bs}{one_by_one} (onnxruntime profiler, median of "
                      f"{recorded} rounds taken between the timed rounds{cut}, the models round-robin; kernel sum {total:,.0f} us{vs}; "
                      "the profiler rounds to whole microseconds and adds its own cost per kernel):", "",
                      report_mod.md_table(["op (after onnxruntime's graph rewrites)", "node", "median us"],
                                          [[r["op"], f"`{r['node'][:60]}`", f"{r['median_us']:.0f}"] for r in prof]), ""]
    for bs, n in prof_doc.get("rounds", {}).items():
        if not n:
            lines += [f"No per-op profile at batch {bs}: not one round of the models fits under onnxruntime's profiler cap "
                      f"({timing.OpProfiler.MAX_EVENTS:,} events per session).", ""]
    return lines


def _closing_lines(doc: dict) -> list[str]:
    """The gate's verdicts, the timing method, the preprocessing and the machine."""
    lines: list[str] = []
    env = doc["environment"]
    if doc.get("gate"):
        if len(doc["gate"]["models"]) > 1:
            lines += [f"- `{m['path']}`: {m['verdict']}" for m in doc["gate"]["models"]] + [""]
        lines += [f"**{doc['gate']['verdict']}** — budget from {doc['gate']['budget_source']}.", ""]
    if doc.get("timing"):
        t = doc["timing"]
        lines += [f"- timing: {t['iterations']} iterations after {t['warmup']} warm-up, {t['threads']} thread(s), {t['order']}; {t['method']}"]
    flags = ", ".join(k for k, v in env["cpu"]["int8_flags"].items() if v) or "none"
    lines += [f"- preprocessing: {doc['preprocessing']}",
              *report_mod.provenance_lines(doc),
              f"- machine: {env['cpu']['model']}, {env['cpu']['cores']} cores, int8 CPU flags: {flags}",
              f"- versions: onnxruntime {env['onnxruntime']}, onnx {env['onnx']}, numpy {env['numpy']}, Python {env['python']}",
              f"- command: `{printable(doc['command'], None)}`"]
    if doc.get("plots"):
        lines.append(f"- plots: {', '.join(doc['plots'].values()) if isinstance(doc['plots'], dict) else doc['plots']}")
    return lines


PLOTS = {"performance": ("summary", "latency"), "accuracy": ("summary", "confusion"), "all": ("summary", "latency", "confusion")}


def plot_names(mode: str) -> tuple[str, ...]:
    """The figures (:mod:`quant.report.plots`) a benchmark in ``mode`` draws."""
    return PLOTS[mode]


def plot_targets(json_path: Path, mode: str = "all") -> list[Path]:
    """Where :func:`write_plots` writes: ``<report stem>.<plot>.png`` beside the JSON report."""
    return [plots_mod.path_for(json_path, name) for name in plot_names(mode)]


def write_plots(json_path: Path, doc: dict, samples: dict[str, list[np.ndarray]], mode: str, log: Callable,
                staged: Outputs) -> dict | str:
    """The benchmark figures (:mod:`quant.report.plots`) staged beside the report; matplotlib is optional.
    ``samples``: batch size -> per-run ns per model, in :func:`quant.report.plots.columns` order (baseline first)."""
    if not plots_mod.available():
        log(f"[benchmark] matplotlib is not installed: plots skipped ({plots_mod.INSTALL_HINT})")
        return plots_mod.SKIPPED
    out = {}
    for name, png in plots_mod.benchmark_figures(doc, samples, plot_names(mode)).items():
        p = plots_mod.path_for(json_path, name)
        staged.bytes(p, png)
        out[name] = str(p)
    return out
