"""ONNX model loading, safety checks and inspection (signature, precision of each op, sizes).

Models are read bounded (:func:`quant.files.read_regular_file`) and parsed from bytes. External data
is resolved against the model's own folder, never the working folder: a reference outside that folder,
to anything but a regular file, or past the size limit is refused before anything is read, and the data
is inlined so that what onnxruntime runs is self-contained.
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from quant.config.preprocessing import LAYOUT_SHAPES
from quant.errors import ModelError, first_line, printable
from quant.files import read_regular_file, regular_file_size, sha256_bytes

MAX_MODEL_BYTES = 256 << 20  # MNIST classifiers are kilobytes; refuse absurd files (with their external data) early
QUANT_OPS = {"QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
             "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax",
             "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "DynamicQuantizeLinear", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "QLinearReduceMean", "QLinearWhere", "NhwcMaxPool"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
INT8_TYPES = {TensorProto.INT8, TensorProto.UINT8}


@dataclass
class LoadedModel:
    """A checked model. ``raw`` is what every onnxruntime session is built from: the .onnx file's bytes or, when
    the file keeps tensors in external data files, the model serialized with that data inlined (given bytes,
    onnxruntime would look for the data files in the working folder). ``bytes``/``sha256`` describe ``raw``, so
    for a self-contained file they are the file's own (as ``sha256sum`` prints it); ``file_bytes``/``file_sha256``
    are always the .onnx file's, and ``external_data`` maps each data file (relative to the model's folder) to
    its size."""

    path: str
    proto: onnx.ModelProto
    raw: bytes
    file_bytes: int
    file_sha256: str
    external_data: dict[str, int]

    @property
    def bytes(self) -> int:
        return len(self.raw)

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.raw)

    @property
    def opset(self) -> int:
        return opset_of(self.proto)

    def describe(self) -> dict:
        """The model's identity for reports; says which bytes ``sha256`` covers when the file has external data."""
        d = {"path": self.path, "bytes": self.bytes, "sha256": self.sha256, "opset": self.opset}
        if self.external_data:
            d["external_data"] = {"files": self.external_data, "onnx_file_bytes": self.file_bytes, "onnx_file_sha256": self.file_sha256,
                                  "note": "bytes and sha256 are of the model with its external data inlined (what ran)"}
        return d


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def _external_refs(model: onnx.ModelProto, p: Path, base: Path) -> list[tuple[TensorProto, Path, int, int | None]]:
    """(tensor, data file, offset, length or None) of every external-data tensor, each file inside the model's
    folder ``base`` (symlinks resolved): anything else is refused before it is read."""
    refs = []
    for t in all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (base / loc).resolve()
        if os.path.isabs(loc) or base not in target.parents:
            raise ModelError(f"{p}: tensor {t.name!r} references external data {loc!r} outside the model's folder; refusing to read it")
        try:
            offset, length = int(info.get("offset", 0)), (int(info["length"]) if "length" in info else None)
            if offset < 0 or (length is not None and length < 0):
                raise ValueError
        except ValueError:  # not a number, negative, or thousands of digits
            raise ModelError(f"{p}: tensor {t.name!r} has an invalid external data offset or length ({info})") from None
        refs.append((t, target, offset, length))
    return refs


def _inline_external_data(model: onnx.ModelProto, p: Path, role: str, file_bytes: int) -> dict[str, int]:
    """Read the model's external data (bounded, counted with the .onnx file against MAX_MODEL_BYTES before any
    byte is read) into its tensors, so no tensor references a file any more. Returns {data file: size}."""
    base = p.parent.resolve()
    refs = _external_refs(model, p, base)
    what = f"external data of {role} {p}"
    sizes = {target: regular_file_size(target, what, MAX_MODEL_BYTES, ModelError) for _, target, _, _ in refs}
    spans = []
    for t, target, offset, length in refs:
        end = sizes[target] if length is None else offset + length
        if end > sizes[target] or offset > end:
            raise ModelError(f"{p}: tensor {t.name!r} needs bytes {offset}..{end} of {target.name}, which has {sizes[target]}")
        spans.append(end - offset)
    total = file_bytes + max(sum(sizes.values()), sum(spans))  # the bytes read, or the bytes inlined if more
    if total > MAX_MODEL_BYTES:
        raise ModelError(f"{p}: {role} with its external data is {total} bytes, over the {MAX_MODEL_BYTES} byte limit")
    blobs = {target: read_regular_file(target, what, size, ModelError) for target, size in sizes.items()}
    for (t, target, offset, _), n in zip(refs, spans):
        t.raw_data = blobs[target][offset:offset + n]
        t.data_location = TensorProto.DEFAULT
        del t.external_data[:]
    return {str(target.relative_to(base)): size for target, size in sizes.items()}


