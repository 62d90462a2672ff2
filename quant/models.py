"""ONNX model loading, safety checks and inspection (signature, precision of each op, sizes).

Models are parsed from bytes with external data *not* followed automatically: a reference that
points outside the model's folder is refused before anything is read.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import ModelError, first_line
from .fsio import sha256_bytes

MAX_MODEL_BYTES = 256 << 20  # MNIST classifiers are kilobytes; refuse absurd files early
QUANT_OPS = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
             "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax",
             "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "QLinearReduceMean", "QLinearWhere", "NhwcMaxPool"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
INT8_TYPES = {TensorProto.INT8, TensorProto.UINT8}


@dataclass
class LoadedModel:
    path: str
    proto: onnx.ModelProto
    raw: bytes  # the file's bytes (for sha256 / size)

    @property
    def bytes(self) -> int:
        return len(self.raw)

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.raw)

    @property
    def opset(self) -> int:
        return opset_of(self.proto)


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _check_external_data(model: onnx.ModelProto, base: Path, path: Path) -> bool:
    """Refuse external-data references that leave the model's folder. True if any exist."""
    found = False
    base_real = base.resolve()
    for t in _all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        found = True
        loc = {e.key: e.value for e in t.external_data}.get("location", "")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or base_real not in target.parents:
            raise ModelError(f"{path}: tensor {t.name!r} references external data {loc!r} outside the model's folder; refusing to read it")
        if not target.is_file():
            raise ModelError(f"{path}: tensor {t.name!r} references missing external data file {loc!r}")
    return found


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def load(path: str | os.PathLike, role: str = "model") -> LoadedModel:
    """Read, parse and check an ONNX file; every defect raises ModelError (exit 4) naming the file."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: {role} file not found")
    if p.is_dir():
        raise ModelError(f"{p}: {role} is a directory, expected an .onnx file")
    try:
        size = p.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ModelError(f"{p}: {role} is {size} bytes, over the {MAX_MODEL_BYTES} byte limit for an MNIST classifier")
        raw = p.read_bytes()
    except PermissionError:
        raise ModelError(f"{p}: {role} file is not readable (permission denied)") from None
    except OSError as e:
        raise ModelError(f"{p}: cannot read {role} ({e.strerror})") from None
    if not raw:
        raise ModelError(f"{p}: {role} file is empty")
    try:
        proto = onnx.load_model_from_string(raw)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{p}: not a valid ONNX file ({type(e).__name__})") from None
    if not proto.graph.node:
        raise ModelError(f"{p}: not a valid ONNX model (empty graph)")
    if _check_external_data(proto, p.parent, p):
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(proto, str(p.parent))
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        first = first_line(e)
        raise ModelError(f"{p}: ONNX checker failed: {first}") from None
    return LoadedModel(str(p), proto, raw)


# ---------------------------------------------------------------------------------- signature
def _dims(vi: onnx.ValueInfoProto) -> list:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


@dataclass(frozen=True)
class Signature:
    input_name: str
    input_shape: tuple
    input_dtype: int
    output_name: str
    output_shape: tuple

    @property
    def fixed_batch(self) -> int | None:
        """The batch size when the input's first dimension is a number, else None (dynamic)."""
        d = self.input_shape[0] if self.input_shape else None
        return d if isinstance(d, int) and d > 0 else None


LAYOUT_SHAPES = {"NCHW": (1, 28, 28), "NHWC": (28, 28, 1), "flat": (784,)}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def signature(model: onnx.ModelProto, path: str, input_name: str | None = None, layout: str | None = None) -> Signature:
    """Check that the model is an MNIST classifier (one float input of 784 pixels, 10 outputs)."""
    inputs = graph_inputs(model)
    if input_name is not None:
        match = [i for i in inputs if i.name == input_name]
        if not match:
            raise ModelError(f"{path}: has no input named {input_name!r} (model.input_name); inputs: {[i.name for i in inputs]}")
        inp = match[0]
    elif len(inputs) != 1:
        raise ModelError(f"{path}: expected one input (an image), found {len(inputs)}: {[i.name for i in inputs]}; set model.input_name")
    else:
        inp = inputs[0]
    if len(inputs) != 1:
        raise ModelError(f"{path}: has {len(inputs)} inputs {[i.name for i in inputs]}; an MNIST classifier takes one image input")
    dtype = inp.type.tensor_type.elem_type
    if dtype != TensorProto.FLOAT:
        raise ModelError(f"{path}: input {inp.name!r} is {TensorProto.DataType.Name(dtype)}, expected FLOAT")
    shape = tuple(_dims(inp))
    per_sample = shape[1:]
    if not shape or any(not isinstance(d, int) for d in per_sample) or int(np.prod(per_sample or [0])) != 784:
        raise ModelError(f"{path}: input {inp.name!r} has shape {list(shape)}; expected [N,1,28,28], [N,28,28,1] or [N,784]")
    if layout is not None and tuple(per_sample) != LAYOUT_SHAPES[layout]:
        want = ["N", *LAYOUT_SHAPES[layout]]
        raise ModelError(f"{path}: input {inp.name!r} has shape {list(shape)} but preprocessing.layout is {layout} ({want})")
    if len(model.graph.output) != 1:
        raise ModelError(f"{path}: expected one output (10 class scores), found {len(model.graph.output)}")
    out = model.graph.output[0]
    oshape = tuple(_dims(out))
    if not oshape or oshape[-1] != 10:
        raise ModelError(f"{path}: output {out.name!r} has shape {list(oshape)}; expected [N,10] class scores")
    return Signature(inp.name, shape, dtype, out.name, oshape)


