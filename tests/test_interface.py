"""The command line's contract with its users: a gate asked for is a gate run, the model speaks first,
one accuracy, one vocabulary, one place for outputs, one stream each, a real Python API."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import onnx
import pytest
from conftest import REPO, run_cli, synth_config, write_config
from helpers import pattern_linear, save

import quant

GATE_FLAGS = ("--max_accuracy_drop=0.01",)


def _zoo_gate(models_dir, mnist_dir, *extra, cwd=None):
    return run_cli("benchmark", f"--input_model={models_dir / 'mnist-12-int8.onnx'}", f"--baseline_model={models_dir / 'mnist-12.onnx'}",
                   f"--data_dir={mnist_dir}", "--iterations=5", "--warmup=1", "--no_plots", *extra, cwd=cwd)


# ------------------------------------------------------------------------------------- the gate
@pytest.mark.realdata
def test_a_budget_without_a_mode_gates_the_zoo_int8_model(models_dir, mnist_dir, tmp_path):
    """The default mode measures accuracy, so the budget a user gives is checked: the zoo int8 (54.52 %) fails."""
    r = _zoo_gate(models_dir, mnist_dir, *GATE_FLAGS, f"--report={tmp_path / 'b.json'}")
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: GATE FAILED")
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["mode"] == "all" and doc["gate"]["passed"] is False and "latency_ms" in doc["model"]
    assert "| gate |  | **FAILED** |" in r.stdout


@pytest.mark.realdata
def test_a_budget_with_performance_mode_is_a_usage_error(models_dir, mnist_dir):
    r = _zoo_gate(models_dir, mnist_dir, *GATE_FLAGS, "--mode=performance")
    assert r.returncode == 2 and "--mode=performance measures size and latency only" in r.stderr, r.stderr
    assert r.stdout == ""


@pytest.mark.realdata
def test_performance_mode_says_it_ran_no_gate(models_dir, mnist_dir):
    r = _zoo_gate(models_dir, mnist_dir, "--mode=performance")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "no gate: --mode=performance measures no accuracy"


@pytest.mark.realdata
def test_every_model_under_test_is_gated(tuned_mnist12, models_dir, mnist_dir, tmp_path):
    """Our int8 first, the zoo's second: the second fails, so the run fails and names it."""
    ours, _ = tuned_mnist12
    zoo = models_dir / "mnist-12-int8.onnx"
    r = run_cli("benchmark", f"--input_model={ours}", f"--input_model={zoo}", f"--baseline_model={models_dir / 'mnist-12.onnx'}",
                f"--data_dir={mnist_dir}", "--mode=accuracy", f"--report={tmp_path / 'r.json'}")
    assert r.returncode == 3, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [m["gate"]["passed"] for m in doc["models"]] == [True, False]
    assert doc["gate"]["passed"] is False and [m["passed"] for m in doc["gate"]["models"]] == [True, False]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: GATE FAILED for 1 of 2 models") and str(zoo) in last and str(ours) not in last
    assert (tmp_path / "r.summary.png").is_file()  # the figure, one verdict per model (drawn, not read back here)


# ---------------------------------------------------------------------- the model speaks first
def test_a_flat_classifier_tunes_without_a_config_value_for_its_layout(tmp_path, synth_dir):
    m = save(pattern_linear(layout="flat"), tmp_path / "pixels-mlp.onnx")
    cfg = synth_config(tmp_path)
    out = tmp_path / "out" / "mlp-int8.onnx"
    r = run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={out}", f"--data_dir={synth_dir}", "--no_plots")
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if line.startswith("[model]")]
    assert len(said) == 1 and "preprocessing.layout flat" in said[0] and "model.name pixels-mlp" in said[0]
    doc = json.loads(out.with_name("mlp-int8.report.json").read_text())
    assert doc["model_name"] == "pixels-mlp" and doc["inferred"]["preprocessing.layout"] == "flat"
    assert r.stdout.startswith("# Tuning report: pixels-mlp")


