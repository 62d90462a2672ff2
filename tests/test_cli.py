"""The command line through subprocesses: exit codes, one-line errors, nothing written on failure."""

import importlib.util
import json

import pytest
from conftest import run_cli, synth_config, write_config
from helpers import mnist12_like, pattern_linear, save, write_mnist

from quant import cli


def _assert_clean_error(r, code, *words):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in last, (w, last)


def test_help_and_usage_error():
    assert run_cli("--help").returncode == 0
    r = run_cli("tune", "--input_model=x.onnx")
    _assert_clean_error(r, 2, "--output_model")
    _assert_clean_error(run_cli("tune", "--input_model=x", "--output_model=y", "--cofig=c.yaml"), 2, "unrecognized")


def test_building_the_parser_imports_no_runtime():
    """``--help`` and usage errors stay fast: the parser (every sub-command's flags, their ranges and
    defaults) is built without importing onnxruntime, onnx or neural_compressor (~0.2 s vs ~0.4 s)."""
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys; from quant import cli; cli.build_parser(); "
            "print(sorted(m for m in ('onnxruntime', 'onnx', 'neural_compressor') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)


def test_missing_model_exit_4(tmp_path):
    out = tmp_path / "o.onnx"
    _assert_clean_error(run_cli("tune", f"--input_model={tmp_path}/none.onnx", f"--output_model={out}"), 4, "none.onnx", "not found")
    assert not out.exists()


def test_bad_config_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tuning:\n  max_trial: 3\n")
    m = save(mnist12_like(), tmp_path / "m.onnx")
    r = run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={tmp_path}/o.onnx")
    _assert_clean_error(r, 2, "c.yaml", "unknown key 'tuning.max_trial'", "did you mean 'tuning.max_trials'")


def test_output_equal_to_input_refused(tmp_path):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    before = m.read_bytes()
    _assert_clean_error(run_cli("tune", f"--input_model={m}", f"--output_model={m}"), 2, "is the --input_model", "refusing to overwrite it")
    assert m.read_bytes() == before


def test_a_missing_output_folder_is_created_and_removed_again_when_nothing_is_written(tmp_path):
    """Every output's missing folders are created when the run writes, and a run that writes nothing
    leaves none behind (here: a random model fails before its outputs are committed)."""
    m = save(mnist12_like(), tmp_path / "m.onnx")
    _assert_clean_error(run_cli("tune", f"--input_model={m}", f"--output_model={tmp_path}/no/such/o.onnx"), 4, "do not match this model")
    assert not (tmp_path / "no").exists()


def test_quantized_input_refused(tmp_path, synth_dir):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    q = tmp_path / "q.onnx"
    assert run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={q}", f"--data_dir={synth_dir}").returncode == 0
    _assert_clean_error(run_cli("tune", f"--input_model={q}", f"--config={cfg}", f"--output_model={tmp_path}/qq.onnx",
                                f"--data_dir={synth_dir}"), 4, "already quantized")


def test_missing_data_exit_4(tmp_path):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = write_config(tmp_path / "c.yaml", {"dataset": {"download": False}})
    r = run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={tmp_path}/o.onnx", f"--data_dir={tmp_path}/nodata")
    _assert_clean_error(r, 4, "nodata", "missing MNIST file")


def test_zoo_style_script_both_flag_forms_and_exit_3(tmp_path):
    d = write_mnist(tmp_path / "m", train_brightness=20, test_noise=200)
    m = save(pattern_linear("N", "flat"), tmp_path / "fp32.onnx")
    # 8-bit ranges (as in test_tune's goal-not-met case): the int8 model then misses the criterion
    cfg = synth_config(tmp_path, {"preprocessing": {"layout": "flat"}, "quantization": {"reduce_range": False}, "tuning": {"max_trials": 1}})
    out = tmp_path / "int8.onnx"
    r = run_cli("--input_model", str(m), "--config", str(cfg), "--output_model", str(out), "--data_dir", str(d), script="run_tuning.sh")
    _assert_clean_error(r, 3, "no int8 model met", "vs fp32 100.00%", "no model written")
    assert not out.exists() and not list(tmp_path.glob("*.report.*"))