def layout_of(sig: Signature) -> str:
    per = tuple(sig.input_shape[1:])
    return next(k for k, v in LAYOUT_SHAPES.items() if v == per)


# ----------------------------------------------------------------------------- quantization
def is_quantized(model: onnx.ModelProto) -> bool:
    if any(n.op_type in QUANT_OPS or n.op_type in QDQ_OPS for n in model.graph.node):
        return True
    return any(i.data_type in INT8_TYPES for i in model.graph.initializer)


def require_fp32(m: LoadedModel) -> None:
    if is_quantized(m.proto):
        ops = sorted({n.op_type for n in m.proto.graph.node if n.op_type in QUANT_OPS | QDQ_OPS})
        raise ModelError(f"{m.path}: is already quantized ({', '.join(ops) or 'int8 weights'}); tuning needs the fp32 model")


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in model.graph.initializer:
        types[init.name] = init.data_type
    return types


def op_precisions(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Which compute ops run in int8 and which in fp32 (Q/DQ conversion nodes listed apart), for the
    graph onnxruntime executes (:func:`quant.evaluation.onnxruntime_graph`).

    A node is int8 when it is a QLinear*/Integer op or when its data input is an int8/uint8 tensor
    (e.g. MaxPool on uint8). In that graph onnxruntime has already fused every DQ -> op -> Q group it
    can run in int8, so an op still between a DequantizeLinear and a QuantizeLinear runs in fp32
    (e.g. the bias Add of onnxruntime's own QDQ models); guessing from a QDQ file's DQ/Q groups
    would call it int8.
    """
    types = _elem_types(model)
    inits = {i.name for i in model.graph.initializer}
    res = {"int8": [], "fp32": [], "convert": []}
    for n in model.graph.node:
        label = f"{n.op_type}:{n.name}" if n.name else n.op_type
        data_inputs = [i for i in n.input if i and i not in inits]
        if n.op_type in QDQ_OPS:
            res["convert"].append(label)
        elif n.op_type in QUANT_OPS or (data_inputs and types.get(data_inputs[0]) in INT8_TYPES):
            res["int8"].append(label)
        else:
            res["fp32"].append(label)
    return res


def precision_summary(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Op-type counts per precision, e.g. {'int8': {'QLinearConv': 2}, 'fp32': {...}}."""
    p = op_precisions(model)
    return {k: dict(sorted(Counter(x.split(":")[0] for x in v).items())) for k, v in p.items()}


def size_breakdown(model: onnx.ModelProto, file_bytes: int) -> dict:
    """Initializer bytes by dtype and the rest of the file (graph structure, names, metadata)."""
    by_dtype: Counter = Counter()
    for t in _all_tensors(model):
        arr = numpy_helper.to_array(t)
        by_dtype[TensorProto.DataType.Name(t.data_type).lower()] += arr.nbytes
    weights = sum(by_dtype.values())
    return {"file_bytes": file_bytes, "weight_bytes": weights, "weight_bytes_by_dtype": dict(sorted(by_dtype.items())),
            "graph_overhead_bytes": file_bytes - weights}


def serialize(model: onnx.ModelProto) -> bytes:
    """Deterministic serialization (protobuf's deterministic mode keeps map order stable)."""
    return model.SerializeToString(deterministic=True)


def output_producer(model: onnx.ModelProto, sig: Signature) -> str | None:
    """Op type of the node that produces the model's output (through Identity/Reshape/Flatten)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    name = sig.output_name
    for _ in range(len(model.graph.node)):
        n = producers.get(name)
        if n is None:
            return None
        if n.op_type in ("Identity", "Reshape", "Flatten", "Squeeze", "DequantizeLinear"):
            name = n.input[0]
            continue
        return n.op_type
    return None


def check_output_kind(model: onnx.ModelProto, sig: Signature, declared: str, path: str) -> None:
    """``model.output`` must agree with the graph: probabilities <=> the output comes from Softmax."""
    op = output_producer(model, sig)
    softmax = op in ("Softmax", "QLinearSoftmax")
    if declared == "logits" and softmax:
        raise ModelError(f"{path}: output {sig.output_name!r} comes from {op} (probabilities) but model.output is logits; "
                         "set model.output: probabilities")
    if declared == "probabilities" and not softmax:
        raise ModelError(f"{path}: output {sig.output_name!r} comes from {op or 'no node'}, not Softmax, "
                         "but model.output is probabilities; set model.output: logits")


# ------------------------------------------------------------------------------ graph helpers
def consumers(model: onnx.ModelProto) -> Counter:
    """How many times each tensor is read: node inputs, plus one for a graph output (its name must stay)."""
    c = Counter(i for n in model.graph.node for i in n.input if i)
    c.update(o.name for o in model.graph.output)
    return c


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node and no graph output reads (in place)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
