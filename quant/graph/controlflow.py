"""A QDQ graph shape that makes onnxruntime abort the process while it loads the model, found and mended.

onnxruntime's ``QDQPropagationTransformer`` (``core/optimizer/qdq_transformer/qdq_propagation.cc``,
level 1, so on by default) moves a DequantizeLinear forward across MaxPool, Reshape, Transpose,
Squeeze, Unsqueeze and Slice: it puts a QuantizeLinear/DequantizeLinear pair on every edge out of
such an op. When one of those edges goes into an If/Loop/Scan node because one of its bodies reads
the tensor by name, the edge has no input slot: onnxruntime 1.31 indexes past the node's inputs and
a C++ assertion ends the process (no exception, so no message can be given after the fact; found
with ``nodes_to_keep_fp32: [<a pool whose output an If body reads>]``). Any program that loads such
a file aborts the same way, so:

- :func:`hazards` finds the shape in the graph as written (onnxruntime's earlier rewrites, such as
  removing an Identity or folding a scale, can make more graphs take that shape: so sessions load a
  QDQ model with subgraphs in a child process first, ``sessions.refuse_aborting``; this module
  then names the tensor and the body in the message);
- :func:`mend` gives each such body read its own QuantizeLinear/DequantizeLinear pair with the
  propagated DequantizeLinear's scale and zero point. onnxruntime leaves alone an edge group with an
  edge into a QuantizeLinear, so nothing reaches the body; and the pair is exact (the tensor holds
  dequantized values, which the ops above only select or move, so quantizing them with the same
  scale and zero point gives back the same integers, and dequantizing them the same floats).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import onnx
from onnx import helper

from quant.graph.models import body_reads, elem_types, fresh_name, node_graphs, subgraphs, taken_names

PROPAGATED_ACROSS = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice"})
_STANDARD = ("", "ai.onnx")
_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")


@dataclass(frozen=True)
class Hazard:
    dequantize: str  # the DequantizeLinear onnxruntime propagates forward
    op: str  # the node it propagates across, whose output a body reads
    tensor: str
    reader: str  # the If/Loop/Scan node whose body reads ``tensor``

    def __str__(self) -> str:
        return (f"DequantizeLinear {self.dequantize!r} reaches {self.op!r}, whose output {self.tensor!r} the body of "
                f"{self.reader!r} reads")


@dataclass
class _Site:
    graph: onnx.GraphProto
    hazard: Hazard
    dequantize: onnx.NodeProto
    reader: onnx.NodeProto


def _one_element_constants(g: onnx.GraphProto) -> set[str]:
    """Names of one-element constants defined in ``g``: initializers (not ones a graph input may override,
    which onnxruntime does not treat as constant), sparse ones, and Constant nodes (onnxruntime turns
    them into initializers when it loads the model)."""
    inputs = {i.name for i in g.input}
    out = {t.name for t in g.initializer if math.prod(t.dims) == 1 and t.name not in inputs}
    out.update(t.values.name for t in g.sparse_initializer if math.prod(t.dims) == 1 and t.values.name not in inputs)
    for n in g.node:
        if n.op_type == "Constant" and n.domain in _STANDARD and n.attribute:
            a = n.attribute[0]
            if (a.name == "value" and math.prod(a.t.dims) == 1) or a.name in ("value_float", "value_int") or \
                    (a.name in ("value_floats", "value_ints") and len(a.floats) + len(a.ints) == 1):
                out.add(n.output[0])
    return out


def _edges(g: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, bool]]]:
    """For each tensor, its edges in ``g`` as onnxruntime counts them: (reading node, read by one of its
    bodies), one per input slot and one per node whose bodies read the tensor (an implicit input)."""
    edges: dict[str, list[tuple[onnx.NodeProto, bool]]] = {}
    for n in g.node:
        for i in n.input:
            if i:
                edges.setdefault(i, []).append((n, False))
        for r in body_reads(n):
            edges.setdefault(r, []).append((n, True))
    return edges


def _sites(g: onnx.GraphProto, outer_constants: set[str], found: list[_Site], opset: int) -> None:
    """onnxruntime 1.31's walk, without changing anything, at any depth. ``EnsureUniqueDQForNodeUnit``
    first gives every node that reads a DequantizeLinear's output its own copy of it (reads inside a
    body keep the original), so each such node starts a propagation when the DequantizeLinear has
    one-element constant scale and zero point. ``PropagateDQForward`` then goes across the ops it can,
    output edge group by output edge group; a group with an edge into a QuantizeLinear is left alone,
    and a group with an edge into a body is where it aborts."""
    constants = outer_constants | _one_element_constants(g)
    edges = _edges(g)
    for d in g.node:
        if d.op_type != "DequantizeLinear" or d.domain not in _QDQ_DOMAINS or len(d.input) < 2 or not d.output:
            continue
        if any(x not in constants for x in d.input[1:3] if x):
            continue
        todo, seen = [n for n, in_body in edges.get(d.output[0], []) if not in_body], set()
        while todo:
            p = todo.pop()
            if p.op_type not in PROPAGATED_ACROSS or p.domain not in _STANDARD or id(p) in seen or not p.output:
                continue
            if p.op_type == "MaxPool" and opset < 12:  # onnxruntime propagates across MaxPool-12 and later only (measured)
                continue
            seen.add(id(p))
            group = edges.get(p.output[0], [])
            if any(not in_body and n.op_type == "QuantizeLinear" and n.domain in _QDQ_DOMAINS for n, in_body in group):
                continue
            for reader, in_body in group:
                if in_body:
                    found.append(_Site(g, Hazard(_label(d), _label(p), p.output[0], _label(reader)), d, reader))
                else:
                    todo.append(reader)
    for n in g.node:
        for sub in node_graphs(n):
            _sites(sub, constants, found, opset)


def _label(n: onnx.NodeProto) -> str:
    return n.name or f"{n.op_type}->{n.output[0] if n.output else ''}"


def _find(model: onnx.ModelProto) -> list[_Site]:
    found: list[_Site] = []
    opset = next((o.version for o in model.opset_import if o.domain in _STANDARD), 1)
    _sites(model.graph, set(), found, opset)
    return found


def hazards(model: onnx.ModelProto) -> list[Hazard]:
    """Every place where onnxruntime 1.31's QDQ propagation would abort the process while loading the
    model (none in a model without a DequantizeLinear followed by one of those ops and a subgraph)."""
    return [s.hazard for s in _find(model)]


def _rename_reads(body: onnx.GraphProto, old: str, new: str) -> None:
    """Make a body (and the bodies in it) read ``new`` where it read the outer tensor ``old``."""
    for g in [body, *subgraphs(body)]:
        for n in g.node:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new
        for o in g.output:
            if o.name == old:
                o.name = new


_ZERO_POINT_TYPES = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16, onnx.TensorProto.INT16}


def mend(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Hazard]]:
    """A copy of ``model`` in which every hazard's body read goes through its own exact
    QuantizeLinear/DequantizeLinear pair (see the module's docstring), with the hazards mended; the
    model itself when there are none. The pair has the DequantizeLinear's scale, zero point and
    attributes; without a zero point, one of zero in the quantized tensor's type is added (a
    QuantizeLinear without one would give uint8). A site whose quantized type (the DequantizeLinear's
    input, else its zero point) is not known or not 8/16-bit integer, such as int32, is left, since no
    QuantizeLinear gives that type back; :func:`hazards` reports it afterwards."""
    if not _find(model):
        return model, []
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = taken_names(out)
    mended: list[Hazard] = []
    left: set[Hazard] = set()
    while True:  # one site per pass, found again in the changed graph; each pass removes one body edge
        found = [f for f in _find(out) if f.hazard not in left]
        if not found:
            return out, mended
        s = found[0]
        d = s.dequantize
        scale_zp = [d.input[1], d.input[2] if len(d.input) > 2 and d.input[2] else ""]
        types = elem_types(out)
        kind = types.get(d.input[0]) or types.get(scale_zp[1])
        if kind not in _ZERO_POINT_TYPES:  # e.g. int32: no QuantizeLinear gives it back
            left.add(s.hazard)
            continue
        if not scale_zp[1]:
            if kind != onnx.TensorProto.UINT8:
                scale_zp[1] = fresh_name(out, s.hazard.tensor + ".zp", taken)
                s.graph.initializer.append(helper.make_tensor(scale_zp[1], kind, [], [0]))
        inputs = [x for x in scale_zp if x]
        q = fresh_name(out, s.hazard.tensor + ".q", taken)
        dq = fresh_name(out, s.hazard.tensor + ".dq", taken)
        attrs = list(d.attribute)
        pair = [helper.make_node("QuantizeLinear", [s.hazard.tensor, *inputs], [q], name=q, domain=d.domain),
                helper.make_node("DequantizeLinear", [q, *inputs], [dq], name=dq, domain=d.domain)]
        pair[0].attribute.extend(a for a in attrs if a.name in ("axis", "block_size"))
        pair[1].attribute.extend(attrs)
        for sub in node_graphs(s.reader):
            _rename_reads(sub, s.hazard.tensor, dq)
        nodes = [copy.deepcopy(n) for n in s.graph.node]
        at = next(k for k, n in enumerate(nodes) if s.hazard.tensor in n.output) + 1
        del s.graph.node[:]
        s.graph.node.extend(nodes[:at] + pair + nodes[at:])
        mended.append(s.hazard)
