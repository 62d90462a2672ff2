"""Graph preparation before quantization: legacy-IR clean-up, opset upgrade, dynamic batch, and the
exact rewrites of :mod:`quant.graph.rewrites` that make the int8 model fast in stock onnxruntime.

Every step is a pure ONNX rewrite that leaves the model's outputs unchanged; each returns a short
note for the report. :func:`quant.runtime.evaluation.check_same_outputs` verifies a rewrite with onnxruntime, image by image.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import onnx
from onnx import helper, numpy_helper, version_converter

from quant.errors import ModelError, first_line
from quant.graph import rewrites
from quant.graph.models import Signature, consumers, fresh_name, graph_inputs, node_reads, opset_of

# QLinearConv exists since opset 10 and INC's adaptor wants 11, but MaxPool on int8 tensors needs 12: at opset 11
# mnist-8 quantized with a DequantizeLinear/QuantizeLinear pair around each MaxPool (11,082 bytes vs 10,124).
MIN_OPSET = 12
PER_CHANNEL_QDQ_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis attribute) needs opset 13
BATCH_DIM = "N"


@dataclass
class Prepared:
    model: onnx.ModelProto
    steps: list[str] = field(default_factory=list)
    # node name -> op type before the rewrites (a fused MatMul keeps its name as a Gemm), so settings
    # given by op type (quantization.op_types_to_keep_fp32: [MatMul]) still reach the fused node
    origin: dict[str, str] = field(default_factory=dict)
    # node name -> the node a rewrite merged it into (None: folded into an initializer), so names given in
    # quantization.nodes_to_keep_fp32 (a bias Add now part of its Conv) still reach the node that computes them
    absorbed: dict[str, str | None] = field(default_factory=dict)


def required_opset(fmt: str, per_channel: bool) -> int:
    return PER_CHANNEL_QDQ_OPSET if (fmt == "QDQ" and per_channel) else MIN_OPSET


def strip_initializer_inputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """IR < 4 models (mnist-7/8) list every weight as a graph input too; quantizers treat those as
    user inputs and fuse less. Drop them from graph.input (the initializers stay)."""
    inits = {i.name for i in model.graph.initializer}
    dup = [i for i in model.graph.input if i.name in inits]
    if not dup:
        return model, None
    m = copy.deepcopy(model)
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    return m, f"removed {len(dup)} initializers listed as graph inputs (IR < 4 style)"


def upgrade_opset(model: onnx.ModelProto, target: int, path: str = "model") -> tuple[onnx.ModelProto, str | None]:
    """Convert the default-domain opset up to ``target`` with onnx's version converter."""
    current = opset_of(model)
    if current >= target:
        return model, None
    try:
        m = version_converter.convert_version(model, target)
        min_ir = helper.find_min_ir_version_for(list(m.opset_import), ignore_unknown=True)
        m.ir_version = max(m.ir_version, min_ir)
        onnx.checker.check_model(m)
    except Exception as e:
        first = first_line(e)
        raise ModelError(f"{path}: cannot upgrade opset {current} to {target} for quantization: {first}") from None
    return m, f"opset {current} -> {target} (onnx version converter; IR {model.ir_version} -> {m.ir_version})"


