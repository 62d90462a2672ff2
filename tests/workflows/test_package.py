"""The zoo-style package (quant/workflows/package.py): archive layout, the zoo's own check, determinism, the card."""

import hashlib
import json
import re
import tarfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_cli, synth_config
from helpers import mnist12_like, save
from onnx import numpy_helper

from quant.data import provenance
from quant.errors import UsageError
from quant.workflows import package


def zoo_check(root) -> int:
    """The zoo's test-data check, written independently of quant.workflows.testdata: every output_0.pb reproduced
    by onnxruntime within rtol 1e-3 / atol 1e-7 (onnx's backend test runner tolerances)."""
    sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    n = 0
    for d in sorted(root.glob("test_data_set_*")):
        x = numpy_helper.to_array(onnx.load_tensor_from_string((d / "input_0.pb").read_bytes()))
        y = numpy_helper.to_array(onnx.load_tensor_from_string((d / "output_0.pb").read_bytes()))
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(got, y, rtol=1e-3, atol=1e-7)
        n += 1
    return n


def _package(tmp_path, synth_dir, name="m-int8.tar.gz", model=None, **kw):
    src = save(model or provenance.stamp(mnist12_like(), {"scale": "1/255", "mean": 0, "std": 1, "layout": "NCHW"}, "ab" * 32),
               tmp_path / "m.onnx")
    return package.package_model(str(src), str(tmp_path / name), config=str(synth_config(tmp_path)), data_dir=str(synth_dir),
                                 log=lambda m: None, options=package.PackageOptions(**kw))


def test_archive_has_the_zoo_layout_and_passes_the_zoo_check(tmp_path, synth_dir):
    s = _package(tmp_path, synth_dir)
    with tarfile.open(tmp_path / "m-int8.tar.gz") as t:
        names = sorted(t.getnames())
        assert all(m.mtime == 0 and m.uname == "" and m.uid == 0 for m in t.getmembers())
        t.extractall(tmp_path / "unpacked", filter="data")
    assert names == ["m-int8", "m-int8/model.onnx"] + [f"m-int8/test_data_set_{i}{f}" for i in range(3)
                                                        for f in ("", "/input_0.pb", "/output_0.pb")]
    assert zoo_check(tmp_path / "unpacked" / "m-int8") == 3
    assert (tmp_path / "unpacked" / "m-int8" / "model.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    data = (tmp_path / "m-int8.tar.gz").read_bytes()
    assert s["md5"] == hashlib.md5(data).hexdigest() and s["sha256"] == hashlib.sha256(data).hexdigest()


def test_same_inputs_give_the_same_archive_bytes(tmp_path, synth_dir):
    a = _package(tmp_path, synth_dir, "a.tar.gz")
    b = _package(tmp_path, synth_dir, "a2.tar.gz")
    # the member folder is named after the archive; repackaging under the same name gives the same bytes
    c = _package(tmp_path, synth_dir, "a.tar.gz")
    assert a["sha256"] == c["sha256"] and a["sha256"] != b["sha256"]


def test_card_fragment_states_row_preprocessing_and_checksums(tmp_path, synth_dir):
    s = _package(tmp_path, synth_dir, count=2)
    card = (tmp_path / "m-int8.card.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| m-int8 |"))
    err = float(re.search(r"\| ([0-9.]+)% \|$", row).group(1))
    assert err == pytest.approx(100 * (1 - s["top1"]), abs=0.006)
    assert "| 12 |" in row and "input = (pixel * 1/255 - 0) / 1" in card and "layout NCHW" in card
    assert s["md5"] in card and s["sha256"] in card and "2 `test_data_set_N` folders" in card
    assert "Made by: unknown" in card  # no tune report beside m.onnx


def test_a_card_the_user_wrote_is_never_replaced(tmp_path, synth_dir):
    (tmp_path / "m-int8.card.md").write_text("my notes\n")
    with pytest.raises(UsageError, match="is not a model card this command wrote"):
        _package(tmp_path, synth_dir)
    assert (tmp_path / "m-int8.card.md").read_text() == "my notes\n" and not (tmp_path / "m-int8.tar.gz").exists()
    (tmp_path / "m-int8.card.md").unlink()
    _package(tmp_path, synth_dir)
    _package(tmp_path, synth_dir)  # its own card is replaced


@pytest.mark.parametrize("out", ["m.zip", "m.tgz", "bad name.tar.gz", ".tar.gz", "-x.tar.gz"])
def test_bad_output_names_are_refused(out):
    with pytest.raises(UsageError, match="must be NAME.tar.gz"):
        package.names(out)


def test_cli_refuses_an_output_that_is_the_model_and_writes_nothing(tmp_path, synth_dir):
    src = save(mnist12_like(), tmp_path / "m.tar.gz")
    before = src.read_bytes()
    r = run_cli("package", f"--input_model={src}", f"--output_model={src}", f"--config={synth_config(tmp_path)}", f"--data_dir={synth_dir}")
    assert r.returncode == 2 and "error:" in r.stderr and r.stderr.count("\n") == 1
    assert src.read_bytes() == before and not (tmp_path / "m.card.md").exists()


@pytest.mark.realdata
def test_package_of_the_tuned_mnist12(tmp_path, tuned_mnist12, mnist_dir):
    out, _ = tuned_mnist12
    r = run_cli("package", f"--input_model={out}", f"--output_model={tmp_path / 'mnist-12-int8.tar.gz'}", f"--data_dir={mnist_dir}")
    assert r.returncode == 0, r.stderr
    tune = json.loads(out.with_name("mnist-12-int8.report.json").read_text())
    assert f"Made by: `{tune['command']}`" in r.stdout
    assert f"{100 * (1 - tune['int8']['accuracy']):.2f}% |" in r.stdout  # the same 10k-image measurement as tune's
    assert "from " in r.stdout and "metadata" in r.stdout  # no --config: the model's own preprocessing
    with tarfile.open(tmp_path / "mnist-12-int8.tar.gz") as t:
        t.extractall(tmp_path / "u", filter="data")
    assert zoo_check(tmp_path / "u" / "mnist-12-int8") == 3
