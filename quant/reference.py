"""Exact integer evaluation of a quantized ONNX model, independent of the CPU.

onnxruntime's int8 kernels are not bit-exact across CPUs: without AVX-512 VNNI (AVX2 only) the
u8 x s8 dot products go through ``vpmaddubsw``, which saturates pairs of products at 16 bits, so a
model with full 8-bit ranges computes different outputs there than on a VNNI CPU. ``onnx.reference``
evaluates the ONNX ops in numpy with exact int32 accumulation, which is what every CPU computes when
nothing saturates; comparing onnxruntime's outputs with it on real inputs tells whether a model gives
the same result on every CPU.

Two gaps of ``onnx.reference`` are bridged here: it has no ``com.microsoft`` ``QLinearAdd`` (INC's
QOperator models use it for the bias after QLinearMatMul), and it implements QuantizeLinear /
DequantizeLinear only from opset 19, so a copy of the model declares opset 21 for the default domain.
Only the quantize/dequantize signatures changed in between, and for uint8/int8 tensors with scalar or
1-D scales (the models here) their arithmetic is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

REFERENCE_OPSET = 21


class QLinearAdd(OpRun):
    """com.microsoft QLinearAdd as onnxruntime's x86 kernel computes it (MLAS qladd): in float32 with
    the scale ratios a_scale/c_scale and b_scale/c_scale, c = round_half_even(fixed + a * ra + b * rb),
    fixed = c_zero - (ra * a_zero + rb * b_zero), then saturated to the output type. This is not
    exactly dequantize-add-quantize, which differs by one level on some inputs."""

    op_domain = "com.microsoft"

    def _run(self, a, a_scale, a_zero, b, b_scale, b_zero, c_scale, c_zero):
        f32 = np.float32
        ra, rb = f32(f32(a_scale) / f32(c_scale)), f32(f32(b_scale) / f32(c_scale))
        fixed = f32(c_zero) - (ra * f32(a_zero) + rb * f32(b_zero))
        v = (fixed + a.astype(f32) * ra) + b.astype(f32) * rb
        info = np.iinfo(c_zero.dtype)
        return (np.clip(np.rint(v), info.min, info.max).astype(c_zero.dtype),)


class QGemm(OpRun):
    """com.microsoft QGemm (what onnxruntime fuses DequantizeLinear -> Gemm [-> QuantizeLinear] into):
    an exact integer product-sum ``acc = (A - a_zero) @ (B - b_zero) + C`` (C: int32 bias), then
    either float output ``acc * (alpha * a_scale * b_scale)`` in float32, or requantized output
    ``round_half_even(acc * (alpha * a_scale * b_scale / y_scale)) + y_zero``, saturated."""

    op_domain = "com.microsoft"

    def _run(self, a, a_scale, a_zero, b, b_scale, b_zero, c=None, y_scale=None, y_zero=None, alpha=1.0, transA=0, transB=0):
        f32 = np.float32
        aa = a.astype(np.int64) - np.int64(a_zero)
        bb = b.astype(np.int64) - np.asarray(b_zero, np.int64)
        if transA:
            aa = aa.T
        if transB:
            bb = bb.T
        acc = aa @ bb
        if c is not None:
            acc = acc + c.astype(np.int64)
        mult = f32(f32(alpha) * f32(a_scale) * f32(b_scale))
        if y_scale is None:
            return ((acc.astype(np.int32).astype(f32) * mult).astype(f32),)
        v = acc.astype(np.int32).astype(f32) * f32(mult / f32(y_scale)) + f32(y_zero)
        info = np.iinfo(y_zero.dtype)
        return (np.clip(np.rint(v), info.min, info.max).astype(y_zero.dtype),)


def evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for o in ref.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < REFERENCE_OPSET:
            o.version = REFERENCE_OPSET
    return ReferenceEvaluator(ref, new_ops=[QLinearAdd, QGemm])


@dataclass
class Agreement:
    images: int
    max_abs_diff: float
    images_differing: int
    top1_disagreements: int

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
    from .evaluation import onnxruntime_graph

    return onnxruntime_graph(model.SerializeToString())


def compare(model: onnx.ModelProto, session, input_name: str, x: np.ndarray) -> Agreement:
    """onnxruntime ``session``'s outputs vs the exact reference of the model's integer graph
    (:func:`integer_graph`), image by image, on ``x``."""
    ref = evaluator(integer_graph(model))
    largest, differing, disagree = 0.0, 0, 0
    for i in range(len(x)):
        xi = x[i:i + 1]
        a = np.asarray(session.run(None, {input_name: xi})[0], dtype=np.float64)
        b = np.asarray(ref.run(None, {input_name: xi})[0], dtype=np.float64)
        d = float(np.abs(a - b).max())
        largest, differing = max(largest, d), differing + (d > 0)
        disagree += int(a.argmax() != b.argmax())
    return Agreement(len(x), largest, differing, disagree)