def node_graphs(n: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The subgraphs a node holds directly (If branches, Loop/Scan bodies)."""
    return [g for a in n.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def subgraphs(g: onnx.GraphProto):
    """Every subgraph under ``g``, at any depth."""
    for n in g.node:
        for sub in node_graphs(n):
            yield sub
            yield from subgraphs(sub)


def _body_reads(body: onnx.GraphProto) -> set[str]:
    """The names a body and the bodies inside it read: node inputs, and graph outputs (a body may output an
    outer tensor as it is). Names a body defines itself are never outer names: ONNX forbids the reuse."""
    out: set[str] = set()
    for g in [body, *subgraphs(body)]:
        out.update(i for n in g.node for i in n.input if i)
        out.update(o.name for o in g.output)
    return out


def body_reads(n: onnx.NodeProto) -> set[str]:
    """Every name a node's If/Loop/Scan bodies read, at any depth (onnxruntime's implicit inputs)."""
    return set().union(*(_body_reads(sub) for sub in node_graphs(n)))


def node_reads(n: onnx.NodeProto) -> set[str]:
    """What a node reads: its inputs and every name its If/Loop/Scan bodies read, at any depth."""
    return {i for i in n.input if i} | body_reads(n)


def all_nodes(model: onnx.ModelProto):
    """Every node of the model: the main graph's and, at any depth, its If/Loop/Scan bodies'."""
    yield from model.graph.node
    for sub in subgraphs(model.graph):
        yield from sub.node


def all_tensors(model: onnx.ModelProto):
    """Every tensor of the model: initializers (sparse ones too) and node attributes, in subgraphs and functions."""

    def of_graph(g):
        yield from g.initializer
        for s in g.sparse_initializer:
            yield from (s.values, s.indices)
        for n in g.node:
            yield from of_node(n)

    def of_node(n):
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for s in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors):
                yield from (s.values, s.indices)
        for g in node_graphs(n):
            yield from of_graph(g)

    yield from of_graph(model.graph)
    for f in model.functions:
        for n in f.node:
            yield from of_node(n)


def load(path: str | os.PathLike, role: str = "model") -> LoadedModel:
    """Read (bounded), parse and check an ONNX file and its external data; every defect raises ModelError
    (exit 4) naming the file."""
    p = Path(path)
    file_raw = read_regular_file(p, f"{role} file", MAX_MODEL_BYTES, ModelError)
    if not file_raw:
        raise ModelError(f"{p}: {role} file is empty")
    try:
        proto = onnx.load_model_from_string(file_raw)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{p}: not a valid ONNX file ({type(e).__name__})") from None
    if not proto.graph.node:
        raise ModelError(f"{p}: not a valid ONNX model (empty graph)")
    external = _inline_external_data(proto, p, role, len(file_raw))
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        first = first_line(e)
        raise ModelError(f"{p}: ONNX checker failed: {first}") from None
    check_names(proto, str(p))
    raw = serialize(proto) if external else file_raw
    return LoadedModel(str(p), proto, raw, len(file_raw), sha256_bytes(file_raw), external)


MAX_NAME_CHARS = 4096  # a node or tensor name; exporters write a few dozen characters


def _graph_names(g: onnx.GraphProto):
    for vi in [*g.input, *g.output, *g.value_info]:
        yield "tensor", vi.name
    for t in g.initializer:
        yield "initializer", t.name
    for n in g.node:
        yield "node", n.name
        for t in [*n.input, *n.output]:
            yield "tensor", t
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _graph_names(sub)


def check_names(proto: onnx.ModelProto, path: str) -> None:
    """Node and tensor names are data a model brings: each at most MAX_NAME_CHARS characters and free of control
    characters, line separators and bidirectional overrides (they appear in messages and reports), else ModelError."""
    for kind, name in _graph_names(proto.graph):
        if len(name) > MAX_NAME_CHARS:
            raise ModelError(f"{path}: a {kind} name is {len(name):,} characters, over the {MAX_NAME_CHARS:,} limit "
                             f"({printable(name, 40)})")
        if not name.isprintable() and printable(name, None) != name:
            raise ModelError(f"{path}: the {kind} name '{printable(name, 80)}' holds control or invisible characters")


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
    if tuple(per_sample) not in LAYOUT_SHAPES.values():
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
    """Quantized ops or int8 constants anywhere, If/Loop bodies included."""
    if any(n.op_type in QUANT_OPS or n.op_type in QDQ_OPS for n in all_nodes(model)):
        return True
    return any(i.data_type in INT8_TYPES for i in all_tensors(model))


def require_fp32(m: LoadedModel) -> None:
    """What tuning needs before any work (exit 4 with a hint): an fp32 model of standard ONNX ops with
    finite weights. INC would otherwise fail deep inside its loop (a traceback or a silently bad model)."""
    if is_quantized(m.proto):
        ops = sorted({n.op_type for n in all_nodes(m.proto) if n.op_type in QUANT_OPS | QDQ_OPS})
        raise ModelError(f"{m.path}: is already quantized ({', '.join(ops) or 'int8 weights'}); tuning needs the fp32 model")
    custom = sorted({f"{n.domain}.{n.op_type}" for n in all_nodes(m.proto) if n.domain not in ("", "ai.onnx")})
    if custom:
        raise ModelError(f"{m.path}: uses ops outside the standard ONNX domain ({', '.join(custom[:3])}); neural-compressor "
                         "quantizes standard ONNX ops only: export the model with standard ops")
    for t in all_tensors(m.proto):
        if t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16):
            bad = int(np.count_nonzero(~np.isfinite(numpy_helper.to_array(t).astype(np.float64))))
            if bad:
                raise ModelError(f"{m.path}: tensor {t.name!r} holds {bad} NaN or infinite value(s); a model with non-finite "
                                 "weights cannot be calibrated: re-export it from a healthy checkpoint")


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor at any depth (If/Loop/Scan bodies too), as ONNX shape inference
    sees it; initializers by their own type."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        inferred = model
    types = {}
    for g in [inferred.graph, *subgraphs(inferred.graph)]:
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            types[vi.name] = vi.type.tensor_type.elem_type
        for init in g.initializer:
            types[init.name] = init.data_type
    return types


def op_precisions(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Which compute ops run in int8 and which in fp32 (Q/DQ conversion nodes listed apart), for the
    graph onnxruntime executes (:func:`quant.runtime.sessions.onnxruntime_graph`).

    A node is int8 when it is a QLinear*/Integer op or when its data input is an int8/uint8 tensor
    (e.g. MaxPool on uint8). In that graph onnxruntime has already fused every DQ -> op -> Q group it
    can run in int8, so an op still between a DequantizeLinear and a QuantizeLinear runs in fp32
    (e.g. the bias Add of onnxruntime's own QDQ models); guessing from a QDQ file's DQ/Q groups
    would call it int8.
    """
    types = elem_types(model)
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
    for t in all_tensors(model):
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


