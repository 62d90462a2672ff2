"""Robustness: random/mutated inputs only ever raise the toolkit's own errors; Ctrl-C and
concurrent writers never leave partial or temp files; every bad model, data, config and path case
gets its exit code and one-line message from run_tuning.sh, run_benchmark.sh and validate alike."""

import gzip
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import REPO, synth_config
from helpers import idx_bytes, mnist12_like, qdq_before, read_in_if_body, save, with_external_data_outside
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from quant import config, data
from quant.errors import ConfigError, DataError, QuantError

# each example runs the command line (seconds): a failing one is reported as it is, not shrunk or traced
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)

VALID = idx_bytes(np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_idx_reader_random_bytes(raw):
    try:
        arr = data.read_idx_bytes(raw, "f")
    except DataError:
        return
    assert arr.dtype == np.uint8


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8), st.integers(0, len(VALID)), st.booleans())
def test_idx_reader_mutated_files(tmp_path, edits, cut, gz):
    raw = bytearray(VALID)
    for pos, val in edits:
        raw[pos] = val
    blob = bytes(raw[:cut])
    if gz:
        blob = gzip.compress(blob)[: max(1, cut)]
    p = tmp_path / "m.gz"
    p.write_bytes(blob)
    try:
        data.read_idx(p)
    except DataError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=400))
def test_config_loader_random_text(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    try:
        config.load(p)
    except ConfigError:
        pass


yaml_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
                           max_leaves=12)
section_keys = st.sampled_from(["model", "dataset", "preprocessing", "quantization", "tuning", "evaluation", "benchmark", "output", "version"])
leaf_keys = st.sampled_from(["name", "input_name", "root", "scale", "mean", "std", "layout", "format", "calibration", "sampling_size",
                             "accuracy_criterion", "relative", "exit_policy", "max_trials", "strategy", "accuracy", "framework"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(section_keys, st.dictionaries(leaf_keys, yaml_values, max_size=4) | yaml_values, max_size=4))
def test_config_from_random_structures(doc):
    try:
        config.from_dict(doc, "c.yaml")
    except ConfigError as e:
        assert "\n" not in str(e)


def isolated_env(tmp_path, **extra) -> dict:
    """Child environment whose temp folder is tmp_path/tmp and home tmp_path/home (both must stay empty),
    without the variables that would silence onnxruntime's telemetry by themselves (CI=true in CI)."""
    (tmp_path / "home").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "ORT_DISABLE_TELEMETRY", "ORT_RUNNING_UNIT_TESTS")}
    return dict(env, TMPDIR=str(tmp_path / "tmp"), HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"),
                **extra)


# Ctrl-C at three stages. Calibration is too quick on 50 images to hit by timing, so that case runs the
# real command with a calibration loader that announces itself and feeds slowly (a large calibration set).
_SLOW_CALIBRATION = """
import sys, time
from quant import cli
from quant.data import calib
def slow(self, _orig=calib.CalibDataLoader.__iter__):
    print("[test] calibration started", file=sys.stderr, flush=True)
    for item in _orig(self):
        time.sleep(0.1)
        yield item
calib.CalibDataLoader.__iter__ = slow
sys.exit(cli.main(sys.argv[1:]))
"""
CTRL_C_STAGES = {  # stage: (command prefix, stderr line that says the stage is running)
    "calibration": (["-c", _SLOW_CALIBRATION, "tune"], "[test] calibration started"),
    "tuning loop": (["-m", "quant", "tune"], "fp32 baseline"),
    "benchmarking": (["-m", "quant", "benchmark", "--mode=all", "--iterations=400000"], "[benchmark] timing: "),
}


STOPS = [("calibration", signal.SIGINT), ("tuning loop", signal.SIGINT), ("benchmarking", signal.SIGINT),
         ("tuning loop", signal.SIGTERM), ("calibration", signal.SIGHUP), ("benchmarking", signal.SIGTERM)]


@pytest.mark.parametrize("stage,sig", STOPS, ids=[f"{s}-{g.name}" for s, g in STOPS])
def test_a_signal_ends_the_run_with_its_code_removes_temp_files_and_writes_nothing(stage, sig, tmp_path, synth_dir):
    """Ctrl-C (SIGINT to the process group, as a terminal does), a service manager's stop (SIGTERM) and a
    closed terminal (SIGHUP): exit 128 + signal, one line, INC's workspace and every temporary removed."""
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 3}})
    out, tmp, cwd = tmp_path / "out", tmp_path / "tmp", tmp_path / "cwd"
    for d in (out, tmp, cwd):
        d.mkdir()
    prefix, ready = CTRL_C_STAGES[stage]
    args = [f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}"]
    args += [f"--baseline_model={m}", f"--report={out / 'b.json'}"] if stage == "benchmarking" else [f"--output_model={out / 'int8.onnx'}"]
    env = isolated_env(tmp_path, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, *prefix, *args], cwd=cwd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, start_new_session=True)
    lines = []
    for line in p.stderr:  # wait until the stage is running, then press Ctrl-C (SIGINT to the process group, as a terminal does)
        lines.append(line)
        if ready in line:
            os.killpg(p.pid, sig)
            break
    rest = p.communicate(timeout=120)[1]
    log = "".join(lines) + rest
    assert lines and ready in lines[-1], log
    assert p.returncode == 128 + sig, log
    said = "interrupted; no output written" if sig == signal.SIGINT else f"interrupted by {sig.name}; no output written"
    assert rest.strip().endswith(said) and "Traceback" not in rest, log
    assert list(out.iterdir()) == [] and list(tmp.iterdir()) == [] and list(cwd.iterdir()) == [], log
    assert list((tmp_path / "home").iterdir()) == [], log


