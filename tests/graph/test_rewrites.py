"""Exact graph rewrites (quant/graph/rewrites.py): each keeps the outputs and does what it says, on
synthetic graphs of every classifier shape; the zoo models are covered in test_prepare."""

import numpy as np
import onnx
import pytest
from helpers import CLASSIFIERS, _t, fitted_classifier, mnist12_like, pattern_images, pattern_linear, read_in_if_body
from onnx import TensorProto, helper, numpy_helper

from quant.graph import models, prepare, rewrites
from quant.runtime import evaluation


def _same(a, b, x, input_name):
    return evaluation.check_same_outputs(models.serialize(a), models.serialize(b), x, input_name, batch=len(x))


def _x(shape=(9, 1, 28, 28), seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _ops(m):
    return [n.op_type for n in m.graph.node]


def test_fold_constants_turns_a_weight_reshape_into_an_initializer():
    m = mnist12_like(batch="N")
    w = next(t for t in m.graph.initializer if t.name == "W3")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w).reshape(16, 16, 10), "W3"))
    m.graph.initializer.append(numpy_helper.from_array(np.array([256, 10], np.int64), "w_shape"))
    m.graph.node.insert(0, helper.make_node("Reshape", ["W3", "w_shape"], ["W3r"], name="w_reshape"))
    next(n for n in m.graph.node if n.op_type == "MatMul").input[1] = "W3r"
    out, note = rewrites.fold_constants(m)
    assert "folded 1 constant node(s)" in note and "w_reshape" in note
    assert "Reshape" not in _ops(out)[:1] and list(next(t for t in out.graph.initializer if t.name == "W3r").dims) == [256, 10]
    assert {t.name for t in out.graph.initializer}.isdisjoint({"W3", "w_shape"})  # the unused sources are gone
    _same(m, out, _x(), "Input3")
    assert rewrites.fold_constants(out) == (out, None)


def test_fuse_bias_makes_conv_biases_and_a_gemm():
    m = mnist12_like(batch="N")
    out, note = rewrites.fuse_bias(m)
    assert note.count("-> Conv with bias") == 2 and "MatMul+Add3 -> Gemm" in note
    assert _ops(out) == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Reshape", "Gemm"]
    assert [len(n.input) for n in out.graph.node if n.op_type == "Conv"] == [3, 3]
    assert out.graph.output[0].name == "Plus214_Output_0" and out.graph.node[-1].output[0] == "Plus214_Output_0"
    _same(m, out, _x(), "Input3")


def test_fuse_bias_keeps_matmul_add_for_the_qoperator_format():
    """QOperator: INC turns a Gemm into a QGemm without the com.microsoft domain (no runtime loads it), so
    prepare asks for conv biases only; the MatMul + Add become the standard QLinearMatMul + QLinearAdd."""
    m = mnist12_like(batch="N")
    out, note = rewrites.fuse_bias(m, gemm=False)
    assert note.count("-> Conv with bias") == 2 and "Gemm" not in note
    assert _ops(out)[-2:] == ["MatMul", "Add"]
    _same(m, out, _x(), "Input3")
    sig = models.signature(m, "m.onnx")
    assert "Gemm" not in _ops(prepare.prepare(m, sig, "QOperator", False, True).model)
    assert "Gemm" in _ops(prepare.prepare(m, sig, "QDQ", False, True).model)


def test_fuse_bias_leaves_non_constant_or_shared_adds_alone():
    m = mnist12_like(batch="N")
    add = next(n for n in m.graph.node if n.name == "Add1")
    add.input[1] = "c1"  # c1 + c1: not a bias
    conv_out_used_twice = _ops(rewrites.fuse_bias(m)[0])
    assert conv_out_used_twice.count("Add") == 1  # Add1 stays; Add2 fused into Conv2; Add3 into the Gemm
    lin = pattern_linear("N", "NCHW")  # MatMul of a 2-D tensor whose rank shape inference knows
    assert _ops(rewrites.fuse_bias(lin)[0]) == ["Reshape", "Gemm"]


