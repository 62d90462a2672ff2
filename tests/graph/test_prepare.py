"""Graph rewrites before quantization: dynamic batch, opset upgrade, legacy-IR clean-up."""

import numpy as np
import onnx
import pytest
from helpers import mnist12_like, pattern_linear, read_in_if_body
from onnx import TensorProto, helper, numpy_helper

from quant.config import preprocessing
from quant.errors import ModelError
from quant.graph import models, plan, prepare
from quant.runtime import evaluation


def _sig(m):
    return models.signature(m, "m")


def test_dynamic_batch_rewrites_io_and_reshape_and_keeps_outputs_image_by_image():
    fixed = mnist12_like(batch=1)
    dyn, note = prepare.make_batch_dynamic(fixed, _sig(fixed))
    assert "batch dimension 1 -> N" in note and "Reshape" in note
    assert models.signature(dyn, "m").fixed_batch is None
    assert dyn.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    shape = {t.name: numpy_helper.to_array(t) for t in dyn.graph.initializer}["shape"]
    assert shape.tolist() == [-1, 256]
    x = np.random.default_rng(1).random((37, 1, 28, 28), dtype=np.float32)
    diff = evaluation.check_same_outputs(models.serialize(fixed), models.serialize(dyn), x, "Input3", batch=16)
    assert diff <= 1e-5



def test_dynamic_batch_copies_a_shape_an_if_body_reads_too():
    """The Reshape's [1, 256] is read by an If body as well: it gets a dynamic copy, the body keeps the
    original (rewriting it in place changed the body's result)."""
    fixed = read_in_if_body(mnist12_like(batch=1), "shape", initializer=True)
    dyn, _ = prepare.make_batch_dynamic(fixed, _sig(fixed))
    shapes = {t.name: numpy_helper.to_array(t).tolist() for t in dyn.graph.initializer}
    assert shapes["shape"] == [1, 256] and shapes["shape_dynamic_batch"] == [-1, 256]
    x = np.random.default_rng(3).random((6, 1, 28, 28), dtype=np.float32)
    evaluation.check_same_outputs(models.serialize(fixed), models.serialize(dyn), x, "Input3", batch=1)



def test_dynamic_batch_follows_the_activation_through_an_if_body():
    """The pool's output reaches the Reshape only through an If whose body reads it by name: the
    Reshape is on the activation path all the same and gets the dynamic batch."""
    m = mnist12_like(batch=1)
    k = [n.name for n in m.graph.node].index("Reshape")
    m.graph.node[k].input[0] = "p2_if"
    body = [helper.make_graph([helper.make_node("Identity", ["p2"], [f"{t}_o"])], t, [],
                              [helper.make_tensor_value_info(f"{t}_o", TensorProto.FLOAT, None)]) for t in ("then", "else")]
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "always"))
    m.graph.node.insert(k, helper.make_node("If", ["always"], ["p2_if"], name="PassIf", then_branch=body[0], else_branch=body[1]))
    dyn, note = prepare.make_batch_dynamic(m, _sig(m))
    assert "Reshape shapes rewritten: Reshape" in note
    x = np.random.default_rng(4).random((7, 1, 28, 28), dtype=np.float32)
    evaluation.check_same_outputs(models.serialize(m), models.serialize(dyn), x, "Input3", batch=7)

def test_dynamic_batch_leaves_dynamic_models_alone_and_uses_0_when_minus1_is_taken():
    dyn = pattern_linear(batch="N", layout="NCHW")
    assert prepare.make_batch_dynamic(dyn, _sig(dyn)) == (dyn, None)
    m = mnist12_like(batch=1)
    shape = next(t for t in m.graph.initializer if t.name == "shape")
    shape.CopyFrom(numpy_helper.from_array(np.array([1, -1], np.int64), "shape"))
    out, _ = prepare.make_batch_dynamic(m, _sig(m))
    assert numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "shape")).tolist() == [0, -1]
    x = np.random.default_rng(2).random((5, 1, 28, 28), dtype=np.float32)
    evaluation.check_same_outputs(models.serialize(m), models.serialize(out), x, "Input3", batch=5)


def test_check_same_outputs_catches_a_wrong_rewrite():
    a, b = mnist12_like(seed=0), mnist12_like(seed=1)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    with pytest.raises(ModelError, match="outputs differ"):
        evaluation.check_same_outputs(models.serialize(a), models.serialize(b), x, "Input3", batch=1, path="m")


@pytest.mark.parametrize("fmt,per_channel,want", [("QOperator", False, 12), ("QDQ", False, 12), ("QDQ", True, 13)])
def test_opset_upgrade_target_follows_the_quantization_format(fmt, per_channel, want):
    m = mnist12_like(opset=10)
    p = prepare.prepare(m, _sig(m), fmt, per_channel, dynamic_batch=False, rewrite=False)
    assert models.opset_of(p.model) == want and p.steps == [f"opset 10 -> {want} (onnx version converter; IR 7 -> 7)"]
    onnx.checker.check_model(p.model)
    same = prepare.prepare(mnist12_like(opset=13), _sig(m), fmt, per_channel, dynamic_batch=False, rewrite=False)
    assert same.steps == []


def test_initializers_listed_as_inputs_are_dropped():
    m = mnist12_like()
    for t in m.graph.initializer:
        m.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    out, note = prepare.strip_initializer_inputs(m)
    assert [i.name for i in out.graph.input] == ["Input3"] and "removed 7 initializers" in note
    assert prepare.strip_initializer_inputs(out) == (out, None)


@pytest.mark.parametrize("name", ["mnist-7.onnx", "mnist-8.onnx", "mnist-12.onnx"])
def test_zoo_models_prepare_to_identical_outputs_on_real_images(models_dir, splits, name):
    
    m = models.load(models_dir / name)
    sig = models.signature(m.proto, m.path)
    p = prepare.prepare(m.proto, sig, "QDQ", False, dynamic_batch=True, path=m.path)
    assert models.opset_of(p.model) >= 12 and models.graph_inputs(p.model) == list(p.model.graph.input)
    assert any("dynamic" in s for s in p.steps)
    if m.opset < 12:
        assert p.steps[0].startswith(f"opset {m.opset} -> 12") and "removed 8 initializers" in p.steps[1]
    model, note = prepare.apply_plan(p.model, set(plan.make(p.model).keep_fp32), m.path)
    p = prepare.Prepared(model, p.steps + [note])
    # every speed rewrite applied to the zoo graph: weight Reshape folded, biases fused, Gemm, HWC flatten, pool/Relu swap
    kinds = " | ".join(p.steps)
    for want in ("folded 1 constant", "-> Conv with bias", "-> Gemm", "flatten in (H, W, C) order", "MaxPool moved before Relu"):
        assert want in kinds
    assert [n.op_type for n in p.model.graph.node] == ["Conv", "MaxPool", "Relu", "Conv", "Relu", "MaxPool", "Transpose", "Reshape", "Gemm"]
    x = preprocessing.apply(splits["test"].images[:500], 1 / 255, 0.0, 1.0, "NCHW")
    diff = evaluation.check_same_outputs(m.raw, models.serialize(p.model), x, sig.input_name, batch=64)  # raises if not the same
    assert diff <= 1e-4