def test_a_run_leaves_nothing_in_temp_or_home(tmp_path, synth_dir):
    """A whole tune + validate leaves no temp files and nothing under $HOME (INC's workspace is deleted;
    onnxruntime's telemetry files are not created because the toolkit opts out) except matplotlib's own
    font cache, which it keeps for every program that draws (~/.cache/matplotlib, ~/.config/matplotlib)."""
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    (tmp_path / "tmp").mkdir()
    env = isolated_env(tmp_path)
    q = tmp_path / "int8.onnx"
    for args in (["tune", f"--output_model={q}"], ["validate", f"--baseline_model={m}", "--samples=20", "--report=reports/v.json"]):
        model = m if args[0] == "tune" else q
        r = subprocess.run([sys.executable, "-m", "quant", *args, f"--input_model={model}", f"--config={cfg}", f"--data_dir={synth_dir}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    home = sorted(str(p.relative_to(tmp_path / "home")) for p in (tmp_path / "home").rglob("*"))
    assert list((tmp_path / "tmp").iterdir()) == []
    assert all(p in (".cache", ".config") or p.startswith((".cache/matplotlib", ".config/matplotlib")) for p in home), home
    assert (tmp_path / "reports" / "v.json").is_file()  # the report's folder was created


def test_concurrent_runs_to_one_output_leave_one_complete_file(tmp_path, synth_dir):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    out = tmp_path / "out" / "int8.onnx"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "quant", "tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={out}", f"--data_dir={synth_dir}"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    onnx.checker.check_model(onnx.load(out))
    assert sorted(f.name for f in out.parent.iterdir()) == ["int8.onnx", "int8.report.json", "int8.report.md", "int8.report.trials.png",
                                                            "int8_test_data"]
    sets = sorted((out.parent / "int8_test_data").iterdir())
    assert [d.name for d in sets] == ["test_data_set_0", "test_data_set_1", "test_data_set_2"]
    assert all(sorted(f.name for f in d.iterdir()) == ["input_0.pb", "output_0.pb"] for d in sets)
    solo = tmp_path / "solo.onnx"
    subprocess.run([*cmd[:-2], f"--output_model={solo}", cmd[-1]], cwd=REPO, check=True, capture_output=True)
    assert solo.read_bytes() == out.read_bytes()


def test_python_object_tags_are_refused(tmp_path):
    assert issubclass(ConfigError, QuantError) and issubclass(DataError, QuantError)
    p = tmp_path / "evil.yaml"
    p.write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml: YAML syntax error"):
        config.load(p)
    assert not (REPO / "pwned").exists() and not (tmp_path / "pwned").exists()


# --------------------------------------------------- one case per bad input, for all three commands
def _bad_model(kind: str, d):
    from onnx import TensorProto, helper

    p = d / "bad.onnx"
    raw = mnist12_like().SerializeToString()
    if kind == "missing":
        return d / "none.onnx", "not found"
    if kind == "directory":
        (d / "dir.onnx").mkdir()
        return d / "dir.onnx", "is a directory"
    if kind == "empty":
        p.write_bytes(b"")
        return p, "is empty"
    if kind == "random bytes":
        p.write_bytes(np.random.default_rng(0).bytes(4000))
        return p, "not a valid ONNX"
    if kind == "truncated":
        p.write_bytes(raw[: len(raw) // 2])
        return p, "bad.onnx"
    if kind == "too large":
        with open(p, "wb") as f:
            f.truncate((256 << 20) + 1)  # sparse: no disk used, never read
        return p, "byte limit"
    if kind == "external data outside":
        return save(with_external_data_outside(mnist12_like()), p), "outside the model's folder"
    m = mnist12_like()
    if kind == "wrong input size":
        m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 32
        return save(m, p), "expected [N,1,28,28]"
    if kind == "wrong input rank":
        del m.graph.input[0].type.tensor_type.shape.dim[1]
        return save(m, p), "has shape [1, 28, 28]; expected [N,1,28,28], [N,28,28,1] or [N,784]"
    if kind == "not 10 outputs":
        m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7
        return save(m, p), "expected [N,10]"
    if kind == "two inputs":
        m.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1, 3]))
        return save(m, p), "expected one input (an image), found 2"
    raise AssertionError(kind)


MODEL_CASES = ["missing", "directory", "empty", "random bytes", "truncated", "too large", "external data outside",
               "wrong input size", "wrong input rank", "not 10 outputs", "two inputs"]


def _command(cmd: str, model, tmp_path, synth_dir, cfg, output=None, report=None, unprivileged=False):
    """Run one of the three commands on ``model``; outputs go to ``tmp_path/out`` unless ``output``/``report``."""
    from conftest import run_cli

    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    good = save(mnist12_like(), tmp_path / "good.onnx")
    common = [f"--config={cfg}", f"--data_dir={synth_dir}"] + ([f"--report={report}"] if report else [])
    if cmd == "run_tuning.sh":
        return run_cli(f"--input_model={model}", f"--output_model={output or out / 'int8.onnx'}", *common,
                       script="run_tuning.sh", unprivileged=unprivileged), out
    report_flag = [] if report else [f"--report={out / ('b.json' if cmd == 'run_benchmark.sh' else 'v.json')}"]
    if cmd == "run_benchmark.sh":
        return run_cli(f"--input_model={model}", f"--baseline_model={good}", "--mode=all", *common, *report_flag,
                       script="run_benchmark.sh", unprivileged=unprivileged), out
    return run_cli("validate", f"--input_model={model}", f"--baseline_model={good}", *common, *report_flag, unprivileged=unprivileged), out


def _one_line_error(r, code, words, ctx):
    assert r.returncode == code, (ctx, r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and lines[-1].startswith("error: "), (ctx, r.stderr)
    for w in ([words] if isinstance(words, str) else words):
        assert w in lines[-1], (ctx, w, r.stderr)


COMMANDS = ["run_tuning.sh", "run_benchmark.sh", "validate"]


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("kind", MODEL_CASES)
def test_bad_model_cases_for_every_command(cmd, kind, tmp_path, synth_dir):
    model, words = _bad_model(kind, tmp_path)
    r, out = _command(cmd, model, tmp_path, synth_dir, synth_config(tmp_path))
    assert r.returncode == 4, (cmd, kind, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (cmd, kind, r.stderr)
    assert list(out.iterdir()) == []


DATA_CASES = {
    "folder missing": (lambda d: __import__("shutil").rmtree(d), "missing MNIST file"),
    "file missing": (lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(), "t10k-labels-idx1-ubyte"),
    "wrong magic": (lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x09\x03" + b"\x00" * 64)), "magic"),
    "truncated file": (lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(gzip.decompress((d / "t10k-images-idx3-ubyte.gz").read_bytes())[:-100])), "truncated"),
    "corrupt gzip": (lambda d: (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"junk" * 10), "t10k-images-idx3-ubyte.gz"),
    "label out of range": (lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.full(200, 12, np.uint8)))), "label 12 outside 0..9"),
    "count mismatch": (lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(50, np.uint8)))), "200"),
}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_cases_for_every_command(cmd, case, tmp_path, synth_dir):
    cfg = synth_config(tmp_path)
    DATA_CASES[case][0](synth_dir)
    good = save(mnist12_like(), tmp_path / "m.onnx")
    r, out = _command(cmd, good, tmp_path, synth_dir, cfg)
    _one_line_error(r, 4, DATA_CASES[case][1], (cmd, case))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("cmd", COMMANDS)
