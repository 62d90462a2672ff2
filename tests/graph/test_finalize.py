"""Finishing touches on INC's int8 model (quant/graph/finalize.py): float logits, compact names, no
unused opsets or zero bias zero points — onnxruntime must still run the same int8 kernels."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.graph import finalize, models
from quant.runtime import sessions


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
    return sessions.make_session(models.serialize(m)).run(None, {"x": x})[0]


def _executed(m):
    return [n.op_type for n in sessions.onnxruntime_graph(models.serialize(m)).graph.node]


def test_float_outputs_removes_the_output_pair_and_onnxruntime_runs_a_float_qgemm():
    m = _qdq_fc()
    x = np.random.default_rng(1).random((50, 16), dtype=np.float32)
    r = finalize.float_outputs(m)
    out, changed = r.model, r.names
    assert changed == ("y",) and [n.op_type for n in out.graph.node][-1] == "Gemm"
    assert r.note == "float outputs (the QuantizeLinear/DequantizeLinear pair between the last int8 op and the output removed): y"
    q, f = _run(m, x), _run(out, x)
    assert np.all(np.abs(q - f) <= 0.3 / 2 + 1e-6)  # only the output rounding (half a step) is gone
    assert len(np.unique(np.round(f / 0.3, 3))) > len(np.unique(np.round(q / 0.3, 3)))  # finer than the 0.3 grid
    assert "QGemm" in _executed(out)  # still one int8 kernel, now with float output
    r = finalize.float_outputs(out)
    assert (r.model, r.names, r.note) == (out, (), None)


def _with_tail(m: onnx.ModelProto, tail: str) -> onnx.ModelProto:
    """The FC head's output goes on through fp32 ops before the graph output, as INC leaves them:
    a softmax head, or a term added to the logits."""
    m.graph.output[0].name = "probs"
    if tail == "softmax":
        m.graph.node.append(helper.make_node("Softmax", ["y"], ["probs"], name="softmax", axis=-1))
    else:  # y + 2 * (a per-class term on the logits' 0.3 grid), then a Flatten
        m.graph.initializer.extend([numpy_helper.from_array(np.float32(2), "k"),
                                    numpy_helper.from_array((0.3 * (np.arange(10) % 3)).astype(np.float32), "term")])
        m.graph.node.extend([helper.make_node("Mul", ["term", "k"], ["term2"]), helper.make_node("Add", ["y", "term2"], ["yt"]),
                             helper.make_node("Flatten", ["yt"], ["probs"])])
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("tail", ["softmax", "add a term"])
def test_float_outputs_reaches_the_head_through_fp32_tail_ops(tail):
    """A softmax head's logits were quantized in front of the Softmax (the Keras-style classifier had 38 tied
    test images in int8, 0 in fp32); a term added to the logits had the same pair in front of the Add."""
    m = _with_tail(_qdq_fc(), tail)
    x = np.random.default_rng(3).random((200, 16), dtype=np.float32)
    r = finalize.float_outputs(m)
    out, changed = r.model, r.names
    assert changed == ("y",) and not any(n.op_type == "QuantizeLinear" and n.input[0] == "y_QuantizeInput" for n in out.graph.node)
    assert "QGemm" in _executed(out)  # the head is still one int8 kernel, now with float output
    q, f = _run(m, x), _run(out, x)
    top2 = lambda a: np.sort(a, axis=1)[:, -2:]  # noqa: E731
    assert np.sum(top2(q)[:, 0] == top2(q)[:, 1]) > 0 and np.sum(top2(f)[:, 0] == top2(f)[:, 1]) == 0  # ties gone
    ref = _run(_with_tail(_qdq_fc(), tail), x)
    assert np.array_equal(q, ref)  # float_outputs did not touch its input


def test_float_outputs_does_not_go_past_a_requantized_or_int8_op():
    """A pair that feeds an int8 op (another Gemm) or a tail that is re-quantized is not an output pair."""
    m = _qdq_fc()
    m.graph.output[0].name = "z"
    w2 = numpy_helper.from_array(np.eye(10, dtype=np.int8), "W2")
    m.graph.initializer.extend([w2, numpy_helper.from_array(np.float32(0.1), "W2s"), numpy_helper.from_array(np.int8(0), "W2z")])
    m.graph.node.extend([helper.make_node("DequantizeLinear", ["W2", "W2s", "W2z"], ["W2d"]),
                         helper.make_node("Gemm", ["y", "W2d"], ["z"], name="fc2")])
    onnx.checker.check_model(m)
    r = finalize.float_outputs(m)
    assert (r.model, r.names) == (m, ())


def test_compact_names_and_zero_points_keep_outputs_and_kernels_and_save_bytes():
    m = finalize.float_outputs(_qdq_fc()).model
    out, notes = finalize.finish(_qdq_fc())
    x = np.random.default_rng(2).random((20, 16), dtype=np.float32)
    assert np.array_equal(_run(m, x), _run(out, x))
    assert len(models.serialize(out)) < len(models.serialize(m))
    names = {t.name for t in out.graph.initializer}
    # constants c<i> in the order nodes first read them, a quantized tensor's group keeping its suffixes;
    # the all-zero int32 bias zero point is gone (B is c2: no c2.zp), and so are the logits' (float outputs)
    assert names == {"c0.s", "c0.zp", "c1.q", "c1.s", "c1.zp", "c2.q", "c2.s"}
    assert [n.output[0] for n in out.graph.node[:2]] == ["x.q", "x.dq"]  # activations keep their (compact) names
    assert [n.output[0] for n in out.graph.node[2:4]] == ["c1.dq", "c2.dq"]  # a weight's DequantizeLinear: its group's name
    assert any("constant name(s) shortened" in n for n in notes)
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
    r = finalize.drop_identity_requantization(m)
    out, pairs = r.model, r.count
    assert pairs == 2  # after the MaxPool and the Transpose; the pair in front of the Gemm stays
    assert [n.op_type for n in out.graph.node] == ["QuantizeLinear", "DequantizeLinear", "MaxPool", "Transpose", "Reshape",
                                                   "QuantizeLinear", "DequantizeLinear", "DequantizeLinear", "Gemm"]
    x = np.random.default_rng(4).normal(0, 2, (32, 4, 6, 6)).astype(np.float32)
    assert np.array_equal(_run(m, x), _run(out, x))
    assert _executed(out) == _executed(m) and "QGemm" in _executed(out)
    assert len(models.serialize(out)) < len(models.serialize(m))
    r = finalize.drop_identity_requantization(out)
    assert (r.model, r.count, r.note) == (out, 0, None)


def test_drop_identity_requantization_keeps_a_pair_that_changes_the_scale():
    m = _requantized_chain(pool_scale=0.05)  # the pool's output is re-quantized on a coarser grid: not an identity
    r = finalize.drop_identity_requantization(m)
    out, pairs = r.model, r.count
    assert pairs == 1 and [n.op_type for n in out.graph.node][:5] == ["QuantizeLinear", "DequantizeLinear", "MaxPool",
                                                                      "QuantizeLinear", "DequantizeLinear"]
    x = np.random.default_rng(5).normal(0, 2, (8, 4, 6, 6)).astype(np.float32)
    assert np.array_equal(_run(m, x), _run(out, x))


def _with_an_if_reading_an_outer_constant() -> onnx.ModelProto:
    """y = If(cond, then: p + K, else: p - K) * W, p = MaxPool(Conv(x)): W is also a graph input
    (overridable), K (``K_scale``, a name compact_names would shorten) is read only inside the branches,
    the Conv's output is called ``c0`` and the then-branch defines ``c2`` (names compact_constants would
    pick), and the Conv and MaxPool carry explicit default attributes."""
    c = lambda a, n: numpy_helper.from_array(np.asarray(a, np.float32), n)  # noqa: E731
    then = helper.make_graph([helper.make_node("Add", ["p", "K_scale"], ["c2"]), helper.make_node("Identity", ["c2"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 4, 3, 3])])
    other = helper.make_graph([helper.make_node("Sub", ["p", "K_scale"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 4, 3, 3])])
    nodes = [helper.make_node("Conv", ["x", "Conv_weights.q", "Conv_bias"], ["c0"], group=1, dilations=[1, 1],
                              strides=[1, 1], pads=[1, 1, 1, 1], auto_pad="NOTSET", kernel_shape=[3, 3]),
             helper.make_node("MaxPool", ["c0"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0],
                              auto_pad="NOTSET", ceil_mode=0, storage_order=0),
             helper.make_node("If", ["cond"], ["b"], then_branch=then, else_branch=other),
             helper.make_node("Mul", ["b", "W"], ["y"])]
    rng = np.random.default_rng(6)
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6]),
                                       helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                       helper.make_tensor_value_info("W", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 3, 3])],
                          [c(rng.normal(size=(4, 1, 3, 3)), "Conv_weights.q"), c(rng.normal(size=4), "Conv_bias"),
                           c([0.5], "K_scale"), c([3.0], "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run_if(m, x, cond, w=None):
    feeds = {"x": x, "cond": np.array(cond)} | ({"W": w} if w is not None else {})
    return sessions.make_session(models.serialize(m)).run(None, feeds)[0]


def test_compact_constants_renames_only_constants_and_keeps_what_is_read_by_name():
    m = _with_an_if_reading_an_outer_constant()
    r = finalize.compact_constants(m)
    out, renamed = r.model, r.count
    onnx.checker.check_model(out)
    # the Conv's constants get c1.q (its suffix kept) and c3 (c0 is an activation's name, c2 a name the
    # then-branch defines); W (a graph input) and K_scale (read inside the If's branches) keep their
    # names; activations keep theirs
    assert renamed == 2 and [t.name for t in out.graph.initializer] == ["c1.q", "c3", "K_scale", "W"]
    assert list(out.graph.node[0].input) == ["x", "c1.q", "c3"] and [n.output[0] for n in out.graph.node] == ["c0", "p", "b", "y"]
    named = finalize.compact_names(m).model  # INC-style names too: K_scale is read by name inside the branches
    assert "K_scale" in {t.name for t in named.graph.initializer}
    x = np.random.default_rng(7).normal(size=(3, 1, 6, 6)).astype(np.float32)
    for cond in (True, False):
        assert np.array_equal(_run_if(m, x, cond), _run_if(out, x, cond))
        assert np.array_equal(_run_if(m, x, cond, np.float32([2.0])), _run_if(out, x, cond, np.float32([2.0])))
        assert np.array_equal(_run_if(m, x, cond), _run_if(named, x, cond))
    assert len(models.serialize(out)) < len(models.serialize(m))
    assert finalize.compact_constants(out).count == 0


def test_compact_constants_avoids_sparse_initializer_and_value_info_names():
    """A dense constant must not take the name of a sparse initializer or of a value_info entry:
    onnxruntime would read one constant for both (it only warns) and outputs would change."""
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.float32([5.0]), "c0"),
                                       numpy_helper.from_array(np.int64([1]), "c0_idx"), [2])
    nodes = [helper.make_node("Add", ["x", "K"], ["h"]), helper.make_node("Add", ["h", "c0"], ["c1"]),
             helper.make_node("Mul", ["c1", "L"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(np.float32([1.0, 2.0]), "K"), numpy_helper.from_array(np.float32([3.0, 4.0]), "L")],
                          value_info=[helper.make_tensor_value_info("c1", TensorProto.FLOAT, [2])], sparse_initializer=[sparse])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    out = finalize.compact_constants(m).model
    onnx.checker.check_model(out)
    assert [t.name for t in out.graph.initializer] == ["c2", "c3"]
    x = np.float32([1.0, 1.0])
    run = lambda mm: sessions.make_session(models.serialize(mm)).run(None, {"x": x})[0]  # noqa: E731
    assert np.array_equal(run(out), run(m)) and np.array_equal(run(m), np.float32([6.0, 32.0]))


def test_drop_unused_initializers_keeps_a_constant_read_only_inside_a_subgraph():
    m = _with_an_if_reading_an_outer_constant()
    models.drop_unused_initializers(m)
    assert "K_scale" in {t.name for t in m.graph.initializer}
    assert models.consumers(m)["K_scale"] == 1


def test_drop_default_attributes_is_exact_and_keeps_every_other_attribute():
    m = _with_an_if_reading_an_outer_constant()
    r = finalize.drop_default_attributes(m)
    out, n = r.model, r.count
    onnx.checker.check_model(out)
    attrs = lambda mm: [sorted(a.name for a in node.attribute) for node in mm.graph.node[:2]]  # noqa: E731
    # Conv: group=1, dilations/strides all 1 and auto_pad NOTSET go, its pads [1,1,1,1] stay;
    # MaxPool: pads all 0, auto_pad, ceil_mode 0 and storage_order 0 go, its strides [2,2] stay
    assert n == 8 and attrs(out) == [["kernel_shape", "pads"], ["kernel_shape", "strides"]]
    x = np.random.default_rng(8).normal(size=(5, 1, 6, 6)).astype(np.float32)
    assert np.array_equal(_run_if(m, x, True), _run_if(out, x, True))
    assert _executed(out) == _executed(m)
    r = finalize.drop_default_attributes(out)
    assert (r.model, r.count, r.note) == (out, 0, None)


@pytest.mark.parametrize("opset, axis, dropped", [(11, -1, False), (11, 1, True), (13, -1, True), (13, 1, False)])
def test_drop_default_attributes_reads_the_default_of_the_models_opset(opset, axis, dropped):
    """Softmax's default axis is 1 up to opset 12 and -1 from 13: dropping axis=-1 from an opset-11
    Softmax would change its output."""
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=axis)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7
    r = finalize.drop_default_attributes(m)
    out, n = r.model, r.count
    assert n == int(dropped) and len(out.graph.node[0].attribute) == int(not dropped)
    x = np.random.default_rng(9).normal(size=(2, 3, 4)).astype(np.float32)
    run = lambda mm: sessions.make_session(models.serialize(mm)).run(None, {"x": x})[0]  # noqa: E731
    assert np.array_equal(run(out), run(m))


def test_drop_identity_requantization_keeps_a_pair_an_if_body_reads():
    """x -> Q -> DQ -> MaxPool -> Q -> DQ -> d; d feeds a MaxPool (an exact op: the pair would go) and an
    If branch reads d by name: removing the pair would leave the branch reading a missing tensor."""
    then = helper.make_graph([helper.make_node("Relu", ["d"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 1, 2, 2])])
    other = helper.make_graph([helper.make_node("Neg", ["d"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 1, 2, 2])])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("MaxPool", ["xd"], ["p"], kernel_shape=[1, 1]),
             helper.make_node("QuantizeLinear", ["p", "s", "z"], ["pq"]), helper.make_node("DequantizeLinear", ["pq", "s", "z"], ["d"]),
             helper.make_node("MaxPool", ["d"], ["y"], kernel_shape=[1, 1]),
             helper.make_node("If", ["cond"], ["b"], then_branch=then, else_branch=other)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2]),
                                       helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 1, 2, 2])],
                          [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    assert finalize.drop_identity_requantization(m).count == 0
    finished, _ = finalize.finish(m)
    onnx.checker.check_model(finished)
    feeds = {"x": np.float32([[[[0.3, -0.2], [1.0, 0.05]]]]), "cond": np.array(False)}
    run = lambda mm: sessions.make_session(models.serialize(mm)).run(None, feeds)  # noqa: E731
    assert all(np.array_equal(a, b) for a, b in zip(run(m), run(finished)))


def test_drop_unused_opsets_keeps_a_domain_only_an_if_body_uses():
    """A com.microsoft op inside a body needs its opset import (dropping it made the finished model fail
    the ONNX checker: exit 1 on a model tuning had accepted)."""
    from helpers import mnist12_like, read_in_if_body

    m = read_in_if_body(mnist12_like(batch="N"), "p2", initializer=False)
    body = next(a.g for n in m.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
    body.node.insert(1, helper.make_node("Gelu", [body.node[0].output[0]], ["then_gelu"], domain="com.microsoft"))
    body.node[2].input[0] = "then_gelu"
    m.opset_import.extend([helper.make_opsetid("com.microsoft", 1), helper.make_opsetid("ai.onnx.ml", 3)])
    out = finalize.drop_unused_opsets(m).model
    assert sorted(o.domain for o in out.opset_import) == ["", "com.microsoft"]
    onnx.checker.check_model(out)


def test_finish_runs_the_listed_passes_in_order_and_collects_their_notes(monkeypatch):
    seen = []

    def step(name, note):
        def apply(m):
            seen.append(name)
            return finalize.PassResult(m, note)
        return apply

    monkeypatch.setattr(finalize, "ALL", (step("a", "note a"), step("b", None), step("c", "note c")))
    m = _qdq_fc()
    out, notes = finalize.finish(m)
    assert seen == ["a", "b", "c"] and notes == ["note a", "note c"] and out is m
