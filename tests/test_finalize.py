"""Finishing touches on INC's int8 model (quant/finalize.py): float logits, compact names, no
unused opsets or zero bias zero points — onnxruntime must still run the same int8 kernels."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant import evaluation, finalize, models


def _qdq_fc(with_unused_opsets=True) -> onnx.ModelProto:
    """x -> Q -> DQ -> Gemm(DQ(w int8), DQ(b int32)) -> Q -> DQ -> y: what INC writes for a QDQ FC head."""
    rng = np.random.default_rng(0)
    w = rng.integers(-64, 64, (16, 10)).astype(np.int8)
    b = rng.integers(-500, 500, (10,)).astype(np.int32)
    c = lambda a, n: numpy_helper.from_array(np.asarray(a), n)  # noqa: E731
    inits = [c(w, "W_quantized"), c(np.float32(0.01), "W_scale"), c(np.int8(0), "W_zero_point"),
             c(b, "B_quantized"), c(np.array([0.0002], np.float32), "B_scale"), c(np.array([0], np.int32), "B_zero_point"),
             c(np.float32(0.02), "x_scale"), c(np.uint8(0), "x_zero_point"),
             c(np.float32(0.3), "y_scale"), c(np.uint8(100), "y_zero_point")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["x_quantized"], name="x_Gemm_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["x_quantized", "x_scale", "x_zero_point"], ["x_dequantized"], name="x_Gemm_DequantizeLinear"),
        helper.make_node("DequantizeLinear", ["W_quantized", "W_scale", "W_zero_point"], ["W_dequantized"], name="W_DequantizeLinear"),
        helper.make_node("DequantizeLinear", ["B_quantized", "B_scale", "B_zero_point"], ["B_dequantized"], name="B_DequantizeLinear"),
        helper.make_node("Gemm", ["x_dequantized", "W_dequantized", "B_dequantized"], ["y_QuantizeInput"], name="fc_quant"),
        helper.make_node("QuantizeLinear", ["y_QuantizeInput", "y_scale", "y_zero_point"], ["y_quantized"], name="y_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["y_quantized", "y_scale", "y_zero_point"], ["y"], name="y_DequantizeLinear"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    ops = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("ai.onnx.ml", 3)] if with_unused_opsets else [])
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(m, x):
    return evaluation.make_session(models.serialize(m)).run(None, {"x": x})[0]


def _executed(m):
    return [n.op_type for n in evaluation.onnxruntime_graph(models.serialize(m)).graph.node]


def test_float_outputs_removes_the_output_pair_and_onnxruntime_runs_a_float_qgemm():
    m = _qdq_fc()
    x = np.random.default_rng(1).random((50, 16), dtype=np.float32)
    out, changed = finalize.float_outputs(m)
    assert changed == ["y"] and [n.op_type for n in out.graph.node][-1] == "Gemm"
    q, f = _run(m, x), _run(out, x)
    assert np.all(np.abs(q - f) <= 0.3 / 2 + 1e-6)  # only the output rounding (half a step) is gone
    assert len(np.unique(np.round(f / 0.3, 3))) > len(np.unique(np.round(q / 0.3, 3)))  # finer than the 0.3 grid
    assert "QGemm" in _executed(out)  # still one int8 kernel, now with float output
    assert finalize.float_outputs(out) == (out, [])


def test_compact_names_and_zero_points_keep_outputs_and_kernels_and_save_bytes():
    m, _ = finalize.float_outputs(_qdq_fc())
    out, notes = finalize.finish(_qdq_fc())
    x = np.random.default_rng(2).random((20, 16), dtype=np.float32)
    assert np.array_equal(_run(m, x), _run(out, x))
    assert len(models.serialize(out)) < len(models.serialize(m))
    names = {t.name for t in out.graph.initializer}
    assert {"W.q", "W.s", "W.zp", "B.q", "B.s", "x.s", "x.zp"} <= names and "B.zp" not in names  # all-zero int32 zero point dropped
    assert [n.name for n in out.graph.node if n.op_type != "Gemm"] == [""] * 4 and out.graph.node[-1].name == "fc"
    assert "QGemm" in _executed(out)  # the int8 weight keeps its zero point: onnxruntime fuses only then
    assert [o.domain for o in out.opset_import] == [""] and any("opset imports" in n for n in notes)


def _requantized_chain(pool_scale=0.02) -> onnx.ModelProto:
    """x -> Q -> DQ -> MaxPool -> Q -> DQ -> Transpose -> Q -> DQ -> Reshape -> Q -> DQ -> Gemm: INC's
    re-quantization after every pool/layout op (the MaxPool's pair uses ``pool_scale``)."""
    rng = np.random.default_rng(3)
    c = lambda a, n: numpy_helper.from_array(np.asarray(a), n)  # noqa: E731
    inits = [c(np.float32(0.02), "s"), c(np.uint8(3), "z"), c(np.float32(pool_scale), "ps"), c(np.uint8(3), "pz"),
             c(rng.integers(-64, 64, (2 * 3 * 3 * 4, 10)).astype(np.int8), "W.q"), c(np.float32(0.01), "W.s"), c(np.int8(0), "W.zp"),
             c(np.array([-1, 2 * 3 * 3 * 4], np.int64), "shape")]
    qdq = lambda x, y, s, z: [helper.make_node("QuantizeLinear", [x, s, z], [y + ".q"]),  # noqa: E731
                              helper.make_node("DequantizeLinear", [y + ".q", s, z], [y])]
    nodes = [*qdq("x", "xd", "s", "z"),
             helper.make_node("MaxPool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]), *qdq("p", "pd", "ps", "pz"),
             helper.make_node("Transpose", ["pd"], ["t"], perm=[0, 2, 3, 1]), *qdq("t", "td", "ps", "pz"),
             helper.make_node("Reshape", ["td", "shape"], ["r"]), *qdq("r", "rd", "ps", "pz"),
             helper.make_node("DequantizeLinear", ["W.q", "W.s", "W.zp"], ["Wd"]),
             helper.make_node("Gemm", ["rd", "Wd"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_drop_identity_requantization_is_exact_and_onnxruntime_runs_the_same_kernels():
    m = _requantized_chain()
    out, pairs = finalize.drop_identity_requantization(m)
    assert pairs == 2  # after the MaxPool and the Transpose; the pair in front of the Gemm stays
    assert [n.op_type for n in out.graph.node] == ["QuantizeLinear", "DequantizeLinear", "MaxPool", "Transpose", "Reshape",
                                                   "QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Gemm"]
    x = np.random.default_rng(4).normal(0, 2, (32, 4, 6, 6)).astype(np.float32)
    assert np.array_equal(_run(m, x), _run(out, x))
    assert _executed(out) == _executed(m) and "QGemm" in _executed(out)
    assert len(models.serialize(out)) < len(models.serialize(m))
    assert finalize.drop_identity_requantization(out) == (out, 0)


def test_drop_identity_requantization_keeps_a_pair_that_changes_the_scale():
    m = _requantized_chain(pool_scale=0.05)  # the pool's output is re-quantized on a coarser grid: not an identity
    out, pairs = finalize.drop_identity_requantization(m)
    assert pairs == 1 and [n.op_type for n in out.graph.node][:5] == ["QuantizeLinear", "DequantizeLinear", "MaxPool",
                                                                      "QuantizeLinear", "DequantizeLinear"]
    x = np.random.default_rng(5).normal(0, 2, (8, 4, 6, 6)).astype(np.float32)
    assert np.array_equal(_run(m, x), _run(out, x))
