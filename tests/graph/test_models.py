import copy
import hashlib
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_cli, synth_config
from helpers import mnist12_like, pattern_linear, read_in_if_body, save, with_external_data_outside
from onnx import TensorProto, helper, numpy_helper

from quant.errors import ModelError
from quant.graph import models


def test_signature_of_mnist12_topology(tmp_path):
    m = models.load(save(mnist12_like(), tmp_path / "m.onnx"))
    sig = models.signature(m.proto, m.path, layout="NCHW")
    assert (sig.input_name, sig.input_shape, sig.output_shape, sig.fixed_batch) == ("Input3", (1, 1, 28, 28), (1, 10), 1)
    assert models.layout_of(sig) == "NCHW" and m.opset == 12 and not models.is_quantized(m.proto)


def test_dynamic_batch_and_explicit_input_name():
    sig = models.signature(pattern_linear("N", "flat"), "m", input_name="input", layout="flat")
    assert sig.fixed_batch is None and models.layout_of(sig) == "flat"
    with pytest.raises(ModelError, match="no input named 'x'"):
        models.signature(pattern_linear(), "m", input_name="x")


def test_layout_contradiction_names_both():
    with pytest.raises(ModelError, match=r"shape \['N', 28, 28, 1\] but preprocessing.layout is NCHW"):
        models.signature(pattern_linear("N", "NHWC"), "m", layout="NCHW")


def _model(inputs, outputs, nodes):
    g = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("model,words", [
    (_model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])], [helper.make_node("Relu", ["x"], ["y"])]),
     "expected \\[N,1,28,28\\]"),
    (_model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 784])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 784])], [helper.make_node("Relu", ["x"], ["y"])]),
     "expected \\[N,10\\] class scores"),
    (_model([helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 784]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 784])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 784])], [helper.make_node("Add", ["x", "z"], ["y"])]),
     "expected one input"),
    (_model([helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 784])],
            [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 784])], [helper.make_node("Identity", ["x"], ["y"])]),
     "expected FLOAT"),
])
def test_not_an_mnist_classifier(model, words):
    with pytest.raises(ModelError, match=words):
        models.signature(model, "m.onnx")


@pytest.mark.parametrize("content,words", [(b"", "empty"), (b"\x8a\xff\x00garbage" * 50, "not a valid ONNX"), ])
def test_bad_files(tmp_path, content, words):
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelError, match=words):
        models.load(p)


def test_truncated_missing_dir(tmp_path):
    raw = mnist12_like().SerializeToString()
    p = tmp_path / "t.onnx"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelError, match="t.onnx"):
        models.load(p)
    with pytest.raises(ModelError, match="not found"):
        models.load(tmp_path / "none.onnx")
    with pytest.raises(ModelError, match="is a directory"):
        models.load(tmp_path)


def test_external_data_outside_folder_is_refused(tmp_path):
    m = with_external_data_outside(mnist12_like())
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "m.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(ModelError, match="outside the model's folder; refusing"):
        models.load(p)


def test_size_limit(tmp_path, monkeypatch):
    p = save(mnist12_like(), tmp_path / "m.onnx")
    monkeypatch.setattr(models, "MAX_MODEL_BYTES", 100)
    with pytest.raises(ModelError, match="over the 100 byte limit"):
        models.load(p)


def test_precision_of_a_quantized_graph():
    """QLinear ops and ops fed by uint8 tensors are int8; the rest fp32."""
    f = lambda *a: helper.make_tensor(*a)  # noqa: E731
    inits = [f("s", TensorProto.FLOAT, [], [0.1]), f("z", TensorProto.UINT8, [], [0]),
             f("shape", TensorProto.INT64, [2], [1, 784])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("MaxPool", ["xq"], ["pq"], name="pool", kernel_shape=[1, 1]),
             helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["p"], name="dq"),
             helper.make_node("Reshape", ["p", "shape"], ["y"], name="reshape")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 784])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    s = models.precision_summary(m)
    assert s == {"int8": {"MaxPool": 1}, "fp32": {"Reshape": 1}, "convert": {"DequantizeLinear": 1, "QuantizeLinear": 1}}
    assert models.is_quantized(m)