def test_a_config_layout_the_model_contradicts_is_exit_2_naming_both(tmp_path, synth_dir):
    m = save(pattern_linear(layout="flat"), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path, {"preprocessing": {"layout": "NCHW"}})
    r = run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={tmp_path / 'o.onnx'}", f"--data_dir={synth_dir}")
    assert r.returncode == 2, r.stderr
    assert "preprocessing.layout is NCHW" in r.stderr and "(flat)" in r.stderr and str(cfg) in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_a_softmax_head_is_read_as_probabilities_and_a_contradicting_config_is_exit_2(tmp_path, synth_dir):
    m = save(pattern_linear(layout="NCHW", softmax=True), tmp_path / "soft.onnx")
    r = run_cli("write-test-data", f"--input_model={m}", f"--config={synth_config(tmp_path)}", f"--data_dir={synth_dir}",
                f"--output_dir={tmp_path / 'td'}", "--count=1")
    assert r.returncode == 0, r.stderr
    assert "model.output probabilities" in r.stderr
    cfg = synth_config(tmp_path, {"model": {"output": "logits"}})
    r = run_cli("write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", f"--output_dir={tmp_path / 'td2'}")
    assert r.returncode == 2 and "model.output is logits" in r.stderr and "comes from Softmax" in r.stderr, r.stderr


def test_a_config_name_is_used_and_a_default_config_carries_no_name(tmp_path, synth_dir):
    m = save(pattern_linear(layout="flat"), tmp_path / "mine.onnx")
    named = synth_config(tmp_path, {"model": {"name": "digits-v2"}})
    r = run_cli("tune", f"--input_model={m}", f"--config={named}", f"--output_model={tmp_path / 'a.onnx'}", f"--data_dir={synth_dir}",
                "--no_plots")
    assert r.returncode == 0 and r.stdout.startswith("# Tuning report: digits-v2"), r.stderr
    assert "model.name" not in next(line for line in r.stderr.splitlines() if line.startswith("[model]"))
    import yaml

    assert yaml.safe_load((REPO / "mnist.yaml").read_text())["model"]["name"] is None  # the shipped config names no model


# ------------------------------------------------------------------------------- one accuracy
@pytest.mark.realdata
def test_tuning_prints_the_accuracy_the_report_gives(tuned_mnist12):
    out, r = tuned_mnist12
    doc = json.loads(out.with_name("mnist-12-int8.report.json").read_text())
    trial = next(line for line in r.stderr.splitlines() if line.startswith("[tune] trial 1:"))
    assert f"int8 top-1 {doc['int8']['accuracy']:.2%}" in trial
    assert doc["tuning"]["trial_accuracies"][-1] == doc["int8"]["accuracy"]


# ------------------------------------------------------------------------------ one vocabulary
def _flags(command: str) -> set[str]:
    r = run_cli(command, "--help")
    assert r.returncode == 0, r.stderr
    return {w.strip("[],=").split("=")[0] for w in r.stdout.split() if w.startswith("--")}


def test_one_flag_name_per_concept_across_sub_commands():
    flags = {c: _flags(c) for c in ("tune", "benchmark", "validate", "package", "calib", "write-test-data", "check-test-data", "fetch")}
    every = set().union(*flags.values())
    assert {"--output", "--out_dir", "--no-dynamic_batch"}.isdisjoint(every)
    assert all("-" not in f[2:] for f in every), sorted(f for f in every if "-" in f[2:])
    assert "--output_model" in flags["tune"] and "--output_model" in flags["package"]
    assert "--output_dir" in flags["write-test-data"] and "--output_dir" in flags["calib"]
    assert {"--dynamic_batch", "--no_dynamic_batch"} <= flags["tune"] & flags["benchmark"]
    assert all("--json" in flags[c] for c in ("tune", "benchmark", "validate", "package", "check-test-data"))


