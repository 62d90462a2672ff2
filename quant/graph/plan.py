"""Kernel-aware precision plan: which compute layers stay fp32 because onnxruntime has no fast int8
kernel for their shape. Rules, not timings, so the default int8 model is the same on every machine.

onnxruntime runs an int8 Conv (QLinearConv, or DequantizeLinear -> Conv -> QuantizeLinear fused into
it) fast only through MLAS's symmetric indirect-convolution kernel (``MlasConvSymPackWSize`` in
``onnxruntime/core/mlas/lib/convsym.cpp``, x86 dispatch tables). Its conditions:

- int8 weights with zero point 0 (INC's weights are symmetric);
- groups == 1: input channels per group divisible by 4 and at least 16 output channels
  (``KernelInputChannelAlignment`` 4, ``FilterOutputChannelPackCount`` 16);
- depthwise (1 input and 1 output channel per group): a group count divisible by 16.

Any other int8 Conv falls back to a generic im2col + u8s8 GEMM path that is slower than fp32 on small
layers (mnist-12's first Conv, 1 -> 8 channels: 4.5x its fp32 time). MatMul and Gemm always have a fast
int8 GEMM (MLAS QGEMM) and are quantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx
from onnx import helper, numpy_helper

from quant.errors import ConfigError, suggest
from quant.graph.models import subgraph_reads

CONV_SYM_INPUT_ALIGN = 4
CONV_SYM_MIN_OUTPUT_CHANNELS = 16
CONV_SYM_DEPTHWISE_GROUP_ALIGN = 16
# activations neural-compressor's QDQ quantizer removes after a quantized layer (see make)
_INC_REMOVES = ("Relu", "Clip")


@dataclass
class Plan:
    keep_fp32: dict[str, str] = field(default_factory=dict)  # node name -> reason
    int8: list[str] = field(default_factory=list)  # compute nodes left to INC
    user_fp32: set[str] = field(default_factory=set)  # nodes the config's nodes_to_keep_fp32 names (see user_keep)

    def summary(self) -> dict:
        return {"rule_source": "onnxruntime MLAS ConvSym kernel constraints (quant/graph/plan.py)",
                "keep_fp32": dict(self.keep_fp32), "int8_candidates": list(self.int8), "user_fp32": sorted(self.user_fp32)}


def conv_reason(weight_shape: list[int], group: int) -> str | None:
    """Why an int8 Conv with this weight shape ([out, in/group, kh, kw]) would be slow, or None."""
    out_ch, in_per_group = weight_shape[0], weight_shape[1]
    if group > 1:
        if in_per_group == 1 and out_ch == group:
            if group % CONV_SYM_DEPTHWISE_GROUP_ALIGN:
                return f"depthwise with {group} groups (onnxruntime's int8 depthwise kernel needs a multiple of {CONV_SYM_DEPTHWISE_GROUP_ALIGN})"
            return None
        return f"grouped convolution ({group} groups): no fast int8 kernel in onnxruntime"
    if in_per_group % CONV_SYM_INPUT_ALIGN:
        return f"{in_per_group} input channel(s): onnxruntime's fast int8 conv needs a multiple of {CONV_SYM_INPUT_ALIGN}"
    if out_ch < CONV_SYM_MIN_OUTPUT_CHANNELS:
        return f"{out_ch} output channels: onnxruntime's fast int8 conv needs at least {CONV_SYM_MIN_OUTPUT_CHANNELS}"
    return None


def clip_reason(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto], seven_bit: bool) -> str | None:
    """Why neural-compressor's removal of this Clip (see :func:`make`) would change what it computes, or
    None. After the removal only the QuantizeLinear's saturation clamps, over the range calibrated after
    the Clip, which always contains 0: a lower bound above 0 is lost, and with 7-bit ranges
    (``reduce_range``: the calibrated range maps to 0..127 while uint8 saturates at 255) so is an upper
    bound (measured on a LeNet-style model with ReLU6: values up to 12.05 got through)."""
    bounds = []
    for k in (1, 2):
        name = node.input[k] if len(node.input) > k else ""
        if not name:
            bounds.append(None)
        elif name not in consts:
            return f"its bound {name!r} is not a constant, and neural-compressor would remove it after a quantized layer"
        else:
            v = numpy_helper.to_array(consts[name]).astype("float64").reshape(-1)
            bounds.append(float(v[0]) if v.size == 1 else None)
    for a in node.attribute:  # Clip before opset 11
        if a.name in ("min", "max"):
            bounds[a.name == "max"] = a.f
    lo, hi = bounds
    if lo is not None and lo > 0:
        return (f"its lower bound {lo:g} is above 0: neural-compressor removes a Clip after a quantized layer, and the "
                "QuantizeLinear's range it relies on always holds 0")
    if seven_bit and hi is not None and math.isfinite(hi) and hi < 3.4e38:
        return (f"its upper bound {hi:g} would be lost: neural-compressor removes a Clip after a quantized layer, and with 7-bit "
                "ranges (reduce_range) the QuantizeLinear saturates at about twice it")
    return None


def make(model: onnx.ModelProto, kernel_rules: bool = True, seven_bit: bool = True) -> Plan:
    """The plan for a prepared fp32 model (node names as INC will see them); ``kernel_rules=False``
    (``quantization.kernel_aware: false``) keeps only the correctness rules below. ``seven_bit``:
    ``quantization.reduce_range``.

    Correctness, whatever the kernels: a Clip whose bounds neural-compressor's removal would lose stays
    fp32 (:func:`clip_reason`); and a Relu or Clip whose input or output an If/Loop/Scan body reads
    stays fp32. neural-compressor's QDQ quantizer removes a Relu/Clip that follows a quantized layer,
    assuming the layer's output range was calibrated after it. A body reading the Relu's input gives
    that tensor a second reader, so its range keeps the negative values, and the main path then runs
    without its ReLU (the second pool's output went negative, logits off by up to 0.78 on an mnist-12-like model);
    a body reading the Relu's output loses its tensor (onnxruntime refuses the candidate). Measured on
    mnist-12-like models; layers, pools, reshapes and constants read by a body came out right and are left to INC."""
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    consts = {t.name: t for t in model.graph.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    plan = Plan()
    in_bodies = subgraph_reads(model)
    for n in model.graph.node:
        read = next((t for t in (*n.input, *n.output) if t in in_bodies), None) if n.op_type in _INC_REMOVES else None
        if read is not None:
            plan.keep_fp32[n.name or n.output[0]] = f"{read} is read inside an If/Loop/Scan body, which neural-compressor does not see"
            continue
        clip = clip_reason(n, consts, seven_bit) if n.op_type == "Clip" else None
        if clip:
            plan.keep_fp32[n.name or n.output[0]] = clip
            continue
        if not kernel_rules:
            continue
        if n.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        name = n.name or n.output[0]
        if n.op_type == "Conv":
            w = inits.get(n.input[1]) if len(n.input) > 1 else None
            group = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
            reason = "weights are not a constant" if w is None or len(w) < 2 else conv_reason(w, int(group))
            if reason:
                plan.keep_fp32[name] = reason
                continue
        plan.int8.append(name)
    return plan


def user_keep(original: onnx.ModelProto, prepared: onnx.ModelProto, absorbed: dict[str, str | None], nodes: list[str],
              op_types: list[str], source: str) -> tuple[set[str], list[str]]:
    """The prepared model's nodes that ``quantization.nodes_to_keep_fp32`` names, following nodes a rewrite
    merged into another (a bias Add into its Conv: the Conv stays fp32), with a note for each such step.
    A name in neither model, or an op type ONNX does not define, is a typo: ConfigError with a did-you-mean."""
    present = {n.name for n in prepared.graph.node}
    known = {n.name for n in original.graph.node if n.name} | present | set(absorbed)
    keep, notes = set(), []
    for name in nodes:
        if name not in known:
            hint = suggest(name, sorted(known))
            raise ConfigError(f"{source}: quantization.nodes_to_keep_fp32: the model has no node named {name!r}"
                              + (f" (did you mean {hint!r}?)" if hint else f"; its nodes: {', '.join(sorted(known)[:8])}"))
        target = name
        while target is not None and target not in present:
            target = absorbed.get(target)
        if target is None:
            notes.append(f"{name} was folded into a constant by a rewrite: nothing left to keep fp32")
            continue
        if target != name:
            notes.append(f"{name} was merged into {target} by a rewrite: {target} stays fp32")
        keep.add(target)
    for op in op_types:
        if not onnx.defs.has(op):
            hint = suggest(op, sorted({s.name for s in onnx.defs.get_all_schemas()}))
            raise ConfigError(f"{source}: quantization.op_types_to_keep_fp32: {op!r} is not an ONNX op type"
                              + (f" (did you mean {hint!r}?)" if hint else ""))
    return keep, notes