def test_successful_run_prints_report(tmp_path, synth_dir):
    m = save(pattern_linear("N", "flat"), tmp_path / "fp32.onnx")
    cfg = synth_config(tmp_path, {"preprocessing": {"layout": "flat"}, "tuning": {"max_trials": 2}})
    rep = tmp_path / "r" / "rep.json"
    rep.parent.mkdir()
    r = run_cli(f"--input_model={m}", f"--config={cfg}", f"--output_model={tmp_path}/int8.onnx", f"--data_dir={synth_dir}",
                f"--report={rep}", script="run_tuning.sh")
    assert r.returncode == 0, r.stderr
    assert "**PASSED**" in r.stdout and rep.exists() and rep.with_suffix(".md").exists()
    assert "[tune] trial 1:" in r.stderr
    plot = rep.with_name("rep.trials.png")  # plots on by default (when matplotlib is installed), off with --no_plots
    assert plot.exists() == (importlib.util.find_spec("matplotlib") is not None)
    plot.unlink(missing_ok=True)
    r = run_cli(f"--input_model={m}", f"--config={cfg}", f"--output_model={tmp_path}/int8.onnx", f"--data_dir={synth_dir}",
                f"--report={rep}", "--no_plots", script="run_tuning.sh")
    assert r.returncode == 0 and not plot.exists() and "- plots:" not in r.stdout, r.stderr


@pytest.mark.realdata
def test_fetch_with_local_data_verifies_without_network(mnist_dir, tmp_path, models_dir):
    import shutil

    shutil.copy(models_dir / "mnist-12.onnx", tmp_path / "mnist-12.onnx")
    r = run_cli("fetch", f"--data_dir={mnist_dir}", f"--models_dir={tmp_path}")
    assert r.returncode == 0, r.stderr
    assert "md5 verified" in r.stderr and r.stdout.strip().endswith("mnist-12.onnx")


@pytest.mark.parametrize("cmd,flag,words", [
    ("validate", "--samples=0", "--samples 0: must be >= 1"),
    ("validate", "--portability_samples=10001", "--portability_samples 10001: must be <= 10000"),
    ("validate", "--rtol=nan", "--rtol nan: must be a finite number"),
    ("validate", "--samples=many", "argument --samples: invalid int value: 'many'"),
    ("check-test-data", "--atol=inf", "--atol inf: must be <= 100"),
    ("write-test-data", "--count=1001", "--count 1001: must be <= 1000"),
])
def test_numeric_flags_out_of_range_exit_2(tmp_path, synth_dir, cmd, flag, words):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    args = {"validate": [f"--baseline_model={m}", f"--report={out / 'v.json'}"], "check-test-data": [f"--test_data={tmp_path}"],
            "write-test-data": [f"--output_dir={out / 'td'}"]}[cmd]
    cfg = [] if cmd == "check-test-data" else [f"--config={synth_config(tmp_path)}", f"--data_dir={synth_dir}"]
    r = run_cli(cmd, f"--input_model={m}", *cfg, *args, flag, timeout=60)
    _assert_clean_error(r, 2, words)
    assert len(r.stderr.strip().splitlines()) == 1 and not list(out.iterdir())


def test_every_flag_has_help_and_the_version_is_printed():
    from quant import __version__

    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices
    missing = [(name, a.option_strings[0]) for name, p in sub.items() for a in p._actions if a.option_strings and not a.help]
    assert missing == []
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"mnist-quant {__version__}"


@pytest.mark.parametrize("typo,hint", [("--data-dir=x", "--data_dir"), ("--iteration=3", "--iterations"), ("--outputmodel=y", "--output_model")])
def test_a_mistyped_flag_gets_a_did_you_mean(typo, hint):
    cmd = "benchmark" if "iteration" in typo else "tune"
    r = run_cli(cmd, "--input_model=m.onnx", "--output_model=o.onnx" if cmd == "tune" else "--no_plots", typo)
    assert r.returncode == 2 and f"unrecognized argument '{typo}' (did you mean {hint}?)" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_tune_that_misses_the_criterion_prints_and_writes_its_report(tmp_path):
    """Exit 3 like the benchmark gate: the report (the trials) on stdout, written where --report points, the
    one error line last; no model, no test data."""
    d = write_mnist(tmp_path / "m", train_brightness=20, test_noise=200)
    m = save(pattern_linear("N", "flat"), tmp_path / "fp32.onnx")
    cfg = synth_config(tmp_path, {"preprocessing": {"layout": "flat"}, "quantization": {"reduce_range": False}, "tuning": {"max_trials": 1}})
    out, rep = tmp_path / "int8.onnx", tmp_path / "rep.json"
    r = run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={out}", f"--data_dir={d}", f"--report={rep}")
    _assert_clean_error(r, 3, "no int8 model met", "no model written")
    assert r.stdout.startswith("# Tuning report") and "**FAILED**" in r.stdout and "| trial |" in r.stdout
    assert json.loads(rep.read_text())["passed"] is False and (tmp_path / "rep.md").read_text() == r.stdout
    assert not out.exists() and not (tmp_path / "int8_test_data").exists()
    r = run_cli("tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={out}", f"--data_dir={d}", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 3 and doc["exit_code"] == 3 and doc["passed"] is False and doc["tuning"]["per_trial"]
