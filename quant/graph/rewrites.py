"""Exact graph rewrites of an fp32 model that make its int8 form fast in stock onnxruntime.

Each rewrite keeps the model's outputs unchanged (mathematically; float summation order may move the
last bit) and returns ``(model, note | None)``; ``prepare`` applies them and checks the outputs on real
images. They are written for any MNIST-classifier shape (MLPs, LeNets, NHWC models), not for mnist-12:

- :func:`name_nodes`: unnamed nodes get names (the precision plan and INC address nodes by name).
- :func:`fold_constants`: nodes whose inputs are all constant (the zoo's ``Reshape`` of the FC weight)
  become initializers (evaluated with ``onnx.reference``).
- :func:`fuse_bias`: ``Conv -> Add(per-channel constant)`` becomes one Conv with a bias;
  ``MatMul(2-D, constant) -> Add(constant)`` becomes one Gemm (one int8 QGemm instead of an int8
  MatMul plus a separate Add).
- :func:`pool_before_relu`: ``Relu -> MaxPool`` becomes ``MaxPool -> Relu`` (both are monotone, so
  they commute). With the Relu first, onnxruntime's QDQ propagation moves the QuantizeLinear above
  the pool, whose uint8 NCHW kernel is ~14x slower than fp32; with it after, onnxruntime drops the
  Relu (a uint8 QuantizeLinear with zero point 0 already clamps at 0) and the pool stays cheap.
- :func:`crop_unread_outputs`: a ``Conv`` (through elementwise activations) feeding a pooling layer whose
  windows never reach its last rows/columns (mnist-12: a 3x3/3 MaxPool over 14x14 reads 12x12) stops
  computing them: its end padding shrinks by as much, so the pool reads the same values and the conv
  does less work (27 % fewer multiply-adds in mnist-12's second conv).
- :func:`channels_last_flatten`: ``[N,C,H,W] -> Reshape/Flatten -> Gemm/MatMul(constant B)`` gets a
  ``Transpose(0,2,3,1)`` before the flatten and B's rows permuted to match. onnxruntime runs int8
  convolutions in NHWC and inserts NHWC->NCHW transposes after them; this Transpose cancels that one.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from quant.graph.models import consumers, drop_unused_initializers, fresh_name, readers, subgraph_reads, taken_names

# ops that are safe to evaluate ahead of time when all their inputs are constant
_FOLDABLE = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Concat",
             "Mul", "Add", "Sub", "Div", "Neg", "Sqrt", "Reciprocal", "Shape", "Gather", "Slice", "Constant"}


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _inits(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _static_shapes(model: onnx.ModelProto) -> dict[str, list]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return {}
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def name_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Give unnamed nodes a name (``<OpType>_<k>``): the precision plan and INC address nodes by name."""
    if all(n.name for n in model.graph.node):
        return model, None
    m = copy.deepcopy(model)
    named, taken = [], taken_names(m)
    for k, n in enumerate(m.graph.node):
        if not n.name:
            n.name = fresh_name(m, f"{n.op_type}_{k}", taken)
            named.append(n.name)
    return m, f"named {len(named)} unnamed node(s): {', '.join(named)}"