def test_md5_mismatch_of_a_known_file_is_refused(cmd, tmp_path, synth_dir):
    cfg = synth_config(tmp_path, {"dataset": {"verify_md5": True}})  # synthetic files carry the canonical names
    r, out = _command(cmd, save(mnist12_like(), tmp_path / "m.onnx"), tmp_path, synth_dir, cfg)
    _one_line_error(r, 4, ["-idx", "md5", "does not match the canonical MNIST file"], cmd)
    assert list(out.iterdir()) == []


def test_verbose_shows_the_traceback_and_keeps_the_exit_code(tmp_path, synth_dir):
    from conftest import run_cli

    r = run_cli("validate", f"--input_model={tmp_path / 'none.onnx'}", f"--baseline_model={tmp_path / 'none.onnx'}",
                f"--data_dir={synth_dir}", "--verbose")
    assert r.returncode == 4 and "Traceback (most recent call last)" in r.stderr and r.stderr.strip().endswith("input model file not found")
    quiet = run_cli("validate", f"--input_model={tmp_path / 'none.onnx'}", f"--baseline_model={tmp_path / 'none.onnx'}")
    assert quiet.returncode == 4 and "Traceback" not in quiet.stderr


# --------------------------------------------------- config errors, for all three commands
CONFIG_CASES = {
    "YAML syntax error": ("model: {name: [unclosed\n", 2, "YAML syntax error at line"),
    "unknown key": ("tuning:\n  max_trial: 3\n", 2, ["unknown key 'tuning.max_trial'", "did you mean 'tuning.max_trials'"]),
    "wrong type": ("tuning:\n  max_trials: ten\n", 2, "tuning.max_trials: expected an integer"),
    "negative tolerance": ("tuning:\n  accuracy_criterion: {relative: -0.1}\n", 2, "tuning.accuracy_criterion.relative: tolerance must be in"),
    "sampling size 0": ("quantization:\n  calibration: {sampling_size: 0}\n", 2, "sampling_size: must be >= 1"),
    "sampling size over any split": ("quantization:\n  calibration: {sampling_size: 70000}\n", 2, "sampling_size: must be <= 60000"),
    "unknown format": ("quantization:\n  format: QOp\n", 2, ["quantization.format: must be one of", "did you mean 'QOperator'"]),
    "unknown strategy": ("tuning:\n  strategy: fastest\n", 2, "tuning.strategy: must be one of"),
    "a list": ("- a\n- b\n", 2, "config must be a mapping"),
    "empty": ("", 2, "config is empty"),
    "python tag": ("model: !!python/object/apply:os.system ['touch pwned']\n", 2, "YAML syntax error"),
    "layout vs model input": (None, 2, ["preprocessing.layout is NHWC", "has shape [1, 1, 28, 28] (NCHW)"]),
}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_cases_for_every_command(cmd, case, tmp_path, synth_dir):
    text, code, words = CONFIG_CASES[case]
    if text is None:
        cfg = synth_config(tmp_path, {"preprocessing": {"layout": "NHWC"}})
    else:
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(text)
    good = save(mnist12_like(), tmp_path / "m.onnx")
    r, out = _command(cmd, good, tmp_path, synth_dir, cfg)
    _one_line_error(r, code, [cfg.name if code == 2 else ".onnx: input", *([words] if isinstance(words, str) else words)], (cmd, case))
    assert list(out.iterdir()) == [] and not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


