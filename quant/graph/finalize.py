"""Finishing touches on INC's int8 model, before it is evaluated and written.

Each touch is a pass, ``model -> PassResult`` (the model, the note :func:`finish` reports, what it
changed); :data:`ALL` lists them in the order :func:`finish` runs them. What they do:

- :func:`float_outputs`: a graph output that INC quantized (``op -> QuantizeLinear -> DequantizeLinear
  -> output``, or ``-> Softmax -> output`` and other fp32 tail ops) is taken straight from the op
  instead: onnxruntime then runs the classifier head as an
  int8 QGemm / MatMulIntegerToFloat with float logits. Quantized logits (INC's scale for mnist-12 is
  ~0.44) tie the top-1 class on some images, so the accuracy depended on the tie rule.
- :func:`compact_names`, :func:`compact_constants`, :func:`drop_zero_bias_zero_points` and
  :func:`drop_default_attributes`: shorter names for INC's QuantizeLinear/DequantizeLinear glue and for
  the constants, no all-zero bias zero points, no attributes that repeat ONNX's default (bytes, not
  behaviour).
- :func:`drop_identity_requantization`: INC re-quantizes the output of every pool, transpose and reshape
  with the scale and zero point its input already had (``DQ -> MaxPool -> Q -> DQ -> Transpose -> Q ->
  DQ -> ...``). Such a pair is an exact identity (max, transposes and reshapes commute with the
  elementwise DequantizeLinear); the pairs in front of anything but another such op (a compute op, a
  graph output) stay, so QuantizeLinear/DequantizeLinear still mark every int8 compute input.
  onnxruntime runs the same kernels (tested on the executed graph); the file loses ~500 bytes.
- :func:`drop_unused_opsets`: INC saves its model through onnxruntime, which lists every domain it
  knows in ``opset_import``; only the domains that nodes use are kept.
- :func:`mend_bodies`: a body that reads a tensor onnxruntime's QDQ propagation reaches gets its own
  exact QuantizeLinear/DequantizeLinear pair (:mod:`quant.graph.controlflow`: without it, loading the
  model aborts the process). Also applied alone (:func:`loadable`) to INC's plain result
  (``kernel_aware: false``), which gets no other touch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from quant.errors import QuantError, first_line
from quant.graph import controlflow
from quant.graph.models import LAYOUT_ONLY, all_names, all_nodes, consumers, drop_unused_initializers, opset_of, readers, subgraph_reads

@dataclass(frozen=True)
class PassResult:
    """What one finishing pass did: the model (its input itself when the pass changed nothing), the note
    :func:`finish` reports for it (None when there is nothing to say), and what it changed: the tensors
    (``names``) or how many things (``count``), for the passes that name or count them."""

    model: onnx.ModelProto
    note: str | None = None
    names: tuple[str, ...] = ()
    count: int = 0


Pass = Callable[[onnx.ModelProto], PassResult]


# ops INC leaves in fp32 between a classifier head and the graph output (softmax heads, a bias or a term
# added to the logits, a flatten): a pair in front of them quantizes the logits just the same
_OUTPUT_TAIL = frozenset({"Softmax", "LogSoftmax", "Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze",
                          "Add", "Sub", "Mul", "Div", "Sigmoid", "Cast"})


def _output_pairs(m: onnx.ModelProto, producers: dict) -> list[onnx.NodeProto]:
    """The DequantizeLinear nodes reached backwards from the graph outputs through ``_OUTPUT_TAIL`` ops
    only (so nothing between them and the output is re-quantized), in output order."""
    found, seen = [], set()
    todo = [o.name for o in reversed(m.graph.output)]
    while todo:
        t = todo.pop()
        n = producers.get(t)
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type == "DequantizeLinear":
            found.append(n)
        elif n.op_type in _OUTPUT_TAIL and n.domain in ("", "ai.onnx"):
            todo.extend(reversed([i for i in n.input if i]))
    return found


def float_outputs(model: onnx.ModelProto) -> PassResult:
    """Remove the QuantizeLinear/DequantizeLinear pair between an op and each graph output, directly or
    through fp32 tail ops (``_OUTPUT_TAIL``: a softmax head's logits are quantized in front of the
    Softmax); ``names``: the tensors that became float."""
    m = copy.deepcopy(model)
    producers = {o: n for n in m.graph.node for o in n.output}
    uses = consumers(m)
    removed, changed = set(), []
    for dq in _output_pairs(m, producers):
        q = producers.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or uses.get(q.output[0], 0) != 1:
            continue
        src = producers.get(q.input[0])
        if src is None or uses.get(q.input[0], 0) != 1 or src.op_type in ("DequantizeLinear", "QuantizeLinear"):
            continue
        src.output[list(src.output).index(q.input[0])] = dq.output[0]
        removed.update((id(q), id(dq)))
        changed.append(dq.output[0])
    if not changed:
        return PassResult(model)
    keep = [n for n in m.graph.node if id(n) not in removed]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    drop_unused_initializers(m)
    return PassResult(m, "float outputs (the QuantizeLinear/DequantizeLinear pair between the last int8 op and the output removed): "
                         f"{', '.join(changed)}", names=tuple(changed), count=len(changed))


# ops whose output, re-quantized with their input's scale and zero point, equals their quantized input
# moved around (or, for MaxPool, the max of quantized values: DequantizeLinear is monotone)
_EXACT_ON_QUANTIZED = LAYOUT_ONLY | {"MaxPool"}


def drop_identity_requantization(model: onnx.ModelProto) -> PassResult:
    """Remove ``QuantizeLinear -> DequantizeLinear`` pairs that re-quantize the output of an exact op chain
    (``_EXACT_ON_QUANTIZED``) with the scale and zero point of the DequantizeLinear that feeds the chain,
    when every reader of the pair is another exact op. ``count``: the pairs removed."""
    m = copy.deepcopy(model)
    inits = {t.name: t for t in m.graph.initializer}
    uses = consumers(m)
    producers = {o: n for n in m.graph.node for o in n.output}
    read_by = readers(m)
    graph_outputs = {o.name for o in m.graph.output}
    in_subgraphs = subgraph_reads(m)  # a pair whose output an If/Loop body reads stays (readers() sees the top level)

    def same(a: str, b: str) -> bool:
        if a == b:
            return True
        ta, tb = inits.get(a), inits.get(b)
        return (ta is not None and tb is not None and ta.data_type == tb.data_type
                and np.array_equal(numpy_helper.to_array(ta), numpy_helper.to_array(tb)))

    def per_tensor(x: onnx.NodeProto) -> bool:  # a one-element scale: per-tensor whatever the attributes say
        t = inits.get(x.input[1])
        return t is not None and int(np.prod(t.dims)) == 1 and not x.attribute

    def same_params(x: onnx.NodeProto, y: onnx.NodeProto) -> bool:
        return (len(x.input) == len(y.input) and same(x.input[1], y.input[1]) and (len(x.input) < 3 or same(x.input[2], y.input[2]))
                and per_tensor(x) and per_tensor(y))

    removed, rename, pairs = set(), {}, 0
    for q in m.graph.node:
        if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or q.output[0] in graph_outputs:
            continue
        src, op = q.input[0], producers.get(q.input[0])
        while op is not None and op.op_type in _EXACT_ON_QUANTIZED and uses[src] == 1 and len(op.output) == 1:
            src = op.input[0]
            op = producers.get(src)
        if op is None or op.op_type != "DequantizeLinear" or src == q.input[0] or not same_params(op, q):
            continue
        dqs = read_by.get(q.output[0], [])
        if q.output[0] in in_subgraphs or any(d.output[0] in in_subgraphs for d in dqs):
            continue
        if not dqs or any(d.op_type != "DequantizeLinear" or not same_params(d, q) or d.output[0] in graph_outputs
                          or not read_by.get(d.output[0])
                          or any(r.op_type not in _EXACT_ON_QUANTIZED for r in read_by[d.output[0]]) for d in dqs):
            continue
        pairs += 1
        removed.add(id(q))
        for d in dqs:
            removed.add(id(d))
            rename[d.output[0]] = q.input[0]
    if not removed:
        return PassResult(model)
    keep = [n for n in m.graph.node if id(n) not in removed]
    for n in keep:
        n.input[:] = [rename.get(i, i) for i in n.input]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    drop_unused_initializers(m)
    return PassResult(m, f"{pairs} QuantizeLinear/DequantizeLinear pair(s) that re-quantized a pool/transpose/reshape output "
                         "with its input's own scale removed (exact)", count=pairs)


def drop_unused_opsets(model: onnx.ModelProto) -> PassResult:
    """Keep only the opset imports of domains that nodes use (at any depth); ``count``: the imports dropped."""
    used = {n.domain or "" for n in all_nodes(model)} | {""}  # If/Loop bodies' ops need their domains too
    m = copy.deepcopy(model)
    before = len(m.opset_import)
    keep = [o for o in m.opset_import if (o.domain or "") in used]
    del m.opset_import[:]
    m.opset_import.extend(keep)
    dropped = before - len(keep)
    return PassResult(m, f"opset imports of unused domains dropped ({before} -> {len(keep)})" if dropped else None, count=dropped)


# INC's names for a quantized tensor's constants -> compact_names' suffixes (one constant group per tensor)
_INC_TO_SHORT = (("_quantized", ".q"), ("_zero_point", ".zp"), ("_scale", ".s"))
_INC_SUFFIXES = ("_QuantizeLinear", "_quantized", "_QuantizeInput", "_dequantized", "_DequantizeLinear")


def _stem(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for s in _INC_SUFFIXES:
            if name.endswith(s) and len(name) > len(s):
                name, changed = name[: -len(s)], True
    return name


def compact_names(model: onnx.ModelProto) -> PassResult:
    """Shorter names for the QuantizeLinear/DequantizeLinear glue INC adds (its names repeat the
    consumer's name, ~40 bytes each, several times per tensor): a QuantizeLinear's output becomes
    ``<float tensor>.q``, a DequantizeLinear's ``<source>.dq`` (numbered when a source has several),
    the glue nodes lose their names and the quantized ops lose INC's ``_quant`` suffix (their names are
    the fp32 model's again, as ``quantization.nodes_to_keep_fp32`` spells them). Graph inputs, outputs, initializers and the compute ops'
    tensors keep theirs, so a layer still matches its fp32 twin by name."""
    m = copy.deepcopy(model)
    fixed = {i.name for i in m.graph.input} | {o.name for o in m.graph.output} | subgraph_reads(m)
    taken = all_names(m)
    rename: dict[str, str] = {}

    def fresh(base: str) -> str:
        name, k = base, 2
        while name in taken:
            name, k = f"{base}{k}", k + 1
        taken.add(name)
        return name

    for t in m.graph.initializer:  # INC's quantized weights and quantization parameters
        for suffix, short in _INC_TO_SHORT:
            if t.name.endswith(suffix) and t.name not in fixed and len(t.name) > len(suffix):
                taken.discard(t.name)
                rename[t.name] = t.name = fresh(t.name[: -len(suffix)] + short)
                break
    inits = {t.name for t in m.graph.initializer}
    for n in m.graph.node:  # a compute op's output INC renamed to X_QuantizeInput gets X back when X is free
        for k, o in enumerate(n.output):
            if o.endswith("_QuantizeInput") and o not in fixed and o[: -len("_QuantizeInput")] not in taken:
                taken.discard(o)
                rename[o] = n.output[k] = fresh(o[: -len("_QuantizeInput")])

    for n in m.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            if n.name.endswith("_quant"):  # INC's mark on the ops it quantized: the fp32 model's node name again
                n.name = n.name[: -len("_quant")]
            continue
        n.name = ""
        out = n.output[0]
        if out in fixed:
            continue
        src = n.input[0]
        if n.op_type == "QuantizeLinear":
            new = f"{_stem(src)}.q"
        elif src in inits:
            new = f"{src[:-2] if src.endswith('.q') else _stem(src)}.dq"  # a weight or bias
        else:
            new = f"{src[:-2] if src.endswith('.q') else _stem(src)}.dq"
        taken.discard(out)
        rename[out] = n.output[0] = fresh(new)
    return PassResult(m)


def drop_zero_bias_zero_points(model: onnx.ModelProto) -> PassResult:
    """A DequantizeLinear of an int32 constant (a bias) whose zero point is all zeros loses the zero
    point input (ONNX's default is 0 of the same type), and the initializer goes if unused.
    Only int32: onnxruntime 1.31 stops fusing DequantizeLinear -> Gemm into QGemm when the int8
    *weight's* DequantizeLinear has no zero point (measured), so those stay."""
    m = copy.deepcopy(model)
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if (n.op_type == "DequantizeLinear" and len(n.input) == 3 and n.input[0] in inits and n.input[2] in inits
                and inits[n.input[0]].data_type == onnx.TensorProto.INT32 and not np.any(numpy_helper.to_array(inits[n.input[2]]))):
            del n.input[2]
    drop_unused_initializers(m)
    return PassResult(m)


_QPARAM_SUFFIXES = tuple(short for _, short in _INC_TO_SHORT)


def compact_constants(model: onnx.ModelProto) -> PassResult:
    """Short names for the constants (initializers): ``c<i>`` in the order nodes first read them, a
    quantized tensor's group keeping its suffixes (``Parameter87.q``/``.s``/``.zp`` -> ``c2.q``/``c2.s``/
    ``c2.zp``), and a DequantizeLinear of a constant (a weight) ``c<i>.dq``. A quantization parameter's
    name repeats in every QuantizeLinear/DequantizeLinear that uses it: for mnist-12 this takes the
    9,692-byte model with INC's names to 8,952. Activations keep their names (validate matches a layer to its
    fp32 twin by name), and so do graph inputs and outputs (an initializer that is also a graph input
    can be fed by name) and every name a subgraph reads; new names avoid every name defined at any
    depth. Bytes only: no value and no node changes. ``count``: the names changed."""
    m = copy.deepcopy(model)
    inits = {t.name for t in m.graph.initializer}
    fixed = {i.name for i in m.graph.input} | {o.name for o in m.graph.output} | subgraph_reads(m)
    order = list(dict.fromkeys(i for n in m.graph.node for i in n.input if i in inits and i not in fixed))
    taken = (all_names(m) - set(order)) | all_names(m, top_level=False)
    rename: dict[str, str] = {}
    groups: dict[str, str] = {}
    k = 0
    for name in order:
        stem, suffix = name, ""
        for s in _QPARAM_SUFFIXES:
            if name.endswith(s) and len(name) > len(s):
                stem, suffix = name[: -len(s)], s
                break
        if stem not in groups:
            while any(f"c{k}{s}" in taken for s in ("", ".dq", *_QPARAM_SUFFIXES)):
                k += 1
            groups[stem] = f"c{k}"
            k += 1
        rename[name] = groups[stem] + suffix  # unique: names are, and the suffix is part of the name
    taken |= set(rename.values())
    for n in m.graph.node:  # a weight's DequantizeLinear output: named after its constant's group
        if n.op_type == "DequantizeLinear" and n.input[0] in rename and n.output[0] not in fixed:
            new = rename[n.input[0]].rsplit(".", 1)[0] + ".dq"
            if new != n.output[0] and new not in taken:
                taken.discard(n.output[0])
                taken.add(new)
                rename[n.output[0]] = new
                n.output[0] = new
    for t in m.graph.initializer:
        t.name = rename.get(t.name, t.name)
    for vi in m.graph.value_info:
        vi.name = rename.get(vi.name, vi.name)
    for n in m.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
    renamed = sum(old != new for old, new in rename.items())
    return PassResult(m, f"{renamed} constant name(s) shortened (c0, c1, ...)" if renamed else None, count=renamed)


# list-valued attributes whose ONNX default (when absent) is this value on every spatial axis
_SPATIAL_DEFAULTS = {"dilations": 1, "strides": 1, "pads": 0}
_SPATIAL_OPS = frozenset({"Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"})


def drop_default_attributes(model: onnx.ModelProto) -> PassResult:
    """Remove attributes (of ONNX-domain nodes) whose value is the one ONNX uses when the attribute is
    absent: the schema's default (``group=1``, ``auto_pad="NOTSET"``, ...) or, for convolutions and
    pools, all-ones ``dilations``/``strides`` and all-zero ``pads``. Exact by the ONNX spec; ``count``:
    the attributes removed."""
    m = copy.deepcopy(model)
    opset, dropped = opset_of(m), 0
    for n in m.graph.node:
        if n.domain not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(n.op_type, opset, "")
        except onnx.defs.SchemaError:
            continue
        keep = []
        for a in n.attribute:
            spec = schema.attributes.get(a.name)
            value = onnx.helper.get_attribute_value(a)
            default = (onnx.helper.get_attribute_value(spec.default_value)
                       if spec is not None and spec.default_value.type == a.type else None)
            if (default is not None and value == default) or (
                    n.op_type in _SPATIAL_OPS and a.name in _SPATIAL_DEFAULTS and a.type == onnx.AttributeProto.INTS
                    and len(value) > 0 and all(v == _SPATIAL_DEFAULTS[a.name] for v in value)):
                dropped += 1
                continue
            keep.append(a)
        if len(keep) < len(n.attribute):
            del n.attribute[:]
            n.attribute.extend(keep)
    if not dropped:
        return PassResult(model)
    return PassResult(m, f"{dropped} attribute(s) equal to their ONNX default dropped", count=dropped)


def mend_bodies(model: onnx.ModelProto) -> PassResult:
    """:func:`quant.graph.controlflow.mend`; ``names``: the tensors a body reads that got their own pair.
    Stops (exit 1) if a hazard is left, so no file that makes onnxruntime abort is ever written."""
    m, mended = controlflow.mend(model)
    left = controlflow.hazards(m)
    if left:
        raise QuantError(f"the int8 model would make onnxruntime abort the process: {left[0]}")
    if not mended:
        return PassResult(m)
    names = tuple(sorted({h.tensor for h in mended}))
    return PassResult(m, "QuantizeLinear/DequantizeLinear pair given to a body's read, without which onnxruntime aborts loading "
                         f"the model (exact): {', '.join(names)}", names=names, count=len(names))


# the finishing passes, in the order finish runs them: the renaming passes come after mend_bodies (which
# adds pairs with names of its own), and finish checks that they did not undo it
ALL: tuple[Pass, ...] = (float_outputs, drop_identity_requantization, drop_unused_opsets, mend_bodies, compact_names,
                         drop_zero_bias_zero_points, compact_constants, drop_default_attributes)


def run(passes: tuple[Pass, ...], model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Apply ``passes`` in order; the model and the notes of the passes that had one."""
    notes = []
    for p in passes:
        result = p(model)
        model = result.model
        if result.note:
            notes.append(result.note)
    return model, notes


def loadable(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Only :func:`mend_bodies`: what INC's plain result (``kernel_aware: false``) gets; the model and its note."""
    return run((mend_bodies,), model)


def finish(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """All finishing passes (:data:`ALL`), with a note for each that changed something; then the checks
    every written int8 model passes."""
    m, notes = run(ALL, model)
    try:  # never write a file other ONNX tools refuse (onnxruntime loads some invalid graphs, e.g. unsorted ones)
        onnx.checker.check_model(m)
    except Exception as e:
        raise QuantError(f"the finished int8 model fails the ONNX checker: {first_line(e)}") from None
    left = controlflow.hazards(m)  # the renaming passes after mend_bodies must not undo it
    if left:
        raise QuantError(f"the finished int8 model would make onnxruntime abort the process: {left[0]}")
    return m, notes