def fold_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Replace constant-only subgraphs of simple ops by initializers."""
    from onnx.reference import ReferenceEvaluator

    m = copy.deepcopy(model)
    const = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    graph_inputs = {i.name for i in m.graph.input}
    folded, keep = [], []
    for n in m.graph.node:
        ins = [i for i in n.input if i]
        if (n.op_type in _FOLDABLE and n.domain in ("", "ai.onnx") and not any(a.type == onnx.AttributeProto.GRAPH for a in n.attribute)
                and all(i in const and i not in graph_inputs for i in ins)):
            sub = helper.make_graph([n], "fold", [], [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in n.output],
                                    [numpy_helper.from_array(const[i], i) for i in dict.fromkeys(ins)])
            sm = helper.make_model(sub, opset_imports=[o for o in m.opset_import if o.domain in ("", "ai.onnx")])
            sm.ir_version = m.ir_version
            try:
                vals = ReferenceEvaluator(sm).run(None, {})
            except Exception:
                keep.append(n)
                continue
            for o, v in zip(n.output, vals):
                const[o] = np.asarray(v)
            folded.append(n)
        else:
            keep.append(n)
    if not folded:
        return model, None
    outputs = {o for n in folded for o in n.output}
    used = {i for n in keep for i in n.input} | {o.name for o in m.graph.output} | subgraph_reads(m)
    for o in outputs & used:
        m.graph.initializer.append(numpy_helper.from_array(const[o], o))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    drop_unused_initializers(m)
    return m, f"folded {len(folded)} constant node(s) into initializers: {', '.join(n.name or n.op_type for n in folded)}"


def _per_channel_bias(arr: np.ndarray, channels: int) -> np.ndarray | None:
    """``arr`` as a [channels] bias when it broadcasts per channel over an [N, C, H, W] tensor."""
    if arr.size == 1:
        return np.full(channels, arr.reshape(()), arr.dtype)
    shape = list(arr.shape)
    while len(shape) > 3 and shape[0] == 1:
        shape.pop(0)
    if len(shape) == 3 and shape[0] == channels and shape[1] == shape[2] == 1:
        return arr.reshape(channels)
    return None


def _conv_bias(m: onnx.ModelProto, n: onnx.NodeProto, add: onnx.NodeProto, b: np.ndarray, inits: dict) -> str | None:
    """Fold the constant ``b`` that ``add`` adds to Conv ``n``'s output into its bias (a new initializer);
    the note, or None (nothing changed) when ``b`` is not one value per output channel."""
    w = inits.get(n.input[1])
    if w is None or b.dtype != np.float32:
        return None
    bias = _per_channel_bias(b, w.dims[0])
    if bias is None or (len(n.input) > 2 and n.input[2] not in inits):
        return None
    if len(n.input) > 2 and n.input[2]:
        bias = (numpy_helper.to_array(inits[n.input[2]]) + bias).astype(np.float32)
    name = fresh_name(m, f"{n.name or n.output[0]}_bias")
    m.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), name))
    inits[name] = m.graph.initializer[-1]
    del n.input[2:]
    n.input.append(name)
    n.output[0] = add.output[0]
    return f"{n.name or 'Conv'}+{add.name or 'Add'} -> Conv with bias"


def _gemm_bias(m: onnx.ModelProto, n: onnx.NodeProto, add: onnx.NodeProto, b: np.ndarray, inits: dict, shapes: dict) -> str | None:
    """Turn MatMul ``n`` (2-D input, constant 2-D weight) and the constant ``b`` that ``add`` adds into one Gemm;
    the note, or None (nothing changed) when the shapes do not allow it."""
    w = inits.get(n.input[1])
    xs = shapes.get(n.input[0])
    if w is None or len(w.dims) != 2 or xs is None or len(xs) != 2 or b.dtype != np.float32:
        return None
    k = w.dims[1]
    if not (b.shape in ((k,), (1, k)) or b.size == 1):
        return None
    bias = np.broadcast_to(b.reshape(-1), (k,)).astype(np.float32)
    name = fresh_name(m, f"{n.name or n.output[0]}_bias")
    m.graph.initializer.append(numpy_helper.from_array(bias, name))
    inits[name] = m.graph.initializer[-1]
    n.op_type = "Gemm"
    n.input.append(name)
    n.output[0] = add.output[0]
    return f"{n.name or 'MatMul'}+{add.name or 'Add'} -> Gemm"


def fuse_bias(model: onnx.ModelProto, gemm: bool = True) -> tuple[onnx.ModelProto, str | None]:
    """``Conv -> Add(const)`` into Conv's bias; ``MatMul(2-D x, const W) -> Add(const b)`` into ``Gemm``
    (only with ``gemm``: INC's QOperator format turns a Gemm into QGemm, an onnxruntime contrib op it
    writes without the com.microsoft domain, which no runtime loads; QLinearMatMul + QLinearAdd are
    standard ONNX)."""
    m = copy.deepcopy(model)
    inits = _inits(m)
    uses = consumers(m)
    shapes = _static_shapes(m)
    by_input = readers(m)
    removed, notes = set(), []
    for n in list(m.graph.node):
        if n.op_type not in ("Conv", "MatMul") or (n.op_type == "MatMul" and not gemm) or len(n.output) != 1 or uses[n.output[0]] != 1:
            continue
        add = by_input.get(n.output[0], [None])[0]
        if add is None or add.op_type != "Add" or id(add) in removed:
            continue
        other = add.input[1] if add.input[0] == n.output[0] else add.input[0]
        if other not in inits:
            continue
        b = numpy_helper.to_array(inits[other])
        note = _conv_bias(m, n, add, b, inits) if n.op_type == "Conv" else _gemm_bias(m, n, add, b, inits, shapes)
        if note is None:
            continue
        notes.append(note)
        removed.add(id(add))
    if not notes:
        return model, None
    keep = [n for n in m.graph.node if id(n) not in removed]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    drop_unused_initializers(m)
    return m, "fused biases: " + "; ".join(notes)


def pool_before_relu(model: onnx.ModelProto, after: set[str] | None = None) -> tuple[onnx.ModelProto, str | None]:
    """``Relu -> MaxPool`` becomes ``MaxPool -> Relu`` (max-pooling and ReLU commute); with ``after``,
    only where the Relu's input comes from a node named in it (the layers the precision plan keeps in
    fp32: behind an int8 layer the pool runs on uint8 in NHWC anyway, and INC 3.7.1 removes a Relu whose
    input is quantized, assuming its range was calibrated after the Relu, which a pool's is not)."""
    m = copy.deepcopy(model)
    uses = consumers(m)
    by_input = {i: n for n in m.graph.node for i in n.input}
    producers = {o: n for n in m.graph.node for o in n.output}
    swapped = []
    nodes = list(m.graph.node)
    for relu in nodes:
        if relu.op_type != "Relu" or uses[relu.output[0]] != 1:
            continue
        if after is not None and (producers.get(relu.input[0]) is None or producers[relu.input[0]].name not in after):
            continue
        pool = by_input.get(relu.output[0])
        if pool is None or pool.op_type != "MaxPool" or len(pool.output) != 1:
            continue
        x, y = relu.input[0], pool.output[0]
        mid = fresh_name(m, f"{x}_pool")
        pool.input[0], pool.output[0] = x, mid  # MaxPool(x) -> mid
        relu.input[0], relu.output[0] = mid, y  # Relu(mid) -> y
        i, j = nodes.index(relu), nodes.index(pool)
        nodes[i], nodes[j] = pool, relu
        swapped.append(f"{relu.name or 'Relu'}/{pool.name or 'MaxPool'}")
    if not swapped:
        return model, None
    copies = [copy.deepcopy(n) for n in nodes]
    del m.graph.node[:]
    m.graph.node.extend(copies)
    del m.graph.value_info[:]
    return m, "MaxPool moved before Relu (they commute): " + ", ".join(swapped)