def test_fuse_bias_needs_a_2d_matmul():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 784])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"), helper.make_node("Add", ["mm", "B"], ["y"], name="b")],
                          "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [_t("W", np.ones((784, 10))), _t("B", np.ones((10,)))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert rewrites.fuse_bias(m) == (m, None)  # Gemm is 2-D only


def test_pool_before_relu_swaps_only_after_the_named_layers_and_keeps_outputs():
    m, _ = rewrites.fuse_bias(mnist12_like(batch="N"))
    one, note = rewrites.pool_before_relu(m, after={"Conv1"})
    assert note == "MaxPool moved before Relu (they commute): Relu1/Pool1"
    assert _ops(one)[:3] == ["Conv", "MaxPool", "Relu"] and _ops(one)[3:6] == ["Conv", "Relu", "MaxPool"]
    both, note = rewrites.pool_before_relu(m)
    assert _ops(both)[:6] == ["Conv", "MaxPool", "Relu", "Conv", "MaxPool", "Relu"]
    for out in (one, both):
        onnx.checker.check_model(out)
        _same(m, out, _x(seed=3) - 0.5, "Input3")  # negative inputs too: the Relu really clips
    assert rewrites.pool_before_relu(both) == (both, None)


def test_pool_before_relu_skips_a_relu_with_other_consumers():
    m, _ = rewrites.fuse_bias(mnist12_like(batch="N"))
    relu = next(n for n in m.graph.node if n.name == "Relu1")
    m.graph.output.append(helper.make_tensor_value_info(relu.output[0], TensorProto.FLOAT, None))
    out, note = rewrites.pool_before_relu(m)
    assert "Relu1" not in note and "Relu2/Pool2" in note


def test_channels_last_flatten_permutes_fc_rows_and_keeps_outputs():
    m, _ = rewrites.fuse_bias(mnist12_like(batch="N"))
    out, note = rewrites.channels_last_flatten(m)
    assert note.endswith("Reshape -> MatMul")
    t = next(n for n in out.graph.node if n.op_type == "Transpose")
    assert list(helper.get_attribute_value(t.attribute[0])) == [0, 2, 3, 1]
    assert _ops(out)[-3:] == ["Transpose", "Reshape", "Gemm"]
    _same(m, out, _x(seed=4), "Input3")
    assert rewrites.channels_last_flatten(out) == (out, None)  # a flatten after a Transpose is left alone


