"""Robustness: random/mutated inputs only ever raise the toolkit's own errors; Ctrl-C and
concurrent writers never leave partial files."""

import gzip
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, synth_config
from helpers import idx_bytes, mnist12_like, save
from quant import config, data
from quant.errors import ConfigError, DataError, QuantError

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


def test_ctrl_c_during_tuning_exits_130_and_writes_nothing(tmp_path, synth_dir):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 3}})
    out = tmp_path / "out" / "int8.onnx"
    out.parent.mkdir()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "quant", "tune", f"--input_model={m}", f"--config={cfg}", f"--output_model={out}",
                          f"--data_dir={synth_dir}"], cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in p.stderr:  # wait until INC's loop is running, then press Ctrl-C
        lines.append(line)
        if "fp32 baseline" in line:
            p.send_signal(signal.SIGINT)
            break
    rest = p.communicate(timeout=120)[1]
    assert p.returncode == 130, "".join(lines) + rest
    assert "interrupted; no output written" in rest and "Traceback" not in rest
    assert list(out.parent.iterdir()) == []


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
    assert sorted(f.name for f in out.parent.iterdir()) == ["int8.onnx", "int8.report.json", "int8.report.md", "int8_test_data"]
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
