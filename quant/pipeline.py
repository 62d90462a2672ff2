"""The toolkit's workflows as Python functions (the CLI is a thin layer over these).

    from quant.pipeline import tune_model
    doc = tune_model("mnist-12.onnx", "mnist-12-int8.onnx", config="mnist.yaml", data_dir="../shared/data/mnist")
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

from . import calib, config as config_mod, data, evaluation, models, prepare, report, testdata
from .errors import AccuracyError, UsageError
from .fsio import atomic_write_bytes, check_writable_target, sha256_bytes


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def load_config(cfg):
    return cfg if isinstance(cfg, config_mod.Config) else config_mod.load(cfg)


def load_splits(cfg, data_dir: str | None, splits=("train", "test"), log: Callable = print) -> dict[str, data.Split]:
    root = data.ensure_data_dir(data_dir, cfg.dataset.root, download=cfg.dataset.download, log=log)
    return {s: data.load_split(root, s, verify=cfg.dataset.verify_md5) for s in splits}


def test_inputs(cfg, test: data.Split):
    p = cfg.preprocessing
    return data.preprocess(test.images, cfg.scale, p.mean, p.std, p.layout)


def tune_model(input_model: str, output_model: str, config=None, data_dir: str | None = None, report_path: str | None = None,
               verbose: bool = False, log: Callable[[str], None] = print, command: str | None = None,
               dynamic_batch: bool | None = None, objective: str | None = None) -> dict:
    """Tune ``input_model`` (fp32) into an int8 model at ``output_model``; returns the report dict.

    Raises UsageError/ConfigError (2), InputError (4), AccuracyError (3).
    """
    from . import tuning  # the only neural_compressor importer; imported late (it is slow)

    t_start = time.perf_counter()
    cfg = load_config(config)
    if objective is not None:
        if objective not in ("accuracy", "performance"):
            raise UsageError(f"--objective {objective!r}: must be accuracy or performance")
        cfg.tuning.objective = objective
    # --- outputs are checked before any work, so a bad path fails in a second, not after tuning
    if Path(output_model).exists() and Path(input_model).exists() and _same_file(input_model, output_model):
        raise UsageError(f"--output_model {output_model}: is the input model; refusing to overwrite it")
    check_writable_target(output_model, "--output_model")
    json_path, md_path = report.default_report_paths(output_model, report_path or cfg.output.report)
    for p in (json_path, md_path):
        check_writable_target(p, "--report")
        if Path(input_model).exists() and p.exists() and _same_file(p, input_model):
            raise UsageError(f"--report {p}: is the input model; refusing to overwrite it")
    td_dir = testdata.default_dir(output_model)
    if cfg.output.test_data_sets and td_dir.exists() and not td_dir.is_dir():
        raise UsageError(f"--output_model {output_model}: {td_dir} (for its test data) exists and is not a folder")
    # --- inputs
    fp32 = models.load(input_model, "input model")
    models.require_fp32(fp32)
    sig = models.signature(fp32.proto, fp32.path, cfg.model.input_name, cfg.preprocessing.layout)
    models.check_output_kind(fp32.proto, sig, cfg.model.output, fp32.path)
    dynamic = bool(cfg.model.dynamic_batch if dynamic_batch is None else dynamic_batch)
    splits = load_splits(cfg, data_dir, log=log)
    cs = calib.build(cfg, splits["train"])
    log(f"[data] calibration: {cs.definition['count']} train images (seed {cs.definition['seed']}, {cs.definition['source']}), sha256 {cs.sha256[:12]}")
    x_test = test_inputs(cfg, splits["test"])
    # --- graph preparation (opset upgrade, legacy IR clean-up, dynamic batch), verified on real images
    prep = prepare.prepare(fp32.proto, sig, cfg.quantization.format, cfg.quantization.per_channel, dynamic, fp32.path)
    for step in prep.steps:
        log(f"[prepare] {step}")
    prepared_sig = models.signature(prep.model, fp32.path, sig.input_name)
    if prep.steps:
        prepare.check_same_outputs(fp32.raw, models.serialize(prep.model), x_test[:256], sig.input_name,
                                   evaluation.effective_batch(prepared_sig.fixed_batch, 64), fp32.path)
    batch = evaluation.effective_batch(prepared_sig.fixed_batch, cfg.evaluation.batch_size)
    evaluator = evaluation.Evaluator(x_test, splits["test"].labels, sig.input_name, batch)
    fp32_evaluator = evaluation.Evaluator(x_test, splits["test"].labels, sig.input_name,
                                          evaluation.effective_batch(sig.fixed_batch, cfg.evaluation.batch_size))
    loader = calib.CalibDataLoader(cs.x, cs.labels, batch_size=evaluation.effective_batch(prepared_sig.fixed_batch, 1))
    # --- tuning
    log(f"[tune] {fp32.path}: opset {fp32.opset}, input {sig.input_name} {list(sig.input_shape)}; "
        f"neural-compressor accuracy-aware tuning ({cfg.quantization.format}, {cfg.criterion[0]} {cfg.criterion[1]:g})")
    choice = None
    if cfg.tuning.objective == "performance":
        batches = [1] if prepared_sig.fixed_batch else [1, 64]
        log(f"[latency] objective performance: one INC tuning per fp32-fallback candidate, timed against fp32 at batch {batches}")
        result, choice = tuning.latency_aware(prep.model, cfg, loader, evaluator, x_test[:64], sig.input_name, batches,
                                              verbose=verbose, log=log)
        models.set_ort_hints(result.model, choice.disabled_optimizers)
    else:
        result = tuning.tune(prep.model, cfg, loader, evaluator, verbose=verbose, log=log)
    int8_bytes = models.serialize(result.model)
    # --- independent re-evaluation of both models on the full test set (fp32 = the user's file, unchanged)
    fp32_acc = fp32_evaluator(fp32.raw, fp32.path)
    int8_acc = evaluator(int8_bytes, output_model)
    kind, tol = cfg.criterion
    min_acc = fp32_acc * (1 - tol) if kind == "relative" else fp32_acc - tol
    passed = tuning.meets(cfg.criterion, fp32_acc, int8_acc)
    if not passed:  # INC accepted it but the independent re-evaluation does not: never ship it
        raise AccuracyError(f"int8 top-1 {int8_acc:.2%} vs fp32 {fp32_acc:.2%} misses the {kind} {tol:g} criterion "
                            f"(needs >= {min_acc:.2%}); no model written")
    atomic_write_bytes(output_model, int8_bytes)
    log(f"[tune] wrote {output_model} ({len(int8_bytes):,} bytes)")
    td = None
    if cfg.output.test_data_sets:
        int8_sig = models.signature(result.model, output_model, sig.input_name)
        picks = testdata.pick_indices(len(x_test), cfg.output.test_data_sets, cfg.quantization.calibration.seed)
        sets = testdata.write_sets(int8_bytes, int8_sig.input_name, int8_sig.output_name, x_test[picks], td_dir, output_model)
        td = {"folder": str(td_dir), "sets": len(sets), "test_images": [int(i) for i in picks]}
        log(f"[tune] wrote {len(sets)} test_data_set folders to {td_dir}")
    ops = models.precision_summary(result.model)
    doc = {
        "schema_version": report.SCHEMA_VERSION,
        "kind": "tune",
        "model_name": cfg.model.name,
        "passed": passed,
        "accuracy_drop": fp32_acc - int8_acc,
        "criterion": {"kind": kind, "tolerance": tol, "min_accuracy": min_acc},
        "fp32": {"path": fp32.path, "bytes": fp32.bytes, "sha256": fp32.sha256, "opset": fp32.opset, "accuracy": fp32_acc},
        "int8": {"path": str(output_model), "bytes": len(int8_bytes), "sha256": sha256_bytes(int8_bytes),
                 "opset": models.opset_of(result.model), "accuracy": int8_acc, "ops": ops},
        "evaluation": {"split": "test", "images": int(len(splits["test"].labels)), "batch_size": batch},
        "preparation": {"steps": prep.steps, "dynamic_batch": dynamic, "input_shape": [str(d) for d in prepared_sig.input_shape]},
        "calibration": cs.summary(),
        "test_data": td,
        "preprocessing": cfg.preprocessing_dict(),
        "quantization": {"format": cfg.quantization.format, "per_channel": cfg.quantization.per_channel,
                         "reduce_range": cfg.quantization.reduce_range,
                         "inc_options_pinned": tuning.pinned_options(cfg),
                         "op_types_to_keep_fp32": cfg.quantization.op_types_to_keep_fp32,
                         "nodes_to_keep_fp32": cfg.quantization.nodes_to_keep_fp32},
        "tuning": {"trials": len(result.trials) - 1, "strategy": cfg.tuning.strategy, "objective": cfg.tuning.objective,
                   "random_seed": cfg.tuning.random_seed, "max_trials": cfg.tuning.max_trials, "timeout": cfg.tuning.timeout,
                   "trial_accuracies": [t.accuracy for t in result.trials[1:]], "baseline_accuracy_inc": result.baseline_accuracy},
        "latency_aware": None if choice is None else {
            "nodes_kept_fp32": list(choice.keep_fp32), "onnxruntime_disabled_optimizers": choice.disabled_optimizers,
            "score": choice.score, "candidates": choice.table,
            "note": "timings decide; pin quantization.nodes_to_keep_fp32 to the chosen list to reproduce the model byte for byte"},
        "config": {"path": cfg.source, "sha256": cfg.sha256},
        "environment": report.environment(result.inc_version),
        "wall_seconds": time.perf_counter() - t_start,
        "command": command or shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "reports": {"json": str(json_path), "markdown": str(md_path)},
    }
    md = report.render_tune(doc)
    report.write(json_path, doc, md_path, md)
    doc["markdown"] = md
    return doc
