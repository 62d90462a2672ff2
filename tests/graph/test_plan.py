"""Kernel-aware precision plan (quant/graph/plan.py): rules from onnxruntime's int8 conv kernel."""

import pytest
from helpers import mnist12_like, pattern_linear, read_in_if_body
from onnx import TensorProto, helper

from quant.graph import plan


@pytest.mark.parametrize("shape,group,slow", [
    ([8, 1, 5, 5], 1, "1 input channel(s)"),          # mnist-12's first conv
    ([16, 8, 5, 5], 1, None),                           # mnist-12's second conv
    ([8, 8, 3, 3], 1, "8 output channels"),
    ([32, 6, 3, 3], 1, "6 input channel(s)"),
    ([32, 1, 3, 3], 32, None),                          # depthwise, 32 groups
    ([8, 1, 3, 3], 8, "depthwise with 8 groups"),
    ([32, 4, 3, 3], 8, "grouped convolution"),
])
def test_conv_rules(shape, group, slow):
    reason = plan.conv_reason(shape, group)
    assert (reason is None) if slow is None else (slow in reason)


def test_mnist12_topology_keeps_only_the_first_conv_fp32():
    p = plan.make(mnist12_like())
    assert list(p.keep_fp32) == ["Conv1"] and p.int8 == ["Conv2", "MatMul"]
    assert "multiple of 4" in p.keep_fp32["Conv1"]
    assert p.summary()["keep_fp32"] == p.keep_fp32


def test_fc_layers_are_always_int8_and_a_conv_without_constant_weights_stays_fp32():
    assert plan.make(pattern_linear()).int8 == ["MatMul"]
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="dyn")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
                           helper.make_tensor_value_info("w", TensorProto.FLOAT, [16, 4, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert plan.make(helper.make_model(g)).keep_fp32 == {"dyn": "weights are not a constant"}



@pytest.mark.parametrize("outer,kept", [("r2", "Relu2"), ("a2", "Relu2"), ("c2", None), ("mm", None), ("p2", None), ("W3", None)])
def test_a_relu_whose_input_or_output_an_if_body_reads_stays_fp32(outer, kept):
    """neural-compressor does not see reads inside If/Loop bodies: it drops a Relu after a quantized layer
    even when a body reads the Relu's input (whose range then keeps its negative values: the main path
    loses its ReLU) or its output (then gone); layers, pools and constants read by a body are left to it."""
    m = read_in_if_body(mnist12_like(), outer, initializer=outer == "W3")
    p = plan.make(m)
    assert set(p.keep_fp32) == {"Conv1"} | ({kept} if kept else set())
    if kept:
        assert p.keep_fp32[kept].startswith(f"{outer} is read inside an If/Loop/Scan body")
        assert set(plan.make(m, kernel_rules=False).keep_fp32) == {kept}  # a correctness rule: kernel_aware: false too
    assert set(p.int8) == {"Conv2", "MatMul"}

def _with_clip(lo, hi, bound_from="initializer"):
    """mnist12_like with its second Relu replaced by Clip(lo, hi) (None: no such bound)."""
    import numpy as np
    from onnx import numpy_helper

    m = mnist12_like(fitted=False)
    relu = next(n for n in m.graph.node if n.name == "Relu2")
    inputs = [relu.input[0]]
    for tag, v in (("lo", lo), ("hi", hi)):
        inputs.append("" if v is None else tag)
        if v is not None and bound_from == "input":
            m.graph.input.append(helper.make_tensor_value_info(tag, TensorProto.FLOAT, []))
        elif v is not None:
            m.graph.initializer.append(numpy_helper.from_array(np.array(v, np.float32), tag))
    while inputs[-1] == "":
        inputs.pop()
    relu.op_type, relu.name = "Clip", "Clip2"
    del relu.input[:]
    relu.input.extend(inputs)
    return m


@pytest.mark.parametrize("lo,hi,seven_bit,why", [
    (0, 6, True, "its upper bound 6 would be lost"),   # ReLU6 with 7-bit ranges (the default reduce_range)
    (0, 6, False, None),                               # 8-bit: uint8 saturates at the calibrated 6
    (0, None, True, None),                             # a ReLU written as Clip: the zero point clamps at 0
    (-1, 1, True, "its upper bound 1 would be lost"),
    (-1, 1, False, None),
    (1, None, False, "its lower bound 1 is above 0"),  # the calibrated range always holds 0
])
def test_a_clip_whose_bounds_neural_compressor_would_drop_stays_fp32(lo, hi, seven_bit, why):
    """neural-compressor removes a Clip after a quantized layer and leaves the clamping to the QuantizeLinear;
    a LeNet-style model's ReLU6 then let values up to 9.45 through (reduce_range: the range maps to 0..127, uint8
    saturates at 255). A correctness rule: it holds with kernel_aware: false too."""
    m = _with_clip(lo, hi)
    for rules in (True, False):
        p = plan.make(m, kernel_rules=rules, seven_bit=seven_bit)
        assert (p.keep_fp32.get("Clip2") is None) if why is None else p.keep_fp32["Clip2"].startswith(why), p.keep_fp32
    assert "Conv2" in plan.make(m, seven_bit=seven_bit).int8


def test_a_clip_with_a_bound_that_is_not_a_constant_stays_fp32_and_the_old_attribute_form_is_read():
    p = plan.make(_with_clip(0, 6, bound_from="input"), seven_bit=False)
    assert "is not a constant" in p.keep_fp32["Clip2"]
    old = helper.make_node("Clip", ["a2"], ["r2"], name="Clip2", min=0.0, max=6.0)  # Clip-6
    assert "upper bound 6" in plan.clip_reason(old, {}, True) and plan.clip_reason(old, {}, False) is None
    unbounded = helper.make_node("Clip", ["a2"], ["r2"], name="Clip2", min=0.0, max=3.4028234663852886e38)  # Clip-6's default max
    assert plan.clip_reason(unbounded, {}, True) is None


def test_user_keep_follows_nodes_a_rewrite_merged_and_refuses_typos():
    from quant.errors import ConfigError
    from quant.graph import models, prepare

    fp32 = mnist12_like()
    sig = models.signature(fp32, "m.onnx")
    prep = prepare.prepare(fp32, sig, "QDQ", False, True, "m.onnx")
    assert prep.absorbed["Add1"] == "Conv1" and prep.absorbed["Add3"] == "MatMul"  # bias Adds fused into their layer
    keep, notes = plan.user_keep(fp32, prep.model, prep.absorbed, ["Add1", "Conv2"], ["Relu"], "c.yaml")
    assert keep == {"Conv1", "Conv2"} and notes == ["Add1 was merged into Conv1 by a rewrite: Conv1 stays fp32"]
    with pytest.raises(ConfigError, match=r"c.yaml: quantization.nodes_to_keep_fp32: the model has no node named 'conv_2' "
                                          r"\(did you mean 'Conv2'\?\)"):
        plan.user_keep(fp32, prep.model, prep.absorbed, ["conv_2"], [], "c.yaml")
    with pytest.raises(ConfigError, match=r"'Conv2D' is not an ONNX op type \(did you mean 'Conv'\?\)"):
        plan.user_keep(fp32, prep.model, prep.absorbed, [], ["Conv2D"], "c.yaml")
