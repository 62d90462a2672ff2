"""Zoo-style test_data_set_N folders: writing, checking, bad folders."""

import numpy as np
import pytest
from conftest import run_cli
from helpers import mnist12_like, save

from quant.errors import DataError
from quant.files import Outputs
from quant.graph import models
from quant.workflows import testdata


@pytest.fixture
def model_and_x():
    m = mnist12_like()
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    return models.serialize(m), x


def write(raw, x, dest):
    """write_sets the way a run does it: into a staged folder swapped in whole on commit."""
    with Outputs() as out:
        assert testdata.write_sets(raw, "Input3", "Plus214_Output_0", x, out.folder(dest)) == len(x)
        out.commit()
    return sorted(dest.glob("test_data_set_*"))


def test_write_then_check_round_trip(tmp_path, model_and_x):
    raw, x = model_and_x
    sets = write(raw, x, tmp_path / "td")
    assert [s.name for s in sets] == [f"test_data_set_{i}" for i in range(4)]
    name, arr = testdata.read_tensor(sets[2] / "input_0.pb")
    assert name == "Input3" and arr.shape == (1, 1, 28, 28) and np.array_equal(arr, x[2:3])
    res = testdata.check_sets(raw, testdata.find_sets([tmp_path / "td"]), "Input3", "Plus214_Output_0")
    assert len(res) == 4 and all(r.passed and r.max_abs_diff == 0 for r in res)
    # a single set folder is accepted too
    assert testdata.find_sets([sets[0]]) == [sets[0]]


def test_another_model_fails_the_check(tmp_path, model_and_x):
    raw, x = model_and_x
    write(raw, x, tmp_path / "td")
    other = models.serialize(mnist12_like(seed=5))
    res = testdata.check_sets(other, testdata.find_sets([tmp_path / "td"]), "Input3", "Plus214_Output_0")
    assert not any(r.passed for r in res) and all(r.max_abs_diff > 1e-3 for r in res)


def test_rewrite_replaces_the_folder_whole(tmp_path, model_and_x):
    raw, x = model_and_x
    write(raw, x, tmp_path / "td")
    write(raw, x[:2], tmp_path / "td")
    assert sorted(p.name for p in (tmp_path / "td").iterdir()) == ["test_data_set_0", "test_data_set_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["td"]  # no temp or old folders left


def test_bad_folders_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        testdata.find_sets([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no test_data_set"):
        testdata.find_sets([tmp_path / "empty"])
    d = tmp_path / "test_data_set_0"
    d.mkdir()
    (d / "input_0.pb").write_bytes(b"\xff\x00garbage")
    with pytest.raises(DataError, match="input_0.pb: not a serialized ONNX TensorProto"):
        testdata.read_tensor(d / "input_0.pb")
    with pytest.raises(DataError, match="output_0.pb: test data file not found"):
        testdata.read_tensor(d / "output_0.pb")


def test_check_test_data_cli_exit_codes(tmp_path, model_and_x):
    raw, x = model_and_x
    m = save(mnist12_like(), tmp_path / "m.onnx")
    other = save(mnist12_like(seed=3), tmp_path / "other.onnx")
    write(raw, x[:2], tmp_path / "td")
    ok = run_cli("check-test-data", f"--input_model={m}", "--test_data", str(tmp_path / "td"))
    assert ok.returncode == 0 and ok.stdout.count("PASS") == 2, ok.stderr
    bad = run_cli("check-test-data", f"--input_model={other}", "--test_data", str(tmp_path / "td"))
    assert bad.returncode == 3 and "2 of 2 test data sets differ" in bad.stderr and "Traceback" not in bad.stderr
    loose = run_cli("check-test-data", f"--input_model={other}", "--test_data", str(tmp_path / "td"), "--atol=100")
    assert loose.returncode == 0
    missing = run_cli("check-test-data", f"--input_model={m}", "--test_data", str(tmp_path / "nope"))
    assert missing.returncode == 4 and "test data folder not found" in missing.stderr
    neg = run_cli("check-test-data", f"--input_model={m}", "--test_data", str(tmp_path / "td"), "--rtol=-1")
    assert neg.returncode == 2 and "--rtol -1.0: must be >= 0" in neg.stderr


def test_write_test_data_cli(tmp_path, synth_dir):
    from conftest import synth_config

    m = save(mnist12_like(), tmp_path / "m.onnx")
    cfg = synth_config(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    r = run_cli("write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", "--count=2", cwd=work)
    assert r.returncode == 2 and "required: --output_dir" in r.stderr  # written only where a flag points
    r = run_cli("write-test-data", f"--input_model={m}", f"--config={cfg}", f"--data_dir={synth_dir}", "--count=2",
                "--output_dir=m_test_data", cwd=work)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "m_test_data").exists()
    assert sorted(p.name for p in (work / "m_test_data").iterdir()) == ["test_data_set_0", "test_data_set_1"]
    assert run_cli("check-test-data", f"--input_model={m}", "--test_data", str(work / "m_test_data")).returncode == 0


def test_a_tensor_with_external_data_is_refused(tmp_path, monkeypatch):
    """numpy_helper would read the data file from the working folder: test tensors must hold their values."""
    from onnx import TensorProto, numpy_helper

    t = numpy_helper.from_array(np.zeros((1, 784), np.float32), "input")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="data.bin")
    (tmp_path / "input_0.pb").write_bytes(t.SerializeToString())
    (tmp_path / "data.bin").write_bytes(bytes(4 * 784))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="input_0.pb: refers to external data"):
        testdata.read_tensor(tmp_path / "input_0.pb")
