"""The toolkit's workflows as Python functions (the CLI is a thin layer over these).

    from quant.workflows.tune import tune_model
    doc = tune_model("mnist-12.onnx", "mnist-12-int8.onnx", config="mnist.yaml", data_dir="../shared/data/mnist")

``tune_model`` is a sequence of named steps: check the outputs, load the fp32 model and the data,
measure the fp32 baseline, prepare the graph (exact rewrites, checked on real images) and plan which
layers stay fp32, quantize with INC (or time candidates for ``objective: performance``), finish the
int8 graph and re-evaluate it independently, write the model, its test data and the reports together.
A run that misses the accuracy criterion writes no model and no test data; its report (the trials)
is still returned in the error and written where a report path points.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from quant import config as config_mod
from quant import report
from quant.config.criterion import Criterion
from quant.data import calib, provenance
from quant.errors import AccuracyError, UsageError, printable
from quant.files import Outputs, check_distinct, check_writable_target, sha256_bytes
from quant.graph import finalize, models, prepare
from quant.graph import plan as plan_mod
from quant.report import plots as _plots
from quant.runtime import evaluation, sessions
from quant.workflows import inputs, testdata
from quant.workflows.options import ReportOptions

LOG = logging.getLogger("quant")
OBJECTIVES = ("accuracy", "performance")


@dataclass(frozen=True)
class TuneOptions:
    """How :func:`tune_model` tunes.

    - ``objective``: override ``tuning.objective`` (``"accuracy"``, or ``"performance"``: a latency-aware search).
    - ``dynamic_batch``: override ``model.dynamic_batch`` (a symbolic batch dimension in the int8 model).
    - ``verbose``: neural-compressor's own logging in full.
    """

    objective: str | None = None
    dynamic_batch: bool | None = None
    verbose: bool = False

    def __post_init__(self):
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise UsageError(f"--objective {self.objective!r}: must be accuracy or performance")


@dataclass
class _Outputs:
    model: str
    json: Path | None  # None: no reports asked for (the Python API's default)
    md: Path | None
    test_data: Path
    plot: Path | None = None  # the trials figure, unless plots are off
    asked: bool = False  # a report path was given (argument or config): a failed run writes its report there too


@dataclass(frozen=True)
class _Run:
    """What the run reads, settled before any quantization: the config completed from the model, the fp32
    model, the data, and the fp32 baseline measured on it."""

    cfg: object
    fp32: models.LoadedModel
    sig: object  # models.Signature of the fp32 input
    inferred: dict
    prov: dict
    splits: dict
    calib: object  # calib.CalibrationSet
    x_test: np.ndarray
    labels: np.ndarray
    dynamic: bool
    fp32_out: np.ndarray
    fp32_acc: float
    started: float  # time.perf_counter() at the start


@dataclass(frozen=True)
class _Graph:
    """The prepared graph and what quantizing it uses."""

    prep: prepare.Prepared
    plan: plan_mod.Plan
    sig: object  # the prepared graph's signature
    batch: int  # evaluation batch
    evaluator: evaluation.Evaluator
    loader: calib.CalibDataLoader
    check: Callable  # a rewritten graph must give the user's fp32 outputs on real images


@dataclass
class _Quantized:
    result: object  # inc.TuneResult
    model: object  # the finished onnx.ModelProto
    steps: list[str]  # plan-dependent rewrites applied before INC
    finishing: list[str]
    choice: object = None  # latency.Choice (objective performance)


@dataclass(frozen=True)
class _Int8:
    """The finished int8 model, stamped, and its independent re-evaluation against the fp32 baseline."""

    model: onnx.ModelProto
    raw: bytes
    outputs: np.ndarray
    accuracy: float
    min_accuracy: float
    passed: bool


def tune_model(input_model: str, output_model: str, config=None, data_dir: str | None = None, options: TuneOptions | None = None,
               report: ReportOptions | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Tune ``input_model`` (fp32 ONNX) into an int8 model at ``output_model`` with neural-compressor's
    accuracy-aware loop on onnxruntime; returns the report dict (its Markdown under ``"markdown"``).

    - ``config``: a YAML path, a :class:`quant.config.Config` or None (the built-in defaults, identical
      to mnist.yaml). Keys left null (layout, input name, output kind, model name) are read from the model.
    - ``data_dir``: the MNIST folder (else the config's ``dataset.root``, ``$MNIST_DIR``, the user cache).
    - ``options``: :class:`TuneOptions` (``objective``, ``dynamic_batch``, ``verbose``).
    - ``report``: :class:`quant.workflows.options.ReportOptions`: ``path`` (``NAME.json``; ``NAME.md`` and
      ``NAME.trials.png`` beside it), ``write`` (the reports even without a path, beside the model as
      ``<output>.report.json``), ``plots`` (the trials figure, needs matplotlib), ``command`` (recorded).
      By default report files are written only when a path is given (here or as ``output.report``).
    - ``log``: progress lines (default: the ``quant`` logger at INFO).

    Writes the int8 model and, per ``output.test_data_sets``, ``<output>_test_data/`` beside it, all
    atomically together. Raises UsageError/ConfigError (exit 2), InputError/ModelError (exit 4),
    AccuracyError (exit 3: no model met the criterion; no model or test data written; the report of the
    trials in ``details``, and written where a report path points).
    """
    options, rep, log = options or TuneOptions(), report or ReportOptions(), log or LOG.info
    started = time.perf_counter()
    cfg = _resolve_config(config, options.objective)
    out = _check_outputs(input_model, output_model, cfg, data_dir, rep)
    run = _load_run(input_model, cfg, data_dir, options.dynamic_batch, started, log)
    graph = _prepare_graph(run, log)
    try:
        q = _quantize(run, graph, options.verbose, log)
        int8 = _finish_and_evaluate(run, graph, q, output_model)
    except AccuracyError as e:
        raise _failed(e, run, graph, out, rep, log) from None
    doc = _write_outputs(run, graph, q, int8, out, rep, log)
    log(f"[tune] wrote {output_model} ({len(int8.raw):,} bytes)"
        + (f" and {doc['test_data']['sets']} test_data_set folders in {out.test_data}" if doc["test_data"] else ""))
    return doc