def test_old_spellings_still_work_with_one_deprecation_line(tmp_path, synth_dir):
    m = save(pattern_linear(layout="NCHW", batch=1), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path)
    r = run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={tmp_path / 'q.onnx'}", f"--data_dir={synth_dir}",
                "--no-dynamic_batch", "--no_plots")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == "warning: --no-dynamic_batch is deprecated; use --no_dynamic_batch"
    assert onnx.load(tmp_path / "q.onnx").graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # the fixed batch kept
    r = run_cli("package", f"--input_model={tmp_path / 'q.onnx'}", f"--output={tmp_path / 'pkg.tar.gz'}", f"--config={cfg}",
                f"--data_dir={synth_dir}", "--count=1")
    assert r.returncode == 0, r.stderr
    assert sum("deprecated" in line for line in r.stderr.splitlines()) == 1 and (tmp_path / "pkg.tar.gz").is_file()


# ------------------------------------------------------------------------- one place for outputs
@pytest.mark.realdata
def test_benchmark_and_validate_write_nothing_without_report(tuned_mnist12, models_dir, mnist_dir, tmp_path):
    ours, _ = tuned_mnist12
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("benchmark", f"--input_model={ours}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", f"--data_dir={mnist_dir}",
                "--iterations=5", cwd=work)
    assert r.returncode == 0, r.stderr
    r = run_cli("validate", f"--input_model={ours}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", f"--data_dir={mnist_dir}",
                "--samples=20", "--portability_samples=20", cwd=work)
    assert r.returncode == 0, r.stderr
    assert list(work.iterdir()) == []
    # a report in folders that do not exist yet: created
    r = run_cli("validate", f"--input_model={ours}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", f"--data_dir={mnist_dir}",
                "--samples=20", "--portability_samples=20", "--report=reports/new/v.json", cwd=work)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (work / "reports" / "new").iterdir()) == ["v.json", "v.md"]


# ------------------------------------------------------------------------------ one stream each
@pytest.mark.realdata
def test_validate_prints_each_check_once(tuned_mnist12, models_dir, mnist_dir):
    ours, _ = tuned_mnist12
    r = run_cli("validate", f"--input_model={ours}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", f"--data_dir={mnist_dir}",
                "--samples=20", "--portability_samples=20")
    assert r.returncode == 0, r.stderr
    assert "| accuracy | PASS |" in r.stdout
    assert not any(line.startswith(("PASS ", "FAIL ", "WARN ", "INFO ", "SKIP ")) for line in r.stderr.splitlines()), r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("validation PASSED: ")


@pytest.mark.realdata
def test_validate_speaks_of_a_7_bit_model_in_7_bit_terms(models_dir, mnist_dir, tmp_path):
    """With kernel_aware off the input is quantized too, onto 0..127: [0, 1] pixels use all 128 levels."""
    cfg = write_config(tmp_path / "k.yaml", {"quantization": {"kernel_aware": False}, "output": {"test_data_sets": 0}})
    q = tmp_path / "k-int8.onnx"
    r = run_cli("tune", f"--input_model={models_dir / 'mnist-12.onnx'}", f"--config={cfg}", f"--output_model={q}",
                f"--data_dir={mnist_dir}", "--no_plots")
    assert r.returncode == 0, r.stderr
    r = run_cli("validate", f"--input_model={q}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", f"--data_dir={mnist_dir}",
                "--samples=20", "--portability_samples=20")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| input range |"))
    assert "uses 100% of the range (128 of 128 levels)" in row and "7-bit: integers 0..127" in row, row