def _activation_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors computed from the graph's (non-initializer) inputs, through If/Loop bodies' reads too."""
    reach = {i.name for i in graph_inputs(model)}
    for n in model.graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if any(i in reach for i in node_reads(n)):
            reach.update(o for o in n.output if o)
    return reach


def make_batch_dynamic(model: onnx.ModelProto, sig: Signature, path: str = "model") -> tuple[onnx.ModelProto, str | None]:
    """Rewrite a fixed batch dimension to a symbolic one (``N``): graph input/output dims and the
    constant shapes of Reshape nodes on the activation path (the zoo's ``[1, 256]`` becomes ``[-1, 256]``)."""
    fixed = sig.fixed_batch
    if fixed is None:
        return model, None
    m = copy.deepcopy(model)
    for vi in [*graph_inputs(m), *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_param = BATCH_DIM
    del m.graph.value_info[:]  # stale fixed shapes; shape inference recomputes them
    inits = {t.name: t for t in m.graph.initializer}
    consts = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant" and n.output}
    users = consumers(m)  # reads inside If/Loop bodies count: a shape they read too gets a copy
    act = _activation_tensors(m)
    rewritten = []
    for n in m.graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2 or n.input[0] not in act:
            continue
        name = n.input[1]
        if name in inits:
            shape = numpy_helper.to_array(inits[name])
        elif name in consts:
            shape = numpy_helper.to_array(next(a.t for a in consts[name].attribute if a.name == "value"))
        else:
            continue  # computed shape (Shape -> Gather ...) already follows the batch
        if shape.ndim != 1 or not len(shape) or int(shape[0]) != fixed:
            continue
        new = shape.copy()
        new[0] = 0 if -1 in shape[1:] else -1  # 0 = copy the input's batch dimension
        tensor = numpy_helper.from_array(new.astype(shape.dtype), fresh_name(m, f"{name}_dynamic_batch") if users[name] > 1 else name)
        if tensor.name == name and name in inits:
            inits[name].CopyFrom(tensor)
        else:
            m.graph.initializer.append(tensor)
            n.input[1] = tensor.name
        rewritten.append(n.name or n.output[0])
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        onnx.checker.check_model(m)
    except Exception as e:
        first = first_line(e)
        raise ModelError(f"{path}: cannot make the batch dimension dynamic: {first}") from None
    del m.graph.value_info[:]
    return m, (f"batch dimension {fixed} -> {BATCH_DIM} (dynamic); Reshape shapes rewritten: "
               f"{', '.join(rewritten) if rewritten else 'none'}")


def prepare(model: onnx.ModelProto, sig: Signature, fmt: str, per_channel: bool, dynamic_batch: bool,
            path: str = "model", rewrite: bool = True) -> Prepared:
    """All preparation steps a model needs before INC quantizes it, with a note for each one applied
    (``rewrite``: also the speed rewrites of :mod:`quant.graph.rewrites`)."""
    out = Prepared(model)
    m, note = upgrade_opset(model, required_opset(fmt, per_channel), path)  # the converter needs IR-3 inputs kept
    if note:
        out.steps.append(note)
    m, note = strip_initializer_inputs(m)
    if note:
        out.steps.append(note)
    if dynamic_batch:
        m, note = make_batch_dynamic(m, sig, path)
        if note:
            out.steps.append(note)
    if rewrite:
        for step in rewrites.ALL:
            kwargs = {"gemm": fmt == "QDQ"} if step is rewrites.fuse_bias else {}
            before, (m, note) = m, _guarded(step, m, path, **kwargs)
            if note:
                out.steps.append(note)
                out.absorbed.update(_absorbed(before, m))
            if step is rewrites.name_nodes:
                out.origin = {n.name: n.op_type for n in m.graph.node}
    out.model = m
    return out


def _absorbed(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, str | None]:
    """Named nodes a rewrite removed -> the node that now produces their output (None when none does)."""
    kept = {n.name for n in after.graph.node}
    producer = {o: n.name for n in after.graph.node for o in n.output}
    return {n.name: next((producer[o] for o in n.output if o in producer), None)
            for n in before.graph.node if n.name and n.name not in kept}


def apply_plan(model: onnx.ModelProto, keep_fp32: set[str], path: str = "model") -> tuple[onnx.ModelProto, str | None]:
    """The rewrites that depend on the precision plan (MaxPool before Relu behind fp32 layers)."""
    return _guarded(rewrites.pool_before_relu, model, path, after=keep_fp32)


def _guarded(step, model: onnx.ModelProto, path: str, **kwargs):
    try:
        m, note = step(model, **kwargs)
        if note:
            onnx.checker.check_model(m)
        return m, note
    except Exception as e:  # a rewrite must never take a run down: report it as a model problem
        raise ModelError(f"{path}: graph rewrite {step.__name__} failed: {first_line(e)}") from None