def _resolve_config(config, objective: str | None):
    cfg = inputs.load_config(config)
    if objective is not None:  # checked by TuneOptions
        cfg = config_mod.replace(cfg, {"tuning": {"objective": objective}})  # a copy: a caller's Config is not changed
    return cfg


def _check_outputs(input_model: str, output_model: str, cfg, data_dir: str | None, rep: ReportOptions) -> _Outputs:
    """Every output path is checked before any work, so a bad path fails in a second, not after tuning:
    writable, and distinct from every input, every other output and the test-data folder it replaces."""
    check_writable_target(output_model, "--output_model")
    json_path = md_path = plot = None
    if report.wanted(rep.write, rep.path, cfg.output.report):
        json_path, md_path = report.default_report_paths(output_model, rep.path or cfg.output.report)
        for p in (json_path, md_path):
            check_writable_target(p, "--report")
        if rep.plots:
            plot = report.check_replaceable(check_writable_target(_plots.path_for(json_path, "trials"), "plot"), "plot")
    td_dir = testdata.default_dir(output_model)
    check_distinct(reads=[("--input_model", input_model), ("--config", inputs.config_file(cfg)),
                          ("quantization.calibration.manifest", cfg.quantization.calibration.manifest),
                          *inputs.data_files(cfg, data_dir)],
                   writes=[("--output_model", output_model), ("--report (JSON)", json_path), ("--report (Markdown)", md_path),
                           *([("plot", plot)] if plot else [])],
                   replaced=[("the output model's test data folder", td_dir)] if cfg.output.test_data_sets else [])
    for p in (json_path, md_path):
        report.check_replaceable(p)
    if cfg.output.test_data_sets:
        testdata.check_replaceable(td_dir, f"--output_model {output_model}: its test data folder")
    return _Outputs(output_model, json_path, md_path, td_dir, plot, asked=bool(rep.path or cfg.output.report))


