import pytest
from onnx import TensorProto, helper

from helpers import mnist12_like, pattern_linear, save, with_external_data_outside
from quant import models
from quant.errors import ModelError


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