@pytest.mark.parametrize("trans_b", [0, 1])
def test_channels_last_flatten_with_flatten_op_and_transposed_gemm(trans_b):
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.1, (3 * 4 * 4, 10)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat", axis=1),
         helper.make_node("Gemm", ["f", "W", "B"], ["y"], name="fc", transB=trans_b)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [_t("W", w.T if trans_b else w), _t("B", np.ones(10))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    out, note = rewrites.channels_last_flatten(m)
    assert "flat -> fc" in note
    _same(m, out, _x((6, 3, 4, 4), 6), "x")


@pytest.mark.parametrize("kind", sorted(CLASSIFIERS))
def test_every_classifier_shape_keeps_its_outputs(kind):
    rng = np.random.default_rng(7)
    layout = CLASSIFIERS[kind][0]
    labels = rng.integers(0, 10, 64)
    imgs = pattern_images(labels, rng).astype(np.float32) / 255
    shape = {"flat": (-1, 784), "NCHW": (-1, 1, 28, 28), "NHWC": (-1, 28, 28, 1)}[layout]
    x = imgs.reshape(shape)
    m = fitted_classifier(kind, x, labels)
    out = m
    for step in rewrites.ALL:
        out, _ = step(out)
    out, _ = rewrites.pool_before_relu(out)
    onnx.checker.check_model(out)
    _same(m, out, x, "input")
    assert "Gemm" in _ops(out) and "MatMul" not in _ops(out)  # every head ends as one Gemm


def test_name_nodes_names_the_unnamed_ones():
    m = mnist12_like()
    m.graph.node[0].name = m.graph.node[4].name = ""
    out, note = rewrites.name_nodes(m)
    assert note == "named 2 unnamed node(s): Conv_0, Conv_4" and all(n.name for n in out.graph.node)


def _conv_pool(x_shape, conv_attrs, pool_op="MaxPool", pool_attrs=None, between=("Relu",), extra_output=None):
    rng = np.random.default_rng(11)
    w = rng.normal(0, 0.3, (4, x_shape[1], 3, 3))
    nodes, src = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", kernel_shape=[3, 3], **conv_attrs)], "c"
    for k, op in enumerate(between):
        attrs = {"alpha": 0.1} if op == "LeakyRelu" else {}
        nodes.append(helper.make_node(op, [src], [f"e{k}"], name=f"act{k}", **attrs))
        src = f"e{k}"
    nodes.append(helper.make_node(pool_op, [src], ["y"], name="pool", **(pool_attrs or {"kernel_shape": [3, 3], "strides": [3, 3]})))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)]
    if extra_output:
        outs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, [None] * 4))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])], outs,
                          [_t("W", w), _t("B", rng.normal(0, 0.1, (4,)))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _pads(m):
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    return [list(helper.get_attribute_value(a)) for a in conv.attribute if a.name == "pads"], \
        [a.name for a in conv.attribute if a.name == "auto_pad"]


def test_crop_unread_outputs_on_the_mnist12_shape_keeps_outputs():
    m, _ = rewrites.fuse_bias(mnist12_like(batch="N"))
    out, note = rewrites.crop_unread_outputs(m)
    assert note == "conv outputs no pool reads no longer computed: Conv2 -> Pool2 (pads [2, 2, 2, 2] -> [2, 2, 0, 0])"
    onnx.checker.check_model(out, full_check=True)
    _same(m, out, _x(seed=8) - 0.3, "Input3")
    assert rewrites.crop_unread_outputs(out) == (out, None)  # nothing left to crop
    assert rewrites.crop_unread_outputs(mnist12_like(batch="N"))[1] is None  # an Add between conv and pool: not elementwise-only


@pytest.mark.parametrize("case,x_shape,conv_attrs,pool_op,pool_attrs,between,want", [
    # SAME_UPPER on 10x11: 10x11 outputs; a 3x3/3 pool reads 9x9: one end row and the one end column of padding go
    ("same_upper", (2, 2, 10, 11), {"auto_pad": "SAME_UPPER"}, "AveragePool", None, ("LeakyRelu", "Sigmoid"), [1, 1, 0, 0]),
    # stride 2, pads 1: 8x8 outputs of which a 3x3/3 pool reads 6: the end padding goes, one unread row stays
    ("strided", (2, 3, 15, 15), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, "MaxPool", None, ("Relu",), [1, 1, 0, 0]),
    # SAME_LOWER puts the extra padding first: 2x2/2 over 9 outputs reads 8; the end pad (1) goes
    ("same_lower", (1, 1, 9, 9), {"auto_pad": "SAME_LOWER"}, "MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}, (), [1, 1, 0, 0]),
])
def test_crop_unread_outputs_shrinks_end_padding_only_as_far_as_the_pool_reads(case, x_shape, conv_attrs, pool_op, pool_attrs,
                                                                             between, want):
    m = _conv_pool(x_shape, conv_attrs, pool_op, pool_attrs, between)
    out, note = rewrites.crop_unread_outputs(m)
    assert note is not None and "conv -> pool" in note, case
    assert _pads(out) == ([want], [])
    onnx.checker.check_model(out)
    onnx.shape_inference.infer_shapes(out, strict_mode=True)
    _same(m, out, _x(x_shape, 9) - 0.5, "x")


@pytest.mark.parametrize("case,conv_attrs,pool_attrs,extra", [
    ("pool pads", {"pads": [1, 1, 1, 1]}, {"kernel_shape": [3, 3], "strides": [3, 3], "pads": [1, 1, 1, 1]}, None),
    ("ceil mode", {"pads": [1, 1, 1, 1]}, {"kernel_shape": [3, 3], "strides": [3, 3], "ceil_mode": 1}, None),
    ("pool reads every row", {"pads": [1, 1, 1, 1]}, {"kernel_shape": [2, 2], "strides": [2, 2]}, None),
    ("no end padding", {"pads": [1, 1, 0, 0]}, None, None),
    ("conv output also a graph output", {"pads": [1, 1, 1, 1]}, None, "c"),
    ("activation read twice", {"pads": [1, 1, 1, 1]}, None, "e0"),
])
def test_crop_unread_outputs_leaves_other_shapes_alone(case, conv_attrs, pool_attrs, extra):
    m = _conv_pool((2, 1, 14, 14), conv_attrs, "MaxPool", pool_attrs, ("Relu",), extra_output=extra)
    assert rewrites.crop_unread_outputs(m) == (m, None), case


@pytest.mark.parametrize("outer,initializer,untouched", [
    ("r1", False, "Relu1/Pool1"),        # pool_before_relu would replace the Relu's output by the pooled one
    ("c1", False, "Conv1+Add1"),         # fuse_bias would drop the conv's own output
    ("a1", False, None),                 # fused all the same: the Conv takes over the Add's output name
    ("c2", False, "Conv2+Add2"),         # fuse_bias would drop it; crop_unread_outputs would shrink it
    ("r2", False, "Conv2 -> Pool2"),     # crop_unread_outputs: the rows no pool reads are read by the body
    ("flat", False, "Reshape -> MatMul"),  # channels_last_flatten would reorder it
    ("W3", True, "Reshape -> MatMul"),   # channels_last_flatten would permute its rows
    ("B1", True, None),                  # fuse_bias folds it into a new bias; the body still reads the original
])
def test_rewrites_leave_what_an_if_body_reads_alone(outer, initializer, untouched):
    """A control-flow body may read any outer tensor by name: no rewrite may rename, remove, reorder or
    shrink it (consumers() counts such reads); the outputs stay those of the original model."""
    plain = mnist12_like(batch="N")
    m = read_in_if_body(mnist12_like(batch="N"), outer, initializer)
    x = _x(seed=5) - 0.25
    out, notes = m, []
    for step in rewrites.ALL:
        out, note = step(out)
        notes.append(note or "")
    out, note = rewrites.pool_before_relu(out)
    notes.append(note or "")
    onnx.checker.check_model(out)
    _same(m, out, x, "Input3")
    assert outer in models.all_names(out)
    if untouched:
        assert untouched not in " ".join(notes), notes
        # ... and the same rewrite does apply to the model without the If (so the guard, not luck, kept it)
        plain_notes = []
        for step in (*rewrites.ALL, rewrites.pool_before_relu):
            plain, note = step(plain)
            plain_notes.append(note or "")
        assert untouched in " ".join(plain_notes)


def test_new_names_avoid_the_names_an_if_body_defines():
    """ONNX forbids an outer graph to define a name a subgraph defines too; a rewrite's new tensor
    (``a1_pool`` for the swapped MaxPool) must pick another one."""
    m, _ = rewrites.fuse_bias(read_in_if_body(mnist12_like(batch="N"), "B3", initializer=True))
    for g in (a.g for n in m.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH):
        g.node[0].output[0] = g.node[1].input[0] = "a1_pool"  # the body's own Cast output
        break
    onnx.checker.check_model(m)
    out, note = rewrites.pool_before_relu(m, after={"Conv1"})
    assert note == "MaxPool moved before Relu (they commute): Relu1/Pool1"
    onnx.checker.check_model(out, full_check=True)
    assert next(n for n in out.graph.node if n.name == "Pool1").output[0] == "a1_pool_1"
    _same(m, out, _x(seed=4) - 0.5, "Input3")



def test_fold_constants_keeps_a_folded_value_only_an_if_body_reads():
    """A constant node whose output only a body reads is folded into an initializer that stays (its
    ``used`` set counts the body's reads; the value used to be dropped: the model no longer loaded)."""
    m = mnist12_like(batch="N")
    m.graph.initializer.extend([numpy_helper.from_array(np.full((2, 4), 3.0, np.float32), "k1"),
                                numpy_helper.from_array(np.full((2, 4), 0.5, np.float32), "k2")])
    m.graph.node.insert(0, helper.make_node("Mul", ["k1", "k2"], ["kprod"], name="KMul"))
    m = read_in_if_body(m, "kprod", initializer=True)
    out, note = rewrites.fold_constants(m)
    assert "KMul" in note and "kprod" in {t.name for t in out.graph.initializer}
    onnx.checker.check_model(out)
    _same(m, out, _x(seed=6), "Input3")