def _load_fp32(input_model: str, cfg):
    """The fp32 model, checked, and the config completed with what the model says about itself."""
    fp32 = models.load(input_model, "input model")
    models.require_fp32(fp32)
    cfg, sig, inferred = inputs.settle_model(cfg, fp32)
    return cfg, fp32, sig, inferred


def _load_run(input_model: str, cfg, data_dir: str | None, dynamic_batch: bool | None, started: float, log) -> _Run:
    """The fp32 model, the calibration images (train split) and the preprocessed test set, then the fp32
    baseline (the user's file, unchanged) before any work that depends on it."""
    cfg, fp32, sig, inferred = _load_fp32(input_model, cfg)
    cfg, prov = inputs.preprocessing_for(cfg, False, [fp32], log)  # warns when the fp32 model documents other preprocessing
    dynamic = bool(cfg.model.dynamic_batch if dynamic_batch is None else dynamic_batch)
    splits = inputs.load_splits(cfg, data_dir, log=log)
    inputs.say_inferred(inferred, fp32.path, log)
    cs = inputs.calibration_set(cfg, splits["train"])
    log(f"[data] calibration: {cs.definition['count']} train images (seed {cs.definition['seed']}, {cs.definition['source']}), sha256 {cs.sha256[:12]}")
    x_test, labels = inputs.test_inputs(cfg, splits["test"]), splits["test"].labels
    fp32_evaluator = evaluation.Evaluator(x_test, labels, sig.input_name, evaluation.effective_batch(sig.fixed_batch, cfg.evaluation.batch_size))
    fp32_out = fp32_evaluator.outputs(fp32.raw, fp32.path)
    fp32_acc = evaluation.accuracy(fp32_out, labels)
    evaluation.require_above_chance(fp32_acc, fp32.path, cfg.preprocessing_dict(), cfg.dataset.verify_md5)
    return _Run(cfg, fp32, sig, inferred, prov, splits, cs, x_test, labels, dynamic, fp32_out, fp32_acc, started)


def _checker(run: _Run) -> Callable:
    def check(model):  # a rewritten graph must give the user's fp32 outputs on real images
        rsig = models.signature(model, run.fp32.path, run.sig.input_name)
        evaluation.check_same_outputs(run.fp32.raw, models.serialize(model), run.x_test[:256], run.sig.input_name,
                                      evaluation.effective_batch(rsig.fixed_batch, 64), run.fp32.path,
                                      hint="--no_dynamic_batch or model.dynamic_batch: false keeps the fixed batch; the batch rewrite "
                                           "cannot reach a Reshape inside an If/Loop body" if run.dynamic and run.sig.fixed_batch else "")
    return check


def _prepare_graph(run: _Run, log) -> _Graph:
    """The graph preparation and precision plan, then the evaluator and calibration loader at the batch
    the prepared graph takes."""
    check = _checker(run)
    prep, plan = _prepare(run.fp32, run.sig, run.cfg, run.dynamic, check, log)
    prepared_sig = models.signature(prep.model, run.fp32.path, run.sig.input_name)
    batch = evaluation.effective_batch(prepared_sig.fixed_batch, run.cfg.evaluation.batch_size)
    evaluator = evaluation.Evaluator(run.x_test, run.labels, run.sig.input_name, batch)
    loader = calib.CalibDataLoader(run.calib.x, run.calib.labels, batch_size=evaluation.effective_batch(prepared_sig.fixed_batch, 1))
    return _Graph(prep, plan, prepared_sig, batch, evaluator, loader, check)