# ------------------------------------------------------------------------------ graph helpers
# ops that only move values around (a quantized tensor passes through them unchanged in value)
LAYOUT_ONLY = frozenset({"Transpose", "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze"})


def readers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def subgraph_reads(model: onnx.ModelProto) -> set[str]:
    """Names read inside the subgraphs of control-flow nodes (If/Loop/Scan bodies), at any depth: such a
    body may read an outer tensor by name, so these names must neither be renamed nor dropped."""
    return set().union(*(_body_reads(sub) for n in model.graph.node for sub in node_graphs(n)))


def all_names(model: onnx.ModelProto, top_level: bool = True) -> set[str]:
    """Every tensor name a model defines or reads, at any depth: node inputs and outputs, graph inputs,
    outputs, initializers, sparse initializers and value_info of the main graph and of every subgraph
    (a new name must avoid all of them). ``top_level=False``: the names inside subgraphs only."""
    out: set[str] = set()
    for g in ([model.graph] if top_level else []) + list(subgraphs(model.graph)):
        out.update(v.name for v in (*g.input, *g.output, *g.value_info))
        out.update(t.name for t in g.initializer)
        out.update(t.values.name for t in g.sparse_initializer)
        out.update(x for n in g.node for x in (*n.input, *n.output) if x)
    return out


def sort_nodes(model: onnx.ModelProto) -> int:
    """Put the main graph's nodes in an order where every node comes after the producers of what it
    reads, its subgraphs' reads of outer tensors included (in place; returns how many nodes moved).
    neural-compressor sorts its candidates without those reads: an If whose body reads a pool's output
    landed before the pool. onnxruntime loads such a graph, but the ONNX checker (and so other tools)
    refuses it. Stable: among the nodes ready at a step, the earliest in the current order goes first,
    so an already valid order is kept as it is (the default model's bytes do not change)."""
    import heapq

    nodes = list(model.graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps: list[set[int]] = []
    for k, n in enumerate(nodes):
        deps.append({producer[r] for r in node_reads(n) if r in producer and producer[r] != k})
    users: dict[int, list[int]] = {}
    for k, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(k)
    waiting = [len(d) for d in deps]
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users.get(k, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):  # a cycle: leave the graph to the checker, which names it
        return 0
    moved = sum(1 for pos, k in enumerate(order) if pos != k)
    if moved:
        copies = [copy.deepcopy(nodes[k]) for k in order]
        del model.graph.node[:]
        model.graph.node.extend(copies)
    return moved


def taken_names(model: onnx.ModelProto) -> set[str]:
    """What a new name must avoid: every tensor name at any depth and the top-level node names."""
    return all_names(model) | {n.name for n in model.graph.node}


def fresh_name(model: onnx.ModelProto, base: str, taken: set[str] | None = None) -> str:
    """``base``, or ``base_<k>`` with the first k that makes it a name the model uses nowhere: no tensor
    at any depth (a subgraph may not define a name its outer graph defines) and no top-level node.
    ``taken``: :func:`taken_names` computed once by the caller for many new names (the new one is added to it)."""
    if taken is None:
        taken = taken_names(model)
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def consumers(model: onnx.ModelProto) -> Counter:
    """How many times each tensor is read: node inputs, plus one for a graph output (its name must stay)
    and one for a read inside a subgraph."""
    c = Counter(i for n in model.graph.node for i in n.input if i)
    c.update(o.name for o in model.graph.output)
    c.update(subgraph_reads(model))
    return c


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node, no subgraph and no graph output reads (in place)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output} | subgraph_reads(model)
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