def test_sampling_size_larger_than_the_split_is_refused_by_tune(tmp_path, synth_dir):
    # synthetic train split: 300 images; benchmark and validate never read the calibration split
    cfg = synth_config(tmp_path, {"quantization": {"calibration": {"manifest": None, "sampling_size": 500}}})
    r, out = _command("run_tuning.sh", save(mnist12_like(), tmp_path / "m.onnx"), tmp_path, synth_dir, cfg)
    _one_line_error(r, 2, "sampling_size: 500 is larger than the train split (300 images)", "tune")
    assert list(out.iterdir()) == []


# --------------------------------------------------- output and report paths
def _path_case(case: str, cmd: str, tmp_path):
    """(output, report, model, expected words) for a bad output/report path; ``model`` None = the default good model."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    if case == "output = input":
        m = save(mnist12_like(), tmp_path / "m.onnx")
        return m, None, m, "--output_model " + str(m) + " is the --input_model"
    if case == "output is a folder":
        return ro, None, None, "is a directory"
    if case == "output folder not writable":
        os.chmod(ro, 0o555)
        return ro / "int8.onnx", None, None, "is not writable"
    if case == "report is a folder":
        (ro / "r.json").mkdir()
        return None, ro / "r.json", None, "a folder or device was given"
    if case == "report folder not writable":
        os.chmod(ro, 0o555)
        return None, ro / "r.json", None, "is not writable"
    if case == "report would overwrite the model":
        m = save(mnist12_like(), tmp_path / "m.json")
        return None, m, m, f"--report (JSON) {m} is the --input_model {m}; refusing to overwrite it"
    if case == "report = output model":
        return tmp_path / "x.json", tmp_path / "x.json", None, "--output_model " + str(tmp_path / "x.json") + " and --report (JSON)"
    if case == "output = config":
        return tmp_path / "m.yaml", None, None, "is the --config"
    if case == "output name too long":  # fits the file system (255) but not with its staging name
        return tmp_path / ("x" * 245 + ".onnx"), None, None, "the name is 250 bytes; at most"
    if case == "output folder name too long":
        return tmp_path / ("d" * 300) / "int8.onnx", None, None, "cannot be written (File name too long)"
    if case == "report name too long":
        return None, tmp_path / ("r" * 300 + ".json"), None, "the name is 305 bytes; at most"
    if case == "report is a device":
        return None, "/dev/null", None, "--report /dev/null: expected a file path"
    if case == "report is a folder path":
        return None, str(tmp_path) + "/", None, "expected a file path"
    if case == "output is an MNIST file":
        return tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", None, None, "is the MNIST file"
    if case == "output and report meet through a symlinked folder":
        (tmp_path / "x" / "y").mkdir(parents=True)
        (tmp_path / "sub").symlink_to(tmp_path / "x" / "y")
        return tmp_path / "x" / "r.md", f"{tmp_path}/sub/../r.json", None, "are the same file"
    raise AssertionError(case)


PATH_CASES = [(c, k) for c in COMMANDS for k in ("report is a folder", "report folder not writable",
                                                 "report would overwrite the model", "report name too long", "report is a device",
                                                 "report is a folder path")]
PATH_CASES += [("run_tuning.sh", k) for k in ("output = input", "output is a folder", "output folder not writable",
                                              "report = output model", "output = config", "output name too long",
                                              "output folder name too long", "output is an MNIST file",
                                              "output and report meet through a symlinked folder")]


@pytest.mark.parametrize("cmd,case", PATH_CASES)
def test_bad_output_and_report_paths(cmd, case, tmp_path, synth_dir):
    output, report, model, words = _path_case(case, cmd, tmp_path)
    model = model or save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path)
    if case == "output = config":
        output = cfg.rename(tmp_path / "m.yaml")
        cfg = output
    before = {f: f.read_bytes() for f in tmp_path.glob("m.*")}
    r, out = _command(cmd, model, tmp_path, synth_dir, cfg, output=output, report=report, unprivileged=True)
    _one_line_error(r, 2, words, (cmd, case))
    ro = tmp_path / "readonly"
    assert list(out.iterdir()) == [] and [f for f in ro.rglob("*") if f != ro / "r.json"] == []
    assert {f: f.read_bytes() for f in tmp_path.glob("m.*")} == before


@pytest.mark.parametrize("cmd", COMMANDS)
def test_missing_output_folders_are_created_and_removed_again_when_nothing_is_written(cmd, tmp_path, synth_dir):
    """One rule for every command: a missing folder of an output is created when the run writes; a run that
    ends before writing (here: a missing MNIST folder) leaves none behind."""
    model = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path)
    report = tmp_path / "new" / "deeper" / "r.json"
    output = tmp_path / "out-new" / "int8.onnx" if cmd == "run_tuning.sh" else None
    r, _ = _command(cmd, model, tmp_path, tmp_path / "no-mnist", cfg, output=output, report=report)
    assert r.returncode == 4 and not (tmp_path / "new").exists() and not (tmp_path / "out-new").exists(), r.stderr
    r, _ = _command(cmd, model, tmp_path, synth_dir, cfg, output=output, report=report)
    assert r.returncode in (0, 3), r.stderr  # validate fails an fp32 model as int8 (exit 3) and still reports
    assert report.is_file() and report.with_suffix(".md").is_file()
    assert output is None or output.is_file()


def test_test_data_folders_of_others_are_never_replaced(tmp_path, synth_dir):
    """tune and write-test-data replace a test-data folder whole: never one holding the input model or
    anything but test_data_set_N folders (the working folder included)."""
    from conftest import run_cli

    cfg = synth_config(tmp_path)
    out = tmp_path / "out"
    (out / "int8_test_data").mkdir(parents=True)
    inside = save(mnist12_like(), out / "int8_test_data" / "m.onnx")
    r = run_cli(f"--input_model={inside}", f"--output_model={out / 'int8.onnx'}", f"--config={cfg}", f"--data_dir={synth_dir}",
                script="run_tuning.sh")
    _one_line_error(r, 2, ["--input_model", "lies inside", "int8_test_data", "replaces whole"], "model inside test data")
    m = save(mnist12_like(), tmp_path / "m.onnx")
    inside.rename(out / "int8_test_data" / "notes.txt")
    r = run_cli(f"--input_model={m}", f"--output_model={out / 'int8.onnx'}", f"--config={cfg}", f"--data_dir={synth_dir}",
                script="run_tuning.sh")
    _one_line_error(r, 2, "its test data folder " + str(out / "int8_test_data") + ": holds other files (notes.txt)", "foreign file")
    assert sorted(p.name for p in out.rglob("*")) == ["int8_test_data", "notes.txt"]
    for dest, cwd in ((out / "int8_test_data", None), (".", out)):
        r = run_cli("write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", f"--output_dir={dest}",
                    cwd=cwd)
        _one_line_error(r, 2, "holds other files", ("write-test-data", dest))
    assert sorted(p.name for p in out.rglob("*")) == ["int8_test_data", "notes.txt"]
    r = run_cli("write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", f"--output_dir={tmp_path}")
    _one_line_error(r, 2, ["--input_model", "lies inside"], "write-test-data over the model's folder")
    # an earlier run's test-data folder is replaced (the normal case)
    ok = tmp_path / "sets"
    for _ in range(2):
        r = run_cli("write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", f"--output_dir={ok}", "--count=2")
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in ok.iterdir()) == ["test_data_set_0", "test_data_set_1"]


# --------------------------------------------------- unreadable inputs (permission bits apply: see conftest.run_cli)
UNREADABLE = {
    "model": (4, "file is not readable (permission denied)"),
    "MNIST file": (4, "t10k-images-idx3-ubyte.gz: MNIST file is not readable (permission denied)"),
    "config": (2, "config file is not readable (permission denied)"),
}


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.parametrize("what", list(UNREADABLE))
def test_unreadable_inputs_for_every_command(cmd, what, tmp_path, synth_dir):
    model = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path)
    os.chmod({"model": model, "MNIST file": synth_dir / "t10k-images-idx3-ubyte.gz", "config": cfg}[what], 0)
    r, out = _command(cmd, model, tmp_path, synth_dir, cfg, unprivileged=True)
    code, words = UNREADABLE[what]
    _one_line_error(r, code, words, (cmd, what))
    assert list(out.iterdir()) == []


# --------------------------------------------------- model and data sanity before any work
def _sanity_model(case: str):
    from onnx import helper, numpy_helper

    m = mnist12_like()
    if case in ("NaN weight", "infinite weight"):
        w = numpy_helper.to_array(m.graph.initializer[2]).copy()
        w.flat[7] = np.nan if case == "NaN weight" else -np.inf
        m.graph.initializer[2].CopyFrom(numpy_helper.from_array(w, m.graph.initializer[2].name))
        return m, ["'W2' holds 1 NaN or infinite value(s)", "re-export"]
    if case == "custom-domain op":
        relu = next(n for n in m.graph.node if n.op_type == "Relu")
        relu.domain = "com.example"
        m.opset_import.append(helper.make_opsetid("com.example", 1))
        return m, ["com.example.Relu", "standard ONNX"]
    if case == "fixed batch inside an If body":  # the batch rewrite cannot see it: refused, with the way out
        return read_in_if_body(m, "p2", initializer=False, fixed_shape=[1, 256]), ["fails at batch 64", "--no_dynamic_batch or model.dynamic_batch: false"]
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["NaN weight", "infinite weight", "custom-domain op", "fixed batch inside an If body"])
def test_models_tuning_cannot_use_are_refused_with_a_hint(case, tmp_path, synth_dir):
    m, words = _sanity_model(case)
    r, out = _command("run_tuning.sh", save(m, tmp_path / "m.onnx"), tmp_path, synth_dir, synth_config(tmp_path))
    _one_line_error(r, 4, words, case)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("cmd", ["run_benchmark.sh", "validate"])
def test_an_int8_model_that_would_make_onnxruntime_abort_is_refused_in_one_line(cmd, tmp_path, synth_dir):
    """DequantizeLinear -> MaxPool whose output an If body reads: onnxruntime 1.31 aborts the process while
    loading it (quant.graph.controlflow), so the commands would die with no message; they refuse it first."""
    m = qdq_before(read_in_if_body(mnist12_like(), "p2", initializer=False), "Pool2")
    r, out = _command(cmd, save(m, tmp_path / "m.onnx"), tmp_path, synth_dir, synth_config(tmp_path))
    _one_line_error(r, 4, ["m.onnx", "aborts the process loading it (tried in a child process)", "'p2'"], cmd)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_baseline_at_chance_level_stops_the_run_with_a_hint(cmd, tmp_path, synth_dir):
    """Labels shifted by one (md5 checks off): fp32 and int8 would both score ~0 % and pass a relative gate."""
    lbl = synth_dir / "t10k-labels-idx1-ubyte.gz"
    labels = data.read_idx(lbl)
    lbl.write_bytes(gzip.compress(idx_bytes(((labels.astype(int) + 1) % 10).astype(np.uint8))))
    m = save(mnist12_like(), tmp_path / "m.onnx")
    r, out = _command(cmd, m, tmp_path, synth_dir, synth_config(tmp_path))
    _one_line_error(r, 4, ["good.onnx" if cmd != "run_tuning.sh" else "m.onnx", "near chance level", "md5 checks are off"], cmd)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("key,value,words", [
    ("nodes_to_keep_fp32", ["conv_1"], "no node named 'conv_1' (did you mean 'Conv1'?)"),
    ("op_types_to_keep_fp32", ["Matmul"], "'Matmul' is not an ONNX op type (did you mean 'MatMul'?)"),
])
def test_typos_in_the_keep_fp32_lists_are_refused_with_a_did_you_mean(key, value, words, tmp_path, synth_dir):
    cfg = synth_config(tmp_path, {"quantization": {"calibration": {"manifest": None, "sampling_size": 50}, key: value}})
    r, out = _command("run_tuning.sh", save(mnist12_like(), tmp_path / "m.onnx"), tmp_path, synth_dir, cfg)
    _one_line_error(r, 2, [f"quantization.{key}", words], key)
    assert list(out.iterdir()) == []


def test_a_disk_full_at_the_last_output_leaves_nothing_behind(tmp_path, synth_dir, monkeypatch, capsys):
    """Model, test data and reports are committed together: ENOSPC while the last one (the Markdown
    report) is staged leaves no model, no test data and no temporary file, and exits 5 in one line."""
    import errno

    from quant import cli, files

    real = files.Outputs.text

    def full_at_markdown(self, path, text):
        if str(path).endswith(".md"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(self, path, text)

    monkeypatch.setattr(files.Outputs, "text", full_at_markdown)
    out = tmp_path / "out"
    out.mkdir()
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    rc = cli.main(["tune", f"--input_model={save(mnist12_like(), tmp_path / 'm.onnx')}", f"--output_model={out / 'int8.onnx'}",
                   f"--config={cfg}", f"--data_dir={synth_dir}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 5 and err[-1] == f"error: {out / 'int8.report.md'}: No space left on device", err
    assert list(out.iterdir()) == []


def test_outputs_commit_restores_what_they_replace_when_a_move_fails(tmp_path, monkeypatch):
    from quant import files

    (tmp_path / "a.onnx").write_bytes(b"old model")
    (tmp_path / "td").mkdir()
    (tmp_path / "td" / "test_data_set_0").mkdir()
    real = os.replace

    def fail_on_report(src, dst):
        if str(dst).endswith("r.json"):
            raise OSError(5, "Input/output error", str(dst))
        return real(src, dst)

    with files.Outputs() as out:
        out.bytes(tmp_path / "a.onnx", b"new model")
        (out.folder(tmp_path / "td") / "test_data_set_9").mkdir()
        out.text(tmp_path / "r.json", "{}")
        monkeypatch.setattr(os, "replace", fail_on_report)
        with pytest.raises(OSError):
            out.commit()
        monkeypatch.setattr(os, "replace", real)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.onnx", "td", "test_data_set_0"]
    assert (tmp_path / "a.onnx").read_bytes() == b"old model"


def test_a_closed_stdout_ends_quietly():
    """``python -m quant config | head -1``: no BrokenPipeError traceback, the shell's code for SIGPIPE."""
    p = subprocess.Popen([sys.executable, "-m", "quant", "config"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and err == "", err


# --------------------------------------------------- fuzz: random commands, flags, values and file kinds
FUZZ_COMMANDS = {  # fetch is left out: it downloads
    "tune": ["--input_model", "--config", "--data_dir", "--report", "--output_model", "--objective", "--dynamic_batch", "--no_plots"],
    "benchmark": ["--input_model", "--baseline_model", "--config", "--mode", "--batch_size", "--iterations", "--warmup", "--threads",
                  "--max_accuracy_drop", "--data_dir", "--report", "--no_plots", "--dynamic_batch"],
    "validate": ["--input_model", "--config", "--data_dir", "--report", "--baseline_model", "--test_data", "--samples",
                 "--portability_samples", "--json", "--rtol", "--atol"],
    "check-test-data": ["--input_model", "--test_data", "--config", "--rtol", "--atol"],
    "write-test-data": ["--input_model", "--config", "--data_dir", "--output_dir", "--count"],
    "calib": ["--config", "--data_dir", "--out_dir"],
    "package": ["--input_model", "--output", "--config", "--data_dir", "--count"],
}
SWITCHES = {"--dynamic_batch", "--no_plots", "--json"}  # tune's --no_plots too
REQUIRED = {"tune": ["--input_model", "--output_model"], "benchmark": ["--input_model"], "validate": ["--input_model", "--baseline_model"],
            "check-test-data": ["--input_model", "--test_data"], "write-test-data": ["--input_model", "--output_dir"], "calib": ["--out_dir"],
            "package": ["--input_model", "--output"]}
NUMBERS = ["1", "2", "0", "-1", "64", "1,64", "0.5", "1e3", "nan", "inf", "1000000000000", "x", ""]
GOOD_NUMBER = {"--batch_size": "1,64", "--iterations": "5", "--warmup": "0", "--threads": "1", "--max_accuracy_drop": "0.5",
               "--samples": "20", "--portability_samples": "20", "--rtol": "0.001", "--atol": "0.0001", "--count": "2"}


def _fuzz_files(root):
    """Every kind of file a user might hand over, made once per example: good, broken, special and colliding paths."""
    from helpers import write_mnist

    from quant.graph import models
    from quant.workflows import testdata

    inputs = root / "inputs"
    inputs.mkdir()
    good = save(mnist12_like(batch="N"), inputs / "m.onnx")
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    (inputs / "m_test_data").mkdir()
    testdata.write_sets(models.serialize(mnist12_like(batch="N")), "Input3", "Plus214_Output_0", x, inputs / "m_test_data")
    (inputs / "random.onnx").write_bytes(np.random.default_rng(1).bytes(3000))
    with open(inputs / "sparse.onnx", "wb") as f:
        f.truncate(3 << 30)
    os.mkfifo(inputs / "fifo")
    (inputs / "folder").mkdir()
    data_dir = write_mnist(inputs / "mnist", n_train=120, n_test=60)
    base = {"dataset": {"verify_md5": False, "download": False},
            "quantization": {"calibration": {"manifest": None, "sampling_size": 20}}, "tuning": {"max_trials": 1}}
    configs = [synth_config(inputs, base).rename(inputs / "c0.yaml")]
    for i, extra in enumerate([{"benchmark": {"iterations": 10**12}}, {"preprocessing": {"scale": "1e400"}},
                               {"tuning": {"random_seed": 2**32}}, {"output": {"test_data_sets": 0}}], 1):
        configs.append(synth_config(inputs, {**base, **extra}).rename(inputs / f"c{i}.yaml"))
    (inputs / "bomb.yaml").write_text('a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f'{c}: &{c} [{",".join(["*" + p] * 9)}]\n' for p, c in zip("abcdefgh", "bcdefghi")))
    (inputs / "dup.yaml").write_text("tuning: {max_trials: 1}\ntuning: {max_trials: 2}\n")
    files = [str(good), str(inputs / "random.onnx"), str(inputs / "sparse.onnx"), str(inputs / "fifo"), str(inputs / "folder"),
             str(inputs / "missing.onnx"), "/dev/zero", str(inputs / ("n" * 300)), ""]
    return inputs, {"model": files, "config": [str(c) for c in configs] + [str(inputs / "bomb.yaml"), str(inputs / "dup.yaml"),
                                                                           str(inputs / "fifo"), "/dev/zero", str(good)],
                    "data": [str(data_dir), str(inputs / "folder"), str(inputs / "missing"), str(good), str(inputs / "fifo")],
                    "test_data": [str(inputs / "m_test_data"), str(inputs / "folder"), str(inputs / "fifo"), str(inputs / ("t" * 300))]}


def _value(flag, kinds, work, draw):
    """Half the time the good value for the flag, else any from its pool (good ones included)."""
    def pick(pool):
        return draw(st.one_of(st.just(pool[0]), st.sampled_from(pool)))

    outputs = [str(work / "o.onnx"), str(work / "r.json"), str(work), str(work / "no" / "x.onnx"), kinds["model"][0], kinds["config"][0],
               "/dev/null", kinds["model"][3], str(work / ("o" * 250)), ""]
    if flag in ("--input_model", "--baseline_model"):
        return pick(kinds["model"])
    if flag in ("--config", "--test_data"):
        return pick(kinds[flag[2:]])
    if flag == "--data_dir":
        return pick(kinds["data"])
    if flag in ("--output_model", "--report"):
        return pick(outputs)
    if flag == "--output":
        return pick([str(work / "p.tar.gz"), str(work / "p.zip"), str(work / "no" / "p.tar.gz"), str(work), kinds["model"][0], ""])
    if flag in ("--output_dir", "--out_dir"):
        return pick([str(work / "td") if flag == "--output_dir" else str(work)] + outputs)
    if flag == "--objective":
        return pick(["accuracy", "performance", "speed"])
    if flag == "--mode":
        return pick(["all", "accuracy", "performance", "fast"])
    return pick([GOOD_NUMBER.get(flag, "1")] + NUMBERS)


def _snapshot(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if not p.is_fifo()}


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], phases=NO_SHRINK)
@given(st.data())
def test_fuzz_the_command_line_never_exits_1_and_never_leaves_files(tmp_path_factory, data):
    """Random commands with random flags (a typo included), values (numbers out of range, non-finite) and
    file kinds (FIFO, /dev/zero, sparse 3 GiB, folder, missing, 300-byte name, colliding paths): only the
    documented exit codes, inputs untouched, no temporary file anywhere, and no output at all unless the
    run succeeded (0) or reported a failed check (3)."""
    import tempfile as tempfile_mod

    from quant import cli

    root = tmp_path_factory.mktemp("fuzz")
    inputs, kinds = _fuzz_files(root)
    cmd = data.draw(st.sampled_from(sorted(FUZZ_COMMANDS)))
    work, tmp = root / "work", root / "tmp"
    work.mkdir()
    tmp.mkdir()
    flags = data.draw(st.lists(st.sampled_from(FUZZ_COMMANDS[cmd] + ["--data-dir"]), unique=True, max_size=4))
    # never the built-in config (it downloads MNIST) and mostly the synthetic data (the model is at chance on real MNIST)
    flags = sorted(set(flags) | set(REQUIRED[cmd]) | ({"--config", "--data_dir"} & set(FUZZ_COMMANDS[cmd])))
    argv = [cmd]
    for f in flags:
        argv.append(f if f in SWITCHES else f"{f}={_value(f, kinds, work, data.draw)}")
    before = _snapshot(inputs)
    saved, tempfile_mod.tempdir, cwd = tempfile_mod.tempdir, str(tmp), os.getcwd()
    os.chdir(work)  # default outputs (reports, calib_data/) go to the working folder
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse: bad or missing flag
        rc = e.code
    finally:
        tempfile_mod.tempdir = saved
        os.chdir(cwd)
    assert rc in (0, 2, 3, 4, 5), (argv, rc)
    after = _snapshot(inputs)
    assert {k: after.get(k) for k in before} == before, argv  # no input modified or deleted
    assert rc in (0, 3) or after == before, (argv, rc)  # outputs asked for there (--report=inputs/m.json) only on success
    assert list(tmp.iterdir()) == [], (argv, list(tmp.iterdir()))
    left = [p for p in root.rglob(".*")]
    assert left == [], (argv, left)
    if rc not in (0, 3):
        assert list(work.iterdir()) == [], (argv, rc, list(work.iterdir()))


def test_files_of_others_inside_a_test_data_set_folder_are_never_deleted(tmp_path, synth_dir):
    """A test-data folder is replaced whole only when each test_data_set_N holds nothing but input_N.pb/output_N.pb."""
    from conftest import run_cli

    td = tmp_path / "td" / "test_data_set_0"
    (td / "photos").mkdir(parents=True)
    (td / "notes.txt").write_text("mine")
    r = run_cli("write-test-data", f"--input_model={save(mnist12_like(), tmp_path / 'm.onnx')}", f"--config={synth_config(tmp_path)}",
                f"--data_dir={synth_dir}", f"--output_dir={tmp_path / 'td'}", "--count=1")
    _one_line_error(r, 2, ["holds other files", "test_data_set_0/notes.txt", "test_data_set_0/photos"], "write-test-data")
    assert (td / "notes.txt").read_text() == "mine" and (td / "photos").is_dir()


def test_a_folder_where_a_plot_goes_is_refused_not_deleted(tmp_path, synth_dir):
    from conftest import run_cli

    (tmp_path / "b.latency.png" / "sub").mkdir(parents=True)
    m = save(mnist12_like(), tmp_path / "m.onnx")
    r = run_cli("benchmark", f"--input_model={m}", f"--config={synth_config(tmp_path)}", f"--data_dir={synth_dir}",
                f"--report={tmp_path / 'b.json'}", "--iterations=5", "--warmup=0")
    _one_line_error(r, 2, ["plot", "b.latency.png: is a directory"], "benchmark")
    assert (tmp_path / "b.latency.png" / "sub").is_dir() and not (tmp_path / "b.json").exists()


def test_calib_never_writes_over_its_manifest_and_leaves_nothing_after_a_failure(tmp_path, synth_dir):
    from conftest import run_cli

    work = tmp_path / "work"
    work.mkdir()
    cfg = synth_config(tmp_path)
    r = run_cli("calib", f"--config={cfg}", f"--data_dir={synth_dir}", "--output_dir=calib_data", cwd=work)
    assert r.returncode == 0, r.stderr
    npy = work / r.stdout.strip()
    manifest = work / "calib_data" / npy.name  # a manifest named like the array calib is about to write
    npy.rename(manifest)
    manifest.write_text('{"sets": []}')
    cfg2 = synth_config(tmp_path, {"quantization": {"calibration": {"manifest": str(manifest), "sampling_size": 50}}})
    r = run_cli("calib", f"--config={cfg2}", f"--data_dir={synth_dir}", "--output_dir=calib_data", cwd=work)
    _one_line_error(r, 2, ["the calibration array", "is the quantization.calibration.manifest"], "calib")
    assert manifest.read_text() == '{"sets": []}'
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    r = run_cli("calib", f"--config={cfg}", f"--data_dir={tmp_path / 'nothing'}", "--output_dir=calib_data", cwd=fresh)
    assert r.returncode == 4 and list(fresh.iterdir()) == [], r.stderr  # no empty calib_data/ left behind


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_model_onnxruntime_loads_but_cannot_run_is_refused_in_one_line(cmd, tmp_path, synth_dir):
    """A conv bias of the wrong length passes the ONNX checker and onnxruntime's load, and fails only in
    session.run: exit 4 naming the model, as for any invalid input model;
    it used to be exit 1, "unexpected error"."""
    m = mnist12_like()
    conv = next(n for n in m.graph.node if n.name == "Conv2")
    conv.input.append("Bbad")
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(8, np.float32), "Bbad"))  # 16 output channels
    onnx.checker.check_model(m)
    r, out = _command(cmd, save(m, tmp_path / "m.onnx"), tmp_path, synth_dir, synth_config(tmp_path))
    _one_line_error(r, 4, ["m.onnx: onnxruntime loads it but fails running it:", "bias"], cmd)
    assert list(out.iterdir()) == []