def _prepare(fp32, sig, cfg, dynamic: bool, check: Callable, log) -> tuple[prepare.Prepared, plan_mod.Plan]:
    """Opset, legacy IR, dynamic batch and the exact speed rewrites (checked against the user's fp32
    model on real images), then the precision plan."""
    q = cfg.quantization
    prep = prepare.prepare(fp32.proto, sig, q.format, q.per_channel, dynamic, fp32.path, rewrite=q.kernel_aware)
    for step in prep.steps:
        log(f"[prepare] {step}")
    if prep.steps:
        check(prep.model)
    plan = plan_mod.make(prep.model, kernel_rules=q.kernel_aware, seven_bit=q.reduce_range)  # its correctness rules hold either way
    for name, why in plan.keep_fp32.items():
        log(f"[plan] {name} stays fp32: {why}")
    plan.user_fp32, notes = plan_mod.user_keep(fp32.proto, prep.model, prep.absorbed, q.nodes_to_keep_fp32, q.op_types_to_keep_fp32,
                                               cfg.source)
    for note in notes:
        log(f"[plan] {note}")
    return prep, plan


def inc_spec(cfg, nodes_to_keep_fp32=None):
    """What INC is given (:class:`quant.quantize.inc.IncSpec`), from the config and the precision plan's
    names (``nodes_to_keep_fp32``; default: the config's own list)."""
    from quant.quantize.inc import IncSpec

    q, t = cfg.quantization, cfg.tuning
    keep = q.nodes_to_keep_fp32 if nodes_to_keep_fp32 is None else nodes_to_keep_fp32
    return IncSpec(q.format, q.per_channel, q.reduce_range, q.kernel_aware, q.calibration.sampling_size, tuple(q.op_types_to_keep_fp32),
                   tuple(sorted(keep)), cfg.criterion, t.strategy, t.timeout, t.max_trials, t.random_seed)


def _quantize(run: _Run, graph: _Graph, verbose: bool, log) -> _Quantized:
    """INC's accuracy-aware loop with the plan's layers left fp32 (or, for ``objective: performance``, the
    timed search over candidate plans); the steps it applied said."""
    cfg, fp32, sig = run.cfg, run.fp32, run.sig
    log(f"[tune] {fp32.path}: opset {fp32.opset}, input {sig.input_name} {list(sig.input_shape)}; "
        f"neural-compressor accuracy-aware tuning ({cfg.quantization.format}, {cfg.criterion[0]} {cfg.criterion[1]:g})")
    if cfg.tuning.objective == "performance":
        choice = _latency_search(run, graph, verbose, log)
        q = choice.candidate.result
        q.choice = choice
    else:
        q = _quantize_one(run, graph, set(graph.plan.keep_fp32) | graph.plan.user_fp32, verbose, log)
    for step in q.steps:
        log(f"[prepare] {step}")
    for note in q.finishing:
        log(f"[finish] {note}")
    return q


def _quantize_one(run: _Run, graph: _Graph, keep: set[str], verbose: bool, log) -> _Quantized:
    """The plan-dependent rewrites (checked), INC's accuracy-aware loop with ``keep`` (plan + user)
    left fp32, then the finishing touches."""
    from quant.quantize import inc  # the only neural_compressor importer; imported late (it is slow)

    cfg, fp32_path = run.cfg, run.fp32.path
    by_type = {name for name, op in graph.prep.origin.items() if op in cfg.quantization.op_types_to_keep_fp32}  # e.g. a MatMul now a Gemm
    spec = inc_spec(cfg, keep | by_type)  # the plan's names (computed here, not a user's value to check)
    model, steps = graph.prep.model, []
    if cfg.quantization.kernel_aware:
        model, note = prepare.apply_plan(graph.prep.model, set(spec.nodes_to_keep_fp32), fp32_path)
        if note:
            steps.append(note)
            graph.check(model)
    finish = finalize.finish if cfg.quantization.kernel_aware else finalize.loadable

    def accuracy(candidate: bytes) -> float:
        """INC judges each candidate by the accuracy of the model that would be written: finished, so that
        every top-1 the tool prints for a model is the one its report gives."""
        proto = onnx.load_from_string(candidate)
        if models.is_quantized(proto):  # INC evaluates the fp32 model first
            candidate = models.serialize(finish(proto)[0])
        return graph.evaluator(candidate, f"{fp32_path} (int8)")

    result = inc.tune(model, spec, graph.loader, accuracy, verbose=verbose, log=log, name=fp32_path)
    finished, notes = finish(result.model)
    return _Quantized(result, finished, steps, notes)


