"""quant.runtime.reference: the exact integer evaluation that tells whether an int8 model computes the same
on every CPU."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from quant.config import preprocessing
from quant.runtime import reference


def _qlinear_add_model(b_const: bool = False) -> onnx.ModelProto:
    """C = QLinearAdd(A, B) on uint8 vectors of 64 (B an initializer when ``b_const``)."""
    inits = [numpy_helper.from_array(np.array(v, dtype=dt), n) for n, v, dt in [
        ("as", 0.037, np.float32), ("az", 3, np.uint8), ("bs", 0.011, np.float32), ("bz", 200, np.uint8),
        ("cs", 0.05, np.float32), ("cz", 17, np.uint8)]]
    inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])]
    if b_const:
        inits.append(numpy_helper.from_array(np.arange(64, dtype=np.uint8).reshape(1, 64) * 3, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.UINT8, [1, 64]))
    node = helper.make_node("QLinearAdd", ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], ["c"], domain="com.microsoft")
    g = helper.make_graph([node], "qadd", inputs, [helper.make_tensor_value_info("c", TensorProto.UINT8, [1, 64])], inits)
    return helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 12), helper.make_opsetid("com.microsoft", 1)])


def test_qlinear_add_matches_onnxruntime_exactly():
    m = _qlinear_add_model()
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = reference.evaluator(m)
    rng = np.random.default_rng(0)
    for _ in range(20):
        feeds = {"a": rng.integers(0, 256, (1, 64), dtype=np.uint8), "b": rng.integers(0, 256, (1, 64), dtype=np.uint8)}
        got, want = s.run(None, feeds)[0], ref.run(None, feeds)[0]
        assert got.dtype == want.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    assert {o.version for o in m.opset_import if o.domain == ""} == {12}  # the caller's model is not changed


def test_compare_reports_a_difference():
    """compare() finds the one image whose output is one level off, and agreement where there is none."""
    m = _qlinear_add_model(b_const=True)
    real = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).integers(0, 256, (3, 64), dtype=np.uint8)
    assert reference.compare(m, real, "a", x).exact

    class OffByOneInSecondImage:
        calls = 0

        def run(self, names, feeds):
            self.calls += 1
            out = real.run(names, feeds)[0].astype(np.int32)
            return [out + 1 if self.calls == 2 else out]

    agr = reference.compare(m, OffByOneInSecondImage(), "a", x)
    assert (agr.images, agr.images_differing, agr.max_abs_diff, agr.exact) == (3, 1, 1.0, False)


@pytest.mark.realdata
def test_default_int8_computes_like_the_integer_reference_on_this_cpu(tuned_mnist12, splits):
    """The default model (7-bit ranges) gives the exact integer result of the graph onnxruntime runs,
    whatever this CPU's int8 kernels (VNNI or AVX2). Its first conv runs in fp32, and fp32 convs are
    not bit-identical between numpy (the reference) and MLAS: a last-bit difference may move a value
    across a quantization step on a rare image (2 of 10,000 on the AVX2 host of docs/benchmarks.md),
    so: no top-1 change, at most 2 % of images touched, each by at most a few steps of the logits."""
    out, _ = tuned_mnist12
    x = preprocessing.apply(splits["test"].images[:256], 1 / 255, 0, 1, "NCHW")
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    agr = reference.compare(onnx.load(out), s, "Input3", x)
    assert agr.top1_disagreements == 0 and agr.images_differing <= 0.02 * agr.images and agr.max_abs_diff < 0.25, agr


@pytest.mark.parametrize("activation,params", [("Relu", []), ("LeakyRelu", [0.2]), ("Clip", [-0.5, 0.7]), ("", [])])
def test_unfuse_turns_fused_conv_back_into_standard_nodes(activation, params):
    """onnxruntime's executed graph has com.microsoft FusedConv for fp32 Conv + activation; the
    reference evaluates it as Conv -> activation and matches onnxruntime."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    if activation:
        attrs["activation"] = activation
    if params:
        attrs["activation_params"] = params
    node = helper.make_node("FusedConv", ["x", "w", "b"], ["y"], name="fc", domain="com.microsoft", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w, b])
    m = helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    plain = reference.unfuse(m)
    assert [n.op_type for n in plain.graph.node] == ["Conv"] + ([activation] if activation else [])
    x = rng.standard_normal((1, 1, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = reference.evaluator(plain).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_an_op_without_reference_is_named():
    node = helper.make_node("QLinearSigmoid", ["a", "s", "z", "s", "z"], ["c"], name="sig", domain="com.microsoft")
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")]
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 4])],
                          [helper.make_tensor_value_info("c", TensorProto.UINT8, [1, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(reference.Unsupported, match="no exact reference for com.microsoft QLinearSigmoid \\(node sig\\)"):
        reference.evaluator(m)