@pytest.mark.realdata
@pytest.mark.parametrize("command", ["benchmark", "validate", "tune"])
def test_json_on_every_reporting_command(command, tuned_mnist12, models_dir, mnist_dir, tmp_path):
    ours, _ = tuned_mnist12
    fp32 = models_dir / "mnist-12.onnx"
    args = {"benchmark": [f"--input_model={ours}", f"--baseline_model={fp32}", "--iterations=5"],
            "validate": [f"--input_model={ours}", f"--baseline_model={fp32}", "--samples=20", "--portability_samples=20"],
            "tune": [f"--input_model={fp32}", f"--output_model={tmp_path / 'j.onnx'}", "--no_plots"]}[command]
    r = run_cli(command, *args, f"--data_dir={mnist_dir}", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == command and doc["exit_code"] == 0 and "markdown" not in doc
    assert r.stderr == ""


# ------------------------------------------------------------------------------------ help texts
def test_help_promises_only_what_the_command_does():
    for command in ("validate", "package", "fetch", "calib", "write-test-data", "check-test-data", "benchmark"):
        assert "neural-compressor" not in _help_of(command, "--verbose"), command
    assert "neural-compressor" in _help_of("tune", "--verbose")
    for command in ("benchmark", "validate", "package"):
        assert "documents in its metadata" in _help_of(command, "--config"), command


def _help_of(command: str, flag: str) -> str:
    """The help text of ``flag`` in ``command --help`` (its options section)."""
    options = " ".join(run_cli(command, "--help").stdout.split("options:", 1)[1].split())
    rest = options[options.index(f" {flag} ") + len(flag) + 2:]
    nxt = rest.find(" --")
    return rest[:nxt if nxt >= 0 else None]


# ------------------------------------------------------------------------------------ the API
API = ("tune_model", "benchmark_models", "validate_model", "package_model", "build_calibration_set", "write_test_data",
       "check_test_data", "fetch")


@pytest.mark.parametrize("name", API)
def test_the_api_has_real_signatures_and_docstrings(name):
    f = getattr(quant, name)
    params = inspect.signature(f).parameters
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
    assert f.__doc__ and len(f.__doc__) > 200 and name in quant.__all__ and name in quant.__doc__


def test_each_sub_command_is_a_thin_call_of_one_api_function():
    import ast

    tree = ast.parse((REPO / "quant" / "cli.py").read_text())
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_") and n.name != "cmd_config"):
        imported = [a.name for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) for a in n.names]
        assert len(imported) == 1 and imported[0] in API, (fn.name, imported)
        assert len(fn.body) <= 12, fn.name


# ---------------------------------------------------------------------------------- calib_data/
def test_calib_data_holds_the_packaged_calibration_definition():
    top = REPO / "calib_data" / "calib_manifest.json"
    packaged = REPO / "quant" / "resources" / "calib_manifest.json"
    assert top.read_bytes() == packaged.read_bytes()
    assert top.resolve() == packaged.resolve()  # one file: the package's copy is the top-level one, linked
    assert json.loads(top.read_text())["sets"][0]["name"] == "train-100-seed9527"


def test_calib_writes_into_the_folder_it_is_given(tmp_path, synth_dir):
    cfg = synth_config(tmp_path)
    r = run_cli("calib", f"--config={cfg}", f"--data_dir={synth_dir}", f"--output_dir={tmp_path / 'new' / 'calib'}")
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip())
    assert out.parent == tmp_path / "new" / "calib" and out.name.startswith("calib-") and out.suffix == ".npy"
    r = run_cli("calib", f"--config={cfg}", f"--data_dir={synth_dir}", f"--out_dir={tmp_path / 'old'}")
    assert r.returncode == 0 and "--out_dir is deprecated" in r.stderr, r.stderr


# ------------------------------------------------------------------- what a hostile user tries
def test_a_report_never_replaces_a_users_file_beside_it(tmp_path, synth_dir):
    m = save(pattern_linear(layout="flat"), tmp_path / "m.onnx")
    notes = tmp_path / "mine.md"
    notes.write_text("my notes\n")
    r = run_cli("benchmark", f"--input_model={m}", f"--baseline_model={m}", f"--config={synth_config(tmp_path)}",
                f"--data_dir={synth_dir}", "--mode=accuracy", f"--report={tmp_path / 'mine.json'}")
    assert r.returncode == 2 and "mine.md: exists and is not a report this toolkit wrote" in r.stderr, r.stderr
    assert notes.read_text() == "my notes\n" and not (tmp_path / "mine.json").exists()
    r = run_cli("benchmark", f"--input_model={m}", f"--baseline_model={m}", f"--config={synth_config(tmp_path)}",
                f"--data_dir={synth_dir}", "--mode=accuracy", f"--report={tmp_path / 'ours.json'}")
    assert r.returncode == 0, r.stderr
    r = run_cli("benchmark", f"--input_model={m}", f"--baseline_model={m}", f"--config={synth_config(tmp_path)}",
                f"--data_dir={synth_dir}", "--mode=accuracy", f"--report={tmp_path / 'ours.json'}")
    assert r.returncode == 0, r.stderr  # its own earlier report is replaced