def _latency_search(run: _Run, graph: _Graph, verbose: bool, log):
    from quant.quantize import latency

    fp32, sig = run.fp32, run.sig
    batches = [1] if graph.sig.fixed_batch else [1, 64]
    log(f"[latency] objective performance: one INC tuning per candidate precision plan, timed against fp32 at batch {batches} "
        "in plain onnxruntime sessions")
    fp32_run = fp32.raw
    if graph.sig.fixed_batch is None and sig.fixed_batch:  # time fp32 at the same batches: its dynamic-batch twin
        fp32_run = models.serialize(prepare.make_batch_dynamic(fp32.proto, sig, fp32.path)[0])

    def build(keep):
        q = _quantize_one(run, graph, set(keep) | graph.plan.user_fp32, verbose, lambda m: None)
        b = models.serialize(q.model)
        return latency.Candidate(tuple(keep), b, graph.evaluator(b), q)

    timed = latency.Timing(fp32_run, run.x_test[:64], sig.input_name, batches, threads=run.cfg.benchmark.threads)
    return latency.search(build, list(graph.plan.keep_fp32), list(graph.plan.int8), timed, log=log)


def _finish_and_evaluate(run: _Run, graph: _Graph, q: _Quantized, output_model: str) -> _Int8:
    """The finished model stamped with its provenance (the preprocessing it was calibrated for, the calibration
    set, this tool), then re-evaluated on the full test set against the fp32 baseline: a model INC accepted
    but the independent re-evaluation does not is never shipped (AccuracyError)."""
    finished = provenance.stamp(q.model, run.cfg.preprocessing_dict(), run.calib.sha256)
    raw = models.serialize(finished)
    outputs = graph.evaluator.outputs(raw, output_model)
    acc = evaluation.accuracy(outputs, run.labels)
    crit = Criterion.of(run.cfg.criterion)
    min_acc = crit.min_accuracy(run.fp32_acc)
    if not crit.meets(run.fp32_acc, acc):
        raise AccuracyError(f"int8 top-1 {acc:.2%} vs fp32 {run.fp32_acc:.2%} misses the {crit.text()} criterion "
                            f"(needs >= {min_acc:.2%}); no model written",
                            {"per_trial": q.result.trials, "best_accuracy": acc, "inc_version": q.result.inc_version})
    return _Int8(finished, raw, outputs, acc, min_acc, True)


def _write_outputs(run: _Run, graph: _Graph, q: _Quantized, int8: _Int8, out: _Outputs, rep: ReportOptions, log) -> dict:
    """Model, test data, reports and figure, staged beside their destinations and committed together."""
    with Outputs() as staged:
        staged.bytes(out.model, int8.raw)
        td = _write_test_data(run.cfg, int8.model, int8.raw, run.sig, run.x_test, out, staged)
        doc = _report_doc(run, graph, q, int8, out, td, rep.command)
        if out.plot:
            doc["plots"] = _write_plots(doc, out, staged, log)
        md = report.render_tune(doc)
        if out.json:
            report.write(out.json, doc, out.md, md, staged)
        staged.commit()
    doc["markdown"] = md
    return doc


def _failed(e: AccuracyError, run: _Run, graph: _Graph, out: _Outputs, rep: ReportOptions, log) -> AccuracyError:
    """The error for a run that missed the criterion, carrying its report (the trials); the report files are
    written only where a report path points (never beside a model that was not written), no figure."""
    doc = _failure_doc(run, graph, e, out, rep.command)
    md = report.render_tune_failed(doc)
    if out.asked and out.json:
        report.write(out.json, doc, out.md, md)
        log(f"[tune] reports: {out.json}, {out.md}")
    doc["markdown"] = md
    return AccuracyError(e.message, doc)