# elementwise ops (no spatial mixing) a conv's output may pass through on its way to a pool
_ELEMENTWISE = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "HardSwish",
                "Softplus", "Softsign", "Identity"}


def _auto_pad(node: onnx.NodeProto) -> str:
    auto = _attr(node, "auto_pad", b"NOTSET")
    return auto.decode() if isinstance(auto, bytes) else auto


def _conv_pads(conv: onnx.NodeProto, spatial: list[int], kernel: list[int]) -> list[int] | None:
    """A 2-D Conv's explicit pads [top, left, bottom, right] (resolving ``auto_pad``), or None."""
    strides = list(_attr(conv, "strides", [1, 1]))
    dil = list(_attr(conv, "dilations", [1, 1]))
    auto = _auto_pad(conv)
    if auto in ("NOTSET", ""):
        pads = list(_attr(conv, "pads", [0, 0, 0, 0]))
        return pads if len(pads) == 4 else None
    if auto == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dil):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _rows_read(pool: onnx.NodeProto, size: int, axis: int) -> int | None:
    """How many leading rows (axis 0) / columns (axis 1) of its input an unpadded floor-mode pool reads."""
    k = list(_attr(pool, "kernel_shape", []))
    s = list(_attr(pool, "strides", [1] * len(k)))
    d = list(_attr(pool, "dilations", [1] * len(k)))
    if len(k) != 2 or len(s) != 2 or any(x != 1 for x in d):
        return None
    if _auto_pad(pool) not in ("NOTSET", "VALID", ""):
        return None
    if any(_attr(pool, "pads", [0, 0, 0, 0])) or _attr(pool, "ceil_mode", 0) or size < k[axis]:
        return None
    windows = (size - k[axis]) // s[axis] + 1
    return (windows - 1) * s[axis] + k[axis]


