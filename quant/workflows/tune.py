"""The toolkit's workflows as Python functions (the CLI is a thin layer over these).

    from quant.workflows.tune import tune_model
    doc = tune_model("mnist-12.onnx", "mnist-12-int8.onnx", config="mnist.yaml", data_dir="../shared/data/mnist")

``tune_model`` is a sequence of named steps: check the outputs, load the fp32 model and the data,
prepare the graph (exact rewrites, checked on real images), plan which layers stay fp32, quantize
with INC (or time candidates for ``objective: performance``), finish the int8 graph, re-evaluate both
models independently, write the model and its test data, report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
from quant.runtime import evaluation
from quant.workflows import inputs, testdata

LOG = logging.getLogger("quant")


@dataclass
class _Outputs:
    model: str
    json: Path | None  # None: no reports asked for (the Python API's default)
    md: Path | None
    test_data: Path
    plot: Path | None = None  # the trials figure, unless plots are off


def _resolve_config(config, objective: str | None):
    cfg = inputs.load_config(config)
    if objective is not None:
        if objective not in ("accuracy", "performance"):
            raise UsageError(f"--objective {objective!r}: must be accuracy or performance")
        cfg = config_mod.replace(cfg, {"tuning": {"objective": objective}})  # a copy: a caller's Config is not changed
    return cfg


def _check_outputs(input_model: str, output_model: str, report_path: str | None, cfg, data_dir: str | None,
                   plots: bool = False, reports: bool = True) -> _Outputs:
    """Every output path is checked before any work, so a bad path fails in a second, not after tuning:
    writable, and distinct from every input, every other output and the test-data folder it replaces."""
    check_writable_target(output_model, "--output_model")
    json_path = md_path = plot = None
    if reports:
        json_path, md_path = report.default_report_paths(output_model, report_path or cfg.output.report)
        for p in (json_path, md_path):
            check_writable_target(p, "--report")
        plot = report.check_replaceable(check_writable_target(_plots.path_for(json_path, "trials"), "plot"), "plot") if plots else None
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
    return _Outputs(output_model, json_path, md_path, td_dir, plot)


def _load_fp32(input_model: str, cfg):
    """The fp32 model, checked, and the config completed with what the model says about itself."""
    fp32 = models.load(input_model, "input model")
    models.require_fp32(fp32)
    cfg, sig, inferred = inputs.settle_model(cfg, fp32)
    return cfg, fp32, sig, inferred


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


@dataclass
class _Quantized:
    result: object  # inc.TuneResult
    model: object  # the finished onnx.ModelProto
    steps: list[str]  # plan-dependent rewrites applied before INC
    finishing: list[str]


def inc_spec(cfg, nodes_to_keep_fp32=None):
    """What INC is given (:class:`quant.quantize.inc.IncSpec`), from the config and the precision plan's
    names (``nodes_to_keep_fp32``; default: the config's own list)."""
    from quant.quantize.inc import IncSpec

    q, t = cfg.quantization, cfg.tuning
    keep = q.nodes_to_keep_fp32 if nodes_to_keep_fp32 is None else nodes_to_keep_fp32
    return IncSpec(q.format, q.per_channel, q.reduce_range, q.kernel_aware, q.calibration.sampling_size, tuple(q.op_types_to_keep_fp32),
                   tuple(sorted(keep)), cfg.criterion, t.strategy, t.timeout, t.max_trials, t.random_seed)


def _quantize_one(prep: prepare.Prepared, keep: set[str], cfg, loader, evaluator, fp32_path: str, check: Callable,
                  verbose: bool, log) -> _Quantized:
    """The plan-dependent rewrites (checked), INC's accuracy-aware loop with ``keep`` (plan + user)
    left fp32, then the finishing touches."""
    from quant.quantize import inc  # the only neural_compressor importer; imported late (it is slow)

    by_type = {name for name, op in prep.origin.items() if op in cfg.quantization.op_types_to_keep_fp32}  # e.g. a MatMul now a Gemm
    spec = inc_spec(cfg, keep | by_type)  # the plan's names (computed here, not a user's value to check)
    model, steps = prep.model, []
    if cfg.quantization.kernel_aware:
        model, note = prepare.apply_plan(prep.model, set(spec.nodes_to_keep_fp32), fp32_path)
        if note:
            steps.append(note)
            check(model)
    finish = finalize.finish if cfg.quantization.kernel_aware else finalize.loadable

    def accuracy(candidate: bytes) -> float:
        """INC judges each candidate by the accuracy of the model that would be written: finished, so that
        every top-1 the tool prints for a model is the one its report gives."""
        proto = onnx.load_from_string(candidate)
        if models.is_quantized(proto):  # INC evaluates the fp32 model first
            candidate = models.serialize(finish(proto)[0])
        return evaluator(candidate, f"{fp32_path} (int8)")

    result = inc.tune(model, spec, loader, accuracy, verbose=verbose, log=log, name=fp32_path)
    finished, notes = finish(result.model)
    return _Quantized(result, finished, steps, notes)


def tune_model(input_model: str, output_model: str, config=None, data_dir: str | None = None, report_path: str | None = None,
               verbose: bool = False, log: Callable[[str], None] | None = None, command: str | None = None,
               dynamic_batch: bool | None = None, objective: str | None = None, plots: bool = True,
               reports: bool | None = None) -> dict:
    """Tune ``input_model`` (fp32 ONNX) into an int8 model at ``output_model`` with neural-compressor's
    accuracy-aware loop on onnxruntime; returns the report dict (its Markdown under ``"markdown"``).

    - ``config``: a YAML path, a :class:`quant.config.Config` or None (the built-in defaults, identical
      to mnist.yaml). Keys left null (layout, input name, output kind, model name) are read from the model.
    - ``data_dir``: the MNIST folder (else the config's ``dataset.root``, ``$MNIST_DIR``, the user cache).
    - ``report_path``: ``NAME.json`` for the reports (``NAME.md`` and ``NAME.trials.png`` beside it);
      ``reports``: write them even without a path (beside the model: ``<output>.report.json``). By default
      report files are written only when a path is given (here or as the config's ``output.report``).
    - ``dynamic_batch``, ``objective``: override ``model.dynamic_batch`` and ``tuning.objective``.
    - ``plots``: the trials figure beside the report (needs matplotlib).
    - ``log``: progress lines (default: the ``quant`` logger at INFO); ``verbose``: INC's own logging.
    - ``command``: the command line recorded in the report.

    Writes the int8 model and, per ``output.test_data_sets``, ``<output>_test_data/`` beside it, all
    atomically together. Raises UsageError/ConfigError (exit 2), InputError/ModelError (exit 4),
    AccuracyError (exit 3: no model met the criterion; nothing written).
    """
    t_start = time.perf_counter()
    cfg = _resolve_config(config, objective)
    log = log or LOG.info
    out = _check_outputs(input_model, output_model, report_path, cfg, data_dir, plots,
                         reports=report.wanted(reports, report_path, cfg.output.report))
    cfg, fp32, sig, inferred = _load_fp32(input_model, cfg)
    cfg, prov = inputs.preprocessing_for(cfg, False, [fp32], log)  # warns when the fp32 model documents other preprocessing
    dynamic = bool(cfg.model.dynamic_batch if dynamic_batch is None else dynamic_batch)
    # --- data: calibration images (train split) and the preprocessed test set
    splits = inputs.load_splits(cfg, data_dir, log=log)
    inputs.say_inferred(inferred, fp32.path, log)
    cs = inputs.calibration_set(cfg, splits["train"])
    log(f"[data] calibration: {cs.definition['count']} train images (seed {cs.definition['seed']}, {cs.definition['source']}), sha256 {cs.sha256[:12]}")
    x_test, labels = inputs.test_inputs(cfg, splits["test"]), splits["test"].labels
    # --- the fp32 baseline (the user's file, unchanged), before any work that depends on it
    fp32_evaluator = evaluation.Evaluator(x_test, labels, sig.input_name, evaluation.effective_batch(sig.fixed_batch, cfg.evaluation.batch_size))
    fp32_out = fp32_evaluator.outputs(fp32.raw, fp32.path)
    fp32_acc = evaluation.accuracy(fp32_out, labels)
    evaluation.require_above_chance(fp32_acc, fp32.path, cfg.preprocessing_dict(), cfg.dataset.verify_md5)
    # --- graph preparation and precision plan

    def check(model):  # a rewritten graph must give the user's fp32 outputs on real images
        rsig = models.signature(model, fp32.path, sig.input_name)
        evaluation.check_same_outputs(fp32.raw, models.serialize(model), x_test[:256], sig.input_name,
                                   evaluation.effective_batch(rsig.fixed_batch, 64), fp32.path,
                                   hint="--no_dynamic_batch or model.dynamic_batch: false keeps the fixed batch; the batch rewrite cannot "
                                        "reach a Reshape inside an If/Loop body" if dynamic and sig.fixed_batch else "")

    prep, plan = _prepare(fp32, sig, cfg, dynamic, check, log)
    prepared_sig = models.signature(prep.model, fp32.path, sig.input_name)
    batch = evaluation.effective_batch(prepared_sig.fixed_batch, cfg.evaluation.batch_size)
    evaluator = evaluation.Evaluator(x_test, labels, sig.input_name, batch)
    loader = calib.CalibDataLoader(cs.x, cs.labels, batch_size=evaluation.effective_batch(prepared_sig.fixed_batch, 1))
    # --- quantization
    log(f"[tune] {fp32.path}: opset {fp32.opset}, input {sig.input_name} {list(sig.input_shape)}; "
        f"neural-compressor accuracy-aware tuning ({cfg.quantization.format}, {cfg.criterion[0]} {cfg.criterion[1]:g})")
    choice = None
    if cfg.tuning.objective == "performance":
        choice = _latency_search(prep, plan, cfg, loader, evaluator, fp32, sig, prepared_sig, x_test, check, verbose, log)
        q = choice.candidate.result
    else:
        q = _quantize_one(prep, set(plan.keep_fp32) | plan.user_fp32, cfg, loader, evaluator, fp32.path, check, verbose, log)
    for step in q.steps:
        log(f"[prepare] {step}")
    for note in q.finishing:
        log(f"[finish] {note}")
    prep = prepare.Prepared(prep.model, prep.steps + q.steps)
    result, finished, finish_notes = q.result, q.model, q.finishing
    # the preprocessing it was calibrated for, the calibration set and this tool travel with the model
    finished = provenance.stamp(finished, cfg.preprocessing_dict(), cs.sha256)
    int8_bytes = models.serialize(finished)
    # --- independent re-evaluation of the int8 model on the full test set, against the fp32 baseline above
    int8_out = evaluator.outputs(int8_bytes, output_model)
    int8_acc = evaluation.accuracy(int8_out, labels)
    crit = Criterion.of(cfg.criterion)
    min_acc = crit.min_accuracy(fp32_acc)
    passed = crit.meets(fp32_acc, int8_acc)
    if not passed:  # INC accepted it but the independent re-evaluation does not: never ship it
        raise AccuracyError(f"int8 top-1 {int8_acc:.2%} vs fp32 {fp32_acc:.2%} misses the {crit.text()} criterion "
                            f"(needs >= {min_acc:.2%}); no model written")
    # --- outputs: model, test data and reports are staged beside their destinations and committed together
    with Outputs() as staged:
        staged.bytes(output_model, int8_bytes)
        td = _write_test_data(cfg, finished, int8_bytes, sig, x_test, out, staged)
        doc = _report_doc(cfg, fp32, sig, prep, plan, result, finished, int8_bytes, out, splits, cs, td, batch, dynamic, prepared_sig,
                          (fp32_acc, int8_acc, min_acc, passed), (evaluation.tied_top1(fp32_out), evaluation.tied_top1(int8_out)),
                          finish_notes, choice, t_start, command, prov, inferred)
        if out.plot:
            doc["plots"] = _write_plots(doc, out, staged, log)
        md = report.render_tune(doc)
        if out.json:
            report.write(out.json, doc, out.md, md, staged)
        staged.commit()
    log(f"[tune] wrote {output_model} ({len(int8_bytes):,} bytes)"
        + (f" and {td['sets']} test_data_set folders in {out.test_data}" if td else ""))
    doc["markdown"] = md
    return doc


def _latency_search(prep, plan, cfg, loader, evaluator, fp32, sig, prepared_sig, x_test, check, verbose, log):
    from quant.quantize import latency

    batches = [1] if prepared_sig.fixed_batch else [1, 64]
    log(f"[latency] objective performance: one INC tuning per candidate precision plan, timed against fp32 at batch {batches} "
        "in plain onnxruntime sessions")
    fp32_run = fp32.raw
    if prepared_sig.fixed_batch is None and sig.fixed_batch:  # time fp32 at the same batches: its dynamic-batch twin
        fp32_run = models.serialize(prepare.make_batch_dynamic(fp32.proto, sig, fp32.path)[0])

    def build(keep):
        q = _quantize_one(prep, set(keep) | plan.user_fp32, cfg, loader, evaluator, fp32.path, check, verbose, lambda m: None)
        b = models.serialize(q.model)
        return latency.Candidate(tuple(keep), b, evaluator(b), q)

    return latency.search(build, list(plan.keep_fp32), list(plan.int8), fp32_run, x_test[:64], sig.input_name, batches, log=log,
                          threads=cfg.benchmark.threads)


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


def _report_doc(cfg, fp32, sig, prep, plan, result, finished, int8_bytes, out, splits, cs, td, batch, dynamic, prepared_sig,
                accs, ties, finish_notes, choice, t_start, command, prov, inferred) -> dict:
    from quant.quantize import inc

    spec = inc_spec(cfg)
    fp32_acc, int8_acc, min_acc, passed = accs
    kind, tol = cfg.criterion
    return {
        **report.envelope("tune", {"path": cfg.source, "sha256": cfg.sha256}, cfg.preprocessing_dict(), prov, inferred, command, result.inc_version),
        "model_name": cfg.model.name,
        "passed": passed,
        "accuracy_drop": fp32_acc - int8_acc,
        "criterion": {"kind": kind, "tolerance": tol, "min_accuracy": min_acc},
        "fp32": {**fp32.describe(), "accuracy": fp32_acc, "tied_top1_images": ties[0]},
        "int8": {"path": str(out.model), "bytes": len(int8_bytes), "sha256": sha256_bytes(int8_bytes),
                 "opset": models.opset_of(finished), "accuracy": int8_acc, "tied_top1_images": ties[1],
                 "ops": models.precision_summary(evaluation.onnxruntime_graph(int8_bytes, str(out.model))),
                 "ops_source": "the graph onnxruntime executes (after fusing QuantizeLinear/DequantizeLinear groups into int8 kernels)"},
        "evaluation": {"split": "test", "images": int(len(splits["test"].labels)), "batch_size": batch,
                       "tie_rule": "argmax (first maximum); tied_top1_images counts images whose two largest outputs are equal"},
        "preparation": {"steps": prep.steps, "dynamic_batch": dynamic, "input_shape": [str(d) for d in prepared_sig.input_shape]},
        "precision_plan": plan.summary() if cfg.quantization.kernel_aware or plan.keep_fp32 else None,
        "finishing": finish_notes,
        "calibration": cs.summary(),
        "test_data": td,
        "metadata": {printable(p.key, 200): printable(p.value, 1000) for p in finished.metadata_props},
        "quantization": {"format": cfg.quantization.format, "per_channel": cfg.quantization.per_channel,
                         "reduce_range": cfg.quantization.reduce_range, "kernel_aware": cfg.quantization.kernel_aware,
                         "inc_options_pinned": inc.pinned_options(spec), "inc_recipes": inc.recipes(spec),
                         "op_types_to_keep_fp32": cfg.quantization.op_types_to_keep_fp32,
                         "nodes_to_keep_fp32": cfg.quantization.nodes_to_keep_fp32},
        "tuning": {"trials": len(result.trials) - 1, "strategy": cfg.tuning.strategy, "objective": cfg.tuning.objective,
                   "random_seed": cfg.tuning.random_seed, "max_trials": cfg.tuning.max_trials, "timeout": cfg.tuning.timeout,
                   "trial_accuracies": [t.accuracy for t in result.trials[1:]], "baseline_accuracy_inc": result.baseline_accuracy,
                   "per_trial": [{"trial": t.index, "accuracy": t.accuracy, "fp32_layers": t.fp32_layers, "int8_layers": t.int8_layers}
                                 for t in result.trials]},  # trial 0: the fp32 model INC evaluates first
        "latency_aware": None if choice is None else {
            "nodes_kept_fp32": list(choice.candidate.keep_fp32), "score": choice.score, "beats_fp32": choice.beats_fp32,
            "candidates": choice.table, "ratio": choice.ratio,
            "note": "timings decide; pin quantization.nodes_to_keep_fp32 to the chosen list to reproduce the model byte for byte"},
        "wall_seconds": time.perf_counter() - t_start,
        "reports": {"json": str(out.json), "markdown": str(out.md)} if out.json else None,
    }