def _write_test_data(cfg, finished, int8_bytes: bytes, sig, x_test, out: _Outputs, staged: Outputs) -> dict | None:
    if not cfg.output.test_data_sets:
        # an earlier run's test data beside the model it replaces would no longer match it (validate fails it): removed with the
        # commit when it holds nothing but test_data_set_N folders, else left alone
        td = Path(out.test_data)
        if td.is_dir() and not td.is_symlink() and not testdata.foreign_entries(td):
            staged.remove(td, testdata.foreign_entries)
        return None
    int8_sig = models.signature(finished, out.model, sig.input_name)
    picks = testdata.pick_indices(len(x_test), cfg.output.test_data_sets, cfg.quantization.calibration.seed)
    n = testdata.write_sets(int8_bytes, int8_sig.input_name, int8_sig.output_name, x_test[picks], staged.folder(out.test_data, testdata.foreign_entries), out.model)
    return {"folder": str(out.test_data), "sets": n, "test_images": [int(i) for i in picks]}


def _write_plots(doc: dict, out: _Outputs, staged: Outputs, log) -> dict | str:
    """The trials figure (:mod:`quant.report.plots`) staged beside the report; matplotlib is optional."""
    if not _plots.available():
        log(f"[tune] matplotlib is not installed: plots skipped ({_plots.INSTALL_HINT})")
        return _plots.SKIPPED
    staged.bytes(out.plot, _plots.trials_png(doc))
    return {"trials": str(out.plot)}


def _report_doc(run: _Run, graph: _Graph, q: _Quantized, int8: _Int8, out: _Outputs, td: dict | None, command: str | None) -> dict:
    cfg, result, choice = run.cfg, q.result, q.choice
    return {
        **report.envelope("tune", {"path": cfg.source, "sha256": cfg.sha256}, cfg.preprocessing_dict(), run.prov, run.inferred, command,
                          result.inc_version),
        "model_name": cfg.model.name,
        "passed": int8.passed,
        "accuracy_drop": run.fp32_acc - int8.accuracy,
        "criterion": {"kind": cfg.criterion[0], "tolerance": cfg.criterion[1], "min_accuracy": int8.min_accuracy},
        "fp32": {**run.fp32.describe(), "accuracy": run.fp32_acc, "tied_top1_images": evaluation.tied_top1(run.fp32_out)},
        "int8": {"path": str(out.model), "bytes": len(int8.raw), "sha256": sha256_bytes(int8.raw),
                 "opset": models.opset_of(int8.model), "accuracy": int8.accuracy, "tied_top1_images": evaluation.tied_top1(int8.outputs),
                 "ops": models.precision_summary(sessions.onnxruntime_graph(int8.raw, str(out.model))),
                 "ops_source": "the graph onnxruntime executes (after fusing QuantizeLinear/DequantizeLinear groups into int8 kernels)"},
        "evaluation": _evaluation_section(run, graph),
        "preparation": _preparation_section(run, graph, q.steps),
        "precision_plan": _plan_section(cfg, graph),
        "finishing": q.finishing,
        "calibration": run.calib.summary(),
        "test_data": td,
        "metadata": {printable(p.key, 200): printable(p.value, 1000) for p in int8.model.metadata_props},
        "quantization": _quantization_section(cfg),
        "tuning": _tuning_section(cfg, result.trials, result.baseline_accuracy),
        "latency_aware": None if choice is None else {
            "nodes_kept_fp32": list(choice.candidate.keep_fp32), "score": choice.score, "beats_fp32": choice.beats_fp32,
            "candidates": choice.table, "ratio": choice.ratio,
            "note": "timings decide; pin quantization.nodes_to_keep_fp32 to the chosen list to reproduce the model byte for byte"},
        "wall_seconds": time.perf_counter() - run.started,
        "reports": {"json": str(out.json), "markdown": str(out.md)} if out.json else None,
    }


