"""Exact integer evaluation of a quantized ONNX model, independent of the CPU.

onnxruntime's int8 kernels are not bit-exact across CPUs: without AVX-512 VNNI (AVX2 only) the
u8 x s8 dot products go through ``vpmaddubsw``, which saturates pairs of products at 16 bits, so a
model with full 8-bit ranges computes different outputs there than on a VNNI CPU. ``onnx.reference``
evaluates the ONNX ops in numpy with exact int32 accumulation, which is what every CPU computes when
nothing saturates; comparing onnxruntime's outputs with it on real inputs tells whether a model gives
the same result on every CPU.

Gaps of ``onnx.reference`` bridged here: it has no ``com.microsoft`` ops, so ``QLinearAdd`` (INC's
and onnxruntime's QOperator models use it for biases) and ``QGemm`` (what onnxruntime fuses a QDQ Gemm
into) are implemented below, and onnxruntime's fp32 fusions ``FusedConv``/``FusedGemm`` are turned
back into standard nodes (:func:`unfuse`); any other contrib op raises :class:`Unsupported` naming it.
It implements QuantizeLinear / DequantizeLinear only from opset 19, so a copy of the model declares
opset 21 for the default domain. Only the quantize/dequantize signatures changed in between, and for
uint8/int8 tensors with scalar or 1-D scales their arithmetic is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

REFERENCE_OPSET = 21


@dataclass(frozen=True)
class _Q:
    """One quantized operand of a QLinear op, as the op lists it: the integer tensor (None for an output,
    which only has its parameters), its scale and its zero point."""

    values: np.ndarray | None
    scale: np.ndarray | None
    zero: np.ndarray | None


class QLinearAdd(OpRun):
    """com.microsoft QLinearAdd as onnxruntime's x86 kernel computes it (MLAS qladd): in float32 with
    the scale ratios a_scale/c_scale and b_scale/c_scale, c = round_half_even(fixed + a * ra + b * rb),
    fixed = c_zero - (ra * a_zero + rb * b_zero), then saturated to the output type. This is not
    exactly dequantize-add-quantize, which differs by one level on some inputs."""

    op_domain = "com.microsoft"

    def _run(self, *inputs):
        """``inputs``: A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point (the op's order)."""
        a, b, c = _Q(*inputs[0:3]), _Q(*inputs[3:6]), _Q(None, *inputs[6:8])
        f32 = np.float32
        ra, rb = f32(f32(a.scale) / f32(c.scale)), f32(f32(b.scale) / f32(c.scale))
        fixed = f32(c.zero) - (ra * f32(a.zero) + rb * f32(b.zero))
        v = (fixed + a.values.astype(f32) * ra) + b.values.astype(f32) * rb
        info = np.iinfo(c.zero.dtype)
        return (np.clip(np.rint(v), info.min, info.max).astype(c.zero.dtype),)


class QGemm(OpRun):
    """com.microsoft QGemm (what onnxruntime fuses DequantizeLinear -> Gemm [-> QuantizeLinear] into):
    an exact integer product-sum ``acc = (A - a_zero) @ (B - b_zero) + C`` (C: int32 bias), then
    either float output ``acc * (alpha * a_scale * b_scale)`` in float32, or requantized output
    ``round_half_even(acc * (alpha * a_scale * b_scale / y_scale)) + y_zero``, saturated."""

    op_domain = "com.microsoft"

    def _run(self, *inputs, alpha=1.0, transA=0, transB=0):
        """``inputs``: A, a_scale, a_zero_point, B, b_scale, b_zero_point, then the optional C, y_scale, y_zero_point."""
        a, b = _Q(*inputs[0:3]), _Q(*inputs[3:6])
        c, y_scale, y_zero = (*inputs[6:9], None, None, None)[:3]
        f32 = np.float32
        aa = a.values.astype(np.int64) - np.int64(a.zero)
        bb = b.values.astype(np.int64) - np.asarray(b.zero, np.int64)
        if transA:
            aa = aa.T
        if transB:
            bb = bb.T
        acc = aa @ bb
        if c is not None:
            acc = acc + c.astype(np.int64)
        mult = f32(f32(alpha) * f32(a.scale) * f32(b.scale))
        if y_scale is None:
            return ((acc.astype(np.int32).astype(f32) * mult).astype(f32),)
        v = acc.astype(np.int32).astype(f32) * f32(mult / f32(y_scale)) + f32(y_zero)
        info = np.iinfo(y_zero.dtype)
        return (np.clip(np.rint(v), info.min, info.max).astype(y_zero.dtype),)


class Unsupported(ValueError):
    """The model has an op the reference cannot evaluate (named in the message)."""


NEW_OPS = (QLinearAdd, QGemm)


def evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for o in ref.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < REFERENCE_OPSET:
            o.version = REFERENCE_OPSET
    known = {(c.op_domain, c.__name__) for c in NEW_OPS}
    for n in ref.graph.node:
        if n.domain not in ("", "ai.onnx") and (n.domain, n.op_type) not in known:
            raise Unsupported(f"no exact reference for {n.domain} {n.op_type} (node {n.name or n.output[0]})")
    try:
        return ReferenceEvaluator(ref, new_ops=list(NEW_OPS))
    except Exception as e:  # an op onnx.reference does not implement for these types
        raise Unsupported(f"onnx.reference cannot evaluate it: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


# fp32 fusions onnxruntime makes at level EXTENDED (contrib ops): activation -> standard ONNX nodes
_ACTIVATIONS = {"Relu": [], "Tanh": [], "Sigmoid": [], "LeakyRelu": ["alpha"], "HardSigmoid": ["alpha", "beta"], "Clip": []}


def unfuse(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace onnxruntime's fp32 contrib fusions FusedConv / FusedGemm (Conv or Gemm + activation) by
    the standard ONNX nodes they stand for, so the reference can evaluate the executed graph."""
    if not any(n.domain == "com.microsoft" and n.op_type in ("FusedConv", "FusedGemm") for n in model.graph.node):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = []
    for n in m.graph.node:
        if not (n.domain == "com.microsoft" and n.op_type in ("FusedConv", "FusedGemm")):
            nodes.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        act = attrs.pop("activation", b"")
        act = act.decode() if isinstance(act, bytes) else act
        params = list(attrs.pop("activation_params", []))
        for k in [k for k in attrs if k.startswith("activation")]:
            attrs.pop(k)
        if act and act not in _ACTIVATIONS:
            raise Unsupported(f"no exact reference for com.microsoft {n.op_type} with activation {act} (node {n.name})")
        base = n.op_type[len("Fused"):]
        inputs = list(n.input)
        extra = inputs[3] if base == "Conv" and len(inputs) > 3 and inputs[3] else None  # FusedConv's sum input Z
        inputs = inputs[:3]
        out = n.output[0]
        mid = f"{out}.pre" if act or extra else out
        nodes.append(helper.make_node(base, inputs, [mid], name=n.name, **attrs))
        if extra:
            summed = f"{out}.sum" if act else out
            nodes.append(helper.make_node("Add", [mid, extra], [summed], name=f"{n.name}.sum"))
            mid = summed
        if act == "Clip":
            lo, hi = (params + [float("-inf"), float("inf")])[:2] if params else (float("-inf"), float("inf"))
            names = [f"{out}.min", f"{out}.max"]
            m.graph.initializer.extend([numpy_helper.from_array(np.array(lo, np.float32), names[0]),
                                        numpy_helper.from_array(np.array(hi, np.float32), names[1])])
            nodes.append(helper.make_node("Clip", [mid, *names], [out], name=f"{n.name}.act"))
        elif act:
            kw = dict(zip(_ACTIVATIONS[act], params))
            nodes.append(helper.make_node(act, [mid], [out], name=f"{n.name}.act", **kw))
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


@dataclass
class Agreement:
    images: int
    max_abs_diff: float
    images_differing: int
    top1_disagreements: int
    max_abs_output: float = 0.0  # the largest |output| of the reference, to read max_abs_diff against
    correct_onnxruntime: int | None = None  # top-1 correct (first max), when labels were given
    correct_reference: int | None = None

    @property
    def exact(self) -> bool:
        return self.images_differing == 0


def integer_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph whose integer arithmetic onnxruntime's kernels must reproduce: for QDQ models the
    one onnxruntime builds by fusing QuantizeLinear/DequantizeLinear groups into QLinearConv/QGemm
    (level EXTENDED, no host-specific layouts); a QOperator model is already such a graph."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    if not any(n.op_type in ("Conv", "Gemm", "MatMul") and any(i in dq_out for i in n.input) for n in model.graph.node):
        return model
    from quant.runtime.sessions import onnxruntime_graph

    return unfuse(onnxruntime_graph(model.SerializeToString()))


def compare(model: onnx.ModelProto, session, input_name: str, x: np.ndarray, labels: np.ndarray | None = None) -> Agreement:
    """onnxruntime ``session``'s outputs vs the exact reference of the model's integer graph
    (:func:`integer_graph`), image by image, on ``x`` (and top-1 correct counts of both with ``labels``)."""
    ref = evaluator(integer_graph(model))
    largest, differing, disagree, peak = 0.0, 0, 0, 0.0
    ok_a = ok_b = 0
    for i in range(len(x)):
        xi = x[i:i + 1]
        a = np.asarray(session.run(None, {input_name: xi})[0], dtype=np.float64).reshape(-1)
        b = np.asarray(ref.run(None, {input_name: xi})[0], dtype=np.float64).reshape(-1)
        d = float(np.abs(a - b).max())
        largest, differing = max(largest, d), differing + (d > 0)
        peak = max(peak, float(np.abs(b).max()))
        disagree += int(a.argmax() != b.argmax())
        if labels is not None:
            ok_a += int(a.argmax() == labels[i])
            ok_b += int(b.argmax() == labels[i])
    counted = labels is not None
    return Agreement(len(x), largest, differing, disagree, peak, ok_a if counted else None, ok_b if counted else None)