def crop_unread_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """``Conv -> [elementwise ops] -> MaxPool/AveragePool`` where the pool's windows (no padding, floor
    mode) stop short of the conv's last output rows/columns: the conv's end padding shrinks so it no longer
    computes them. Output rows keep their index (only the end padding changes), so the pool reads exactly
    the values it read before and its output is unchanged. Only padding can be removed: a conv without end
    padding keeps computing rows nobody reads (cutting its input would cost a copy)."""
    m = copy.deepcopy(model)
    inits = _inits(m)
    uses = consumers(m)
    shapes = _static_shapes(m)
    by_input = {i: n for n in m.graph.node for i in n.input}
    done = []
    for conv in m.graph.node:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or len(conv.input) < 2 or conv.input[1] not in inits:
            continue
        x, w = shapes.get(conv.input[0]), list(inits[conv.input[1]].dims)
        if not x or len(x) != 4 or None in x[2:] or len(w) != 4:
            continue
        kernel = list(_attr(conv, "kernel_shape", w[2:]))
        strides = list(_attr(conv, "strides", [1, 1]))
        dil = list(_attr(conv, "dilations", [1, 1]))
        pads = _conv_pads(conv, x[2:], kernel)
        if pads is None or len(strides) != 2 or len(dil) != 2:
            continue
        node, tensor = conv, conv.output[0]
        while uses[tensor] == 1 and tensor in by_input and by_input[tensor].op_type in _ELEMENTWISE and len(by_input[tensor].output) == 1:
            node = by_input[tensor]
            tensor = node.output[0]
        pool = by_input.get(tensor)
        if uses[tensor] != 1 or pool is None or pool.op_type not in ("MaxPool", "AveragePool") or len(pool.output) != 1:
            continue
        new = list(pads)
        for axis in (0, 1):
            span = (kernel[axis] - 1) * dil[axis] + 1
            out = (x[2 + axis] + pads[axis] + pads[2 + axis] - span) // strides[axis] + 1
            read = _rows_read(pool, out, axis)
            if read is None:
                break
            while new[2 + axis] > 0 and (x[2 + axis] + new[axis] + new[2 + axis] - 1 - span) // strides[axis] + 1 >= read:
                new[2 + axis] -= 1  # one less row of end padding still leaves every row the pool reads
        else:
            if new == pads:
                continue
            keep = [a for a in conv.attribute if a.name not in ("auto_pad", "pads")]
            del conv.attribute[:]
            conv.attribute.extend(keep + [helper.make_attribute("pads", new)])
            done.append(f"{conv.name or 'Conv'} -> {pool.name or pool.op_type} (pads {pads} -> {new})")
    if not done:
        return model, None
    del m.graph.value_info[:]
    return m, "conv outputs no pool reads no longer computed: " + ", ".join(done)


def channels_last_flatten(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Flatten [N,C,H,W] in (H,W,C) order before a fully connected layer with constant weights."""
    m = copy.deepcopy(model)
    inits = _inits(m)
    uses = consumers(m)
    shapes = _static_shapes(m)
    by_input = {i: n for n in m.graph.node for i in n.input}
    producers = {o: n for n in m.graph.node for o in n.output}
    done = []
    for flat in list(m.graph.node):
        if flat.op_type not in ("Reshape", "Flatten") or uses[flat.output[0]] != 1:
            continue
        src = shapes.get(flat.input[0])
        if not src or len(src) != 4 or any(d is None for d in src[1:]):
            continue
        if flat.op_type == "Flatten" and _attr(flat, "axis", 1) != 1:
            continue
        out = shapes.get(flat.output[0])
        c, h, w = src[1:]
        if flat.op_type == "Reshape" and (not out or len(out) != 2 or out[1] != c * h * w):
            continue
        prev = producers.get(flat.input[0])
        if prev is not None and prev.op_type == "Transpose":
            continue  # already reordered (e.g. a Keras NHWC model's own flatten)
        fc = by_input.get(flat.output[0])
        if fc is None or fc.op_type not in ("Gemm", "MatMul") or fc.input[0] != flat.output[0] or fc.input[1] not in inits:
            continue
        if uses[fc.input[1]] != 1 or (fc.op_type == "Gemm" and _attr(fc, "transA", 0)):
            continue
        wt = numpy_helper.to_array(inits[fc.input[1]])
        trans_b = fc.op_type == "Gemm" and _attr(fc, "transB", 0)
        rows = wt.T if trans_b else wt  # [C*H*W, K]
        if rows.ndim != 2 or rows.shape[0] != c * h * w:
            continue
        k = rows.shape[1]
        permuted = rows.reshape(c, h, w, k).transpose(1, 2, 0, 3).reshape(c * h * w, k)
        new_w = np.ascontiguousarray(permuted.T if trans_b else permuted)
        inits[fc.input[1]].CopyFrom(numpy_helper.from_array(new_w, fc.input[1]))
        t_out = fresh_name(m, f"{flat.input[0]}_hwc")
        t_node = helper.make_node("Transpose", [flat.input[0]], [t_out], name=fresh_name(m, f"{flat.name or 'flatten'}_hwc"), perm=[0, 2, 3, 1])
        flat.input[0] = t_out
        idx = list(m.graph.node).index(flat)
        m.graph.node.insert(idx, t_node)
        done.append(f"{flat.name or flat.op_type} -> {fc.name or fc.op_type}")
    if not done:
        return model, None
    del m.graph.value_info[:]
    return m, "flatten in (H, W, C) order with the FC weight rows permuted to match: " + ", ".join(done)


# the order matters: constants first (the zoo's weight Reshape), then fusions, then layout;
# pool_before_relu depends on the precision plan and runs after it
ALL = (name_nodes, fold_constants, fuse_bias, crop_unread_outputs, channels_last_flatten)