def _failure_doc(run: _Run, graph: _Graph, e: AccuracyError, out: _Outputs, command: str | None) -> dict:
    """The report of a run that missed the criterion: no int8 model (``int8`` is None), the best int8 top-1
    and every trial neural-compressor evaluated (``details`` of the error)."""
    cfg, details = run.cfg, e.details if isinstance(e.details, dict) else {}
    trials = list(details.get("per_trial") or [])
    best = details.get("best_accuracy")
    best = None if best is None or best != best else float(best)  # None: no int8 candidate was evaluated (JSON has no NaN)
    return {
        **report.envelope("tune", {"path": cfg.source, "sha256": cfg.sha256}, cfg.preprocessing_dict(), run.prov, run.inferred, command,
                          details.get("inc_version")),
        "model_name": cfg.model.name,
        "passed": False,
        "failure": e.message,
        "accuracy_drop": None if best is None else run.fp32_acc - best,
        "criterion": {"kind": cfg.criterion[0], "tolerance": cfg.criterion[1],
                      "min_accuracy": Criterion.of(cfg.criterion).min_accuracy(run.fp32_acc)},
        "fp32": {**run.fp32.describe(), "accuracy": run.fp32_acc, "tied_top1_images": evaluation.tied_top1(run.fp32_out)},
        "int8": None,
        "best_int8_accuracy": best,
        "evaluation": _evaluation_section(run, graph),
        "preparation": _preparation_section(run, graph, []),
        "precision_plan": _plan_section(cfg, graph),
        "calibration": run.calib.summary(),
        "test_data": None,
        "quantization": _quantization_section(cfg),
        "tuning": _tuning_section(cfg, trials, trials[0].accuracy if trials else None),
        "wall_seconds": time.perf_counter() - run.started,
        "reports": {"json": str(out.json), "markdown": str(out.md)} if out.asked and out.json else None,
    }


def _evaluation_section(run: _Run, graph: _Graph) -> dict:
    return {"split": "test", "images": int(len(run.splits["test"].labels)), "batch_size": graph.batch,
            "tie_rule": "argmax (first maximum); tied_top1_images counts images whose two largest outputs are equal"}


def _preparation_section(run: _Run, graph: _Graph, steps: list[str]) -> dict:
    return {"steps": graph.prep.steps + steps, "dynamic_batch": run.dynamic, "input_shape": [str(d) for d in graph.sig.input_shape]}


def _plan_section(cfg, graph: _Graph) -> dict | None:
    return graph.plan.summary() if cfg.quantization.kernel_aware or graph.plan.keep_fp32 else None


def _quantization_section(cfg) -> dict:
    from quant.quantize import inc

    spec = inc_spec(cfg)
    q = cfg.quantization
    return {"format": q.format, "per_channel": q.per_channel, "reduce_range": q.reduce_range, "kernel_aware": q.kernel_aware,
            "inc_options_pinned": inc.pinned_options(spec), "inc_recipes": inc.recipes(spec),
            "op_types_to_keep_fp32": q.op_types_to_keep_fp32, "nodes_to_keep_fp32": q.nodes_to_keep_fp32}


def _tuning_section(cfg, trials: list, baseline_accuracy: float | None) -> dict:
    t = cfg.tuning
    return {"trials": max(len(trials) - 1, 0), "strategy": t.strategy, "objective": t.objective, "random_seed": t.random_seed,
            "max_trials": t.max_trials, "timeout": t.timeout, "trial_accuracies": [x.accuracy for x in trials[1:]],
            "baseline_accuracy_inc": baseline_accuracy,
            "per_trial": [{"trial": x.index, "accuracy": x.accuracy, "fp32_layers": x.fp32_layers, "int8_layers": x.int8_layers}
                          for x in trials]}  # trial 0: the fp32 model INC evaluates first