def test_a_figure_never_replaces_a_users_png_beside_the_report(tmp_path, synth_dir):
    m = save(pattern_linear(layout="flat"), tmp_path / "m.onnx")
    png = tmp_path / "b.summary.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n my holiday photo")
    r = run_cli("benchmark", f"--input_model={m}", f"--baseline_model={m}", f"--config={synth_config(tmp_path)}",
                f"--data_dir={synth_dir}", "--mode=accuracy", f"--report={tmp_path / 'b.json'}")
    assert r.returncode == 2 and "b.summary.png: exists and is not a figure or report this toolkit wrote" in r.stderr, r.stderr
    assert png.read_bytes().endswith(b"my holiday photo") and not (tmp_path / "b.json").exists()
    png.unlink()
    for _ in range(2):  # its own figures are replaced by the next run
        r = run_cli("benchmark", f"--input_model={m}", f"--baseline_model={m}", f"--config={synth_config(tmp_path)}",
                    f"--data_dir={synth_dir}", "--mode=accuracy", f"--report={tmp_path / 'b.json'}")
        assert r.returncode == 0 and png.is_file(), r.stderr


def test_a_config_input_name_the_model_lacks_is_exit_2_naming_both(tmp_path, synth_dir):
    m = save(pattern_linear(layout="flat"), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path, {"model": {"input_name": "Input3"}})
    r = run_cli("write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", f"--output_dir={tmp_path / 'td'}")
    assert r.returncode == 2 and "model.input_name is 'Input3'" in r.stderr and str(cfg) in r.stderr and str(m) in r.stderr, r.stderr


def test_an_old_and_a_new_spelling_together_are_a_usage_error(tmp_path):
    r = run_cli("package", f"--input_model={tmp_path / 'm.onnx'}", f"--output={tmp_path / 'a.tar.gz'}",
                f"--output_model={tmp_path / 'b.tar.gz'}")
    assert r.returncode == 2 and "--output and --output_model are one flag" in r.stderr, r.stderr


def test_a_tune_that_misses_the_criterion_says_it_in_one_line(tmp_path):
    """Calibrated on dim images and tested on noisy ones with 8-bit ranges, the int8 model misses the criterion:
    one error line, not neural-compressor's own log line too (also with --json)."""
    from helpers import write_mnist

    d = write_mnist(tmp_path / "m", train_brightness=20, test_noise=200)
    cfg = synth_config(tmp_path, {"quantization": {"reduce_range": False}, "tuning": {"max_trials": 1}})
    r = run_cli("tune", f"--input_model={save(pattern_linear('N', 'flat'), tmp_path / 'm.onnx')}", f"--config={cfg}",
                f"--output_model={tmp_path / 'q.onnx'}", f"--data_dir={d}", "--json")
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: no int8 model met"), r.stderr


def test_the_api_logs_to_the_quant_logger_not_stdout(tmp_path, synth_dir, capsys, caplog):
    import logging

    m = save(pattern_linear(layout="flat"), tmp_path / "m.onnx")
    with caplog.at_level(logging.INFO, logger="quant"):
        quant.write_test_data(str(m), str(tmp_path / "td"), config=str(synth_config(tmp_path)), data_dir=str(synth_dir), count=1)
    assert capsys.readouterr().out == "" and any("[test-data] wrote 1" in r.getMessage() for r in caplog.records)