def test_size_breakdown_counts_weights():
    m = mnist12_like()
    raw = m.SerializeToString()
    b = models.size_breakdown(m, len(raw))
    n_float = (8 * 25 + 8 + 16 * 8 * 25 + 16 + 2560 + 10)
    assert b["weight_bytes_by_dtype"] == {"float": 4 * n_float, "int64": 16}
    assert b["graph_overhead_bytes"] == len(raw) - 4 * n_float - 16 > 0



# ------------------------------------------------------------------ external data (issue 13)
def save_external(model: onnx.ModelProto, folder: Path) -> Path:
    """``model`` saved as folder/m.onnx with every tensor in folder/weights.bin (``model`` itself unchanged)."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(copy.deepcopy(model), folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return folder / "m.onnx"


def run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


X = np.random.default_rng(0).random((3, 784), dtype=np.float32)


def test_external_data_is_read_beside_the_model_never_in_the_working_folder(tmp_path, monkeypatch):
    m = pattern_linear()
    want = run(m.SerializeToString(), X)
    path = save_external(m, tmp_path / "a")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert np.array_equal(run(models.load(path).raw, X), want)
    # a different weights.bin of the same size here: onnxruntime, given the .onnx file's bytes, would read this one
    (cwd / "weights.bin").write_bytes(np.ones((tmp_path / "a" / "weights.bin").stat().st_size // 4, np.float32).tobytes())
    assert np.array_equal(run(models.load(path).raw, X), want)
    monkeypatch.chdir(tmp_path)  # a relative model path resolves against its own folder too
    assert np.array_equal(run(models.load(Path("a") / "m.onnx").raw, X), want)


def test_loaded_model_says_what_its_bytes_and_sha256_cover(tmp_path):
    m = pattern_linear()
    plain_path = save(m, tmp_path / "plain.onnx")
    plain = models.load(plain_path)
    file_sha = hashlib.sha256(plain_path.read_bytes()).hexdigest()
    assert plain.raw == plain_path.read_bytes() and plain.sha256 == plain.file_sha256 == file_sha
    assert plain.describe() == {"path": str(plain_path), "bytes": plain_path.stat().st_size, "sha256": file_sha, "opset": 13}
    path = save_external(m, tmp_path / "a")
    ext = models.load(path)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in onnx.load_model_from_string(ext.raw).graph.initializer)
    d = ext.describe()
    assert (d["bytes"], d["sha256"]) == (len(ext.raw), hashlib.sha256(ext.raw).hexdigest())
    assert d["external_data"]["files"] == {"weights.bin": (tmp_path / "a" / "weights.bin").stat().st_size}
    assert (d["external_data"]["onnx_file_bytes"], d["external_data"]["onnx_file_sha256"]) == (
        path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
    assert "inlined" in d["external_data"]["note"]


def _edit_external(path: Path, **info) -> None:
    """Set external-data keys (offset, length, location) on every tensor of the saved model."""
    m = onnx.load(path, load_external_data=False)
    for t in m.graph.initializer:
        kv = {e.key: e.value for e in t.external_data} | {k: str(v) for k, v in info.items()}
        del t.external_data[:]
        for k, v in kv.items():
            t.external_data.add(key=k, value=v)
    path.write_bytes(m.SerializeToString())


@pytest.mark.parametrize("case", ["data file over the limit", "data file + .onnx over the limit", "length past the end of the file",
                                  "offset past the end of the file", "inlined bytes over the limit", "negative offset"])
def test_external_data_sizes_are_checked_before_reading(case, tmp_path, monkeypatch):
    path = save_external(pattern_linear(), tmp_path / "a")
    weights = tmp_path / "a" / "weights.bin"
    size = weights.stat().st_size
    if case.startswith("data file"):
        with open(weights, "r+b") as f:
            f.truncate((256 << 20) + (1 if case == "data file over the limit" else -1))  # sparse: no disk used, never read
    elif case.startswith("length"):
        _edit_external(path, offset=0, length=1 << 62)
    elif case.startswith("offset"):
        _edit_external(path, offset=size + 1)
    elif case.startswith("inlined"):  # both tensors claim the whole file: each would be a copy of it
        m = onnx.load(path, load_external_data=False)
        for t in m.graph.initializer:
            t.ClearField("external_data")
            t.external_data.add(key="location", value="weights.bin")
        path.write_bytes(m.SerializeToString())
        monkeypatch.setattr(models, "MAX_MODEL_BYTES", path.stat().st_size + 2 * size - 1)
    else:
        _edit_external(path, offset=-4)
    words = {"data file over the limit": f"weights.bin: external data of model {path} is 268435457 bytes, over the 268435456 byte limit",
             "data file + .onnx over the limit": f"{path}: model with its external data is {path.stat().st_size + (256 << 20) - 1} bytes, over",
             "length past the end of the file": f"{path}: tensor 'W' needs bytes 0..{1 << 62} of weights.bin, which has {size}",
             "offset past the end of the file": f"needs bytes {size + 1}..",
             "inlined bytes over the limit": f"{path}: model with its external data is {path.stat().st_size + 2 * size} bytes, over",
             "negative offset": "tensor 'W' has an invalid external data offset or length"}[case]
    t0 = time.monotonic()
    with pytest.raises(ModelError) as e:
        models.load(path)
    assert words in str(e.value) and time.monotonic() - t0 < 5


def test_external_data_that_is_not_a_regular_file_or_leaves_the_folder_is_refused(tmp_path):
    path = save_external(pattern_linear(), tmp_path / "a")
    weights = tmp_path / "a" / "weights.bin"
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(ModelError, match=f"^{weights}: external data of model {path} is a FIFO"):
        models.load(path)
    weights.unlink()
    weights.symlink_to("/dev/zero")  # a link inside the folder to a file outside it
    with pytest.raises(ModelError, match="references external data 'weights.bin' outside the model's folder"):
        models.load(path)
    weights.unlink()
    with pytest.raises(ModelError, match=f"^{weights}: external data of model {path} not found"):
        models.load(path)


def test_external_data_in_a_subgraph_is_checked_too(tmp_path):
    """Tensors inside If/Loop bodies are walked as well (onnxruntime would resolve them against the working folder)."""
    inner = with_external_data_outside(pattern_linear())
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["logits"], then_branch=inner.graph, else_branch=pattern_linear().graph)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 784])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [cond])
    (tmp_path / "sub").mkdir()
    p = save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "sub" / "m.onnx")
    with pytest.raises(ModelError, match="references external data '../../etc/passwd' outside the model's folder"):
        models.load(p)


def test_cli_runs_an_external_data_model_from_another_folder(tmp_path, synth_dir):
    """check-test-data and benchmark from a working folder holding a wrong weights.bin of the same size."""
    m = pattern_linear()
    path = save_external(m, tmp_path / "a")
    td = tmp_path / "td" / "test_data_set_0"
    td.mkdir(parents=True)
    (td / "input_0.pb").write_bytes(numpy_helper.from_array(X[:1], "input").SerializeToString())
    (td / "output_0.pb").write_bytes(numpy_helper.from_array(run(m.SerializeToString(), X[:1]), "logits").SerializeToString())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "weights.bin").write_bytes(np.ones((tmp_path / "a" / "weights.bin").stat().st_size // 4, np.float32).tobytes())
    r = run_cli("check-test-data", f"--input_model={path}", "--test_data", str(tmp_path / "td"), cwd=cwd, timeout=120)
    assert r.returncode == 0 and "PASS" in r.stdout, r.stderr
    report = tmp_path / "b.json"
    r = run_cli("benchmark", "--mode=performance", f"--input_model={path}", f"--config={synth_config(tmp_path, {'preprocessing': {'layout': 'flat'}})}",
                f"--data_dir={synth_dir}",
                "--iterations=2", "--warmup=0", "--no_plots", f"--report={report}", cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr
    entry = json.loads(report.read_text())["model"]
    assert entry["external_data"]["files"] == {"weights.bin": (tmp_path / "a" / "weights.bin").stat().st_size}


@pytest.mark.realdata
def test_zoo_models(models_dir):
    fp32 = models.load(models_dir / "mnist-12.onnx")
    int8 = models.load(models_dir / "mnist-12-int8.onnx")
    assert models.signature(fp32.proto, fp32.path).input_name == "Input3"
    models.require_fp32(fp32)
    with pytest.raises(ModelError, match="already quantized .*QLinearConv"):
        models.require_fp32(int8)
    s = models.precision_summary(int8.proto)
    assert s["int8"]["QLinearConv"] == 2 and s["int8"]["QLinearMatMul"] == 1
    # the zoo int8 dequantizes before the 2nd MaxPool and the Reshape (SOURCES.md)
    assert s["fp32"] == {"MaxPool": 1, "Reshape": 1}


def test_sort_nodes_puts_an_if_after_what_its_body_reads_and_keeps_valid_orders():
    """neural-compressor sorted its candidates without the reads inside If bodies (the If before the pool
    whose output the body reads: the ONNX checker refuses the file); sort_nodes moves only what must move."""
    m = read_in_if_body(mnist12_like(batch="N"), "p2", initializer=False)
    before = m.SerializeToString()
    assert models.sort_nodes(m) == 0 and m.SerializeToString() == before  # already valid: untouched bytes
    first = [n for n in m.graph.node if n.name in ("CondMin", "Cond", "If")]  # the If right after its condition,
    nodes = first + [n for n in m.graph.node if n.name not in ("CondMin", "Cond", "If")]  # before the pool, as INC wrote it
    shuffled = nodes
    del m.graph.node[:]
    m.graph.node.extend(copy.deepcopy(shuffled))
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(m)
    assert models.sort_nodes(m) > 0
    onnx.checker.check_model(m)
    order = [n.name for n in m.graph.node]
    assert order.index("If") == order.index("Pool2") + 1  # right after the pool its body reads, nothing else moved
    assert [x for x in order if x != "If"] == [n.name for n in nodes if n.name != "If"]



@pytest.mark.parametrize("op,domain,words", [
    ("Gelu", "com.microsoft", "ops outside the standard ONNX domain (com.microsoft.Gelu)"),
    ("QuantizeLinear", "", "is already quantized (DequantizeLinear, QuantizeLinear)"),
])
def test_require_fp32_looks_inside_if_bodies(op, domain, words, tmp_path):
    """An op inside an If body counts like one at the top level (a com.microsoft op in a body used to pass
    the check and end as exit 1 when the finished model lost its opset import)."""
    m = read_in_if_body(mnist12_like(), "p2", initializer=False)
    body = next(a.g for n in m.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
    if op == "Gelu":
        body.node.insert(1, helper.make_node("Gelu", [body.node[0].output[0]], ["then_gelu"], domain=domain))
        body.node[2].input[0] = "then_gelu"
        m.opset_import.append(helper.make_opsetid(domain, 1))
    else:
        body.initializer.extend([numpy_helper.from_array(np.array(0.1, np.float32), "then_qs"),
                                 numpy_helper.from_array(np.array(0, np.uint8), "then_qz")])
        body.node.insert(1, helper.make_node("QuantizeLinear", [body.node[0].output[0], "then_qs", "then_qz"], ["then_q"]))
        body.node.insert(2, helper.make_node("DequantizeLinear", ["then_q", "then_qs", "then_qz"], ["then_dq"]))
        body.node[3].input[0] = "then_dq"
    lm = models.load(save(m, tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match=re.escape(words)):
        models.require_fp32(lm)


def test_node_reads_and_subgraph_reads_count_a_body_that_outputs_an_outer_tensor():
    """A branch may output an outer tensor as it is, with no node: that is a read too, for the sort and
    the batch rewrite (node_reads) as for the renaming guards (subgraph_reads), which share one walk."""
    passthrough = helper.make_graph([], "then", [], [helper.make_tensor_value_info("p2", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["p1"], ["e_o"])], "else", [],
                              [helper.make_tensor_value_info("e_o", TensorProto.FLOAT, None)])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=passthrough, else_branch=other)
    assert models.node_reads(node) == {"cond", "p2", "p1", "e_o"}
    g = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert models.subgraph_reads(helper.make_model(g)) == {"p2", "p1", "e_o"}
