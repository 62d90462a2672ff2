"""quant.graph.controlflow: the QDQ graph shape that makes onnxruntime abort while loading, found and mended.

Whether onnxruntime aborts is asked of onnxruntime itself, in a child process, so these tests follow
the pinned onnxruntime: if a new version fixes the bug (or moves it), they say so."""

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import mnist12_like, qdq_before, read_in_if_body
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from quant.errors import ModelError, QuantError
from quant.graph import controlflow, finalize
from quant.runtime import sessions


def _body(tag: str, reads: str) -> onnx.GraphProto:
    return h.make_graph([h.make_node("ReduceSum", [reads], [f"{tag}_out"], keepdims=0)], tag, [],
                        [h.make_tensor_value_info(f"{tag}_out", T.FLOAT, [])])


def _graph(ops=("MaxPool",), side=None, body_reads=None, out_too=False, per_channel=False, nested=False, opset=13,
           scale="initializer", zero_point="uint8", between=None, reader="If"):
    """X -> QuantizeLinear -> DequantizeLinear -> ops... -> t, an If (or Loop) whose body reads ``body_reads``
    (default: t) and a Relu on t as the main output. ``side``: "fanout" (a second reader of the
    DequantizeLinear's output) or "q" (t also feeds a QuantizeLinear). ``scale``: "initializer",
    "Constant" (a node with ``value``), "value_float" (a node with that attribute) or "input" (an
    initializer also listed as a graph input). ``zero_point``: "uint8", or "int8 on Q only" (the
    DequantizeLinear has none). ``between``: an op put between the DequantizeLinear and the first op."""
    n = 8 if per_channel else 1
    zp_type = np.int8 if zero_point.startswith("int8") else np.uint8
    s_init = nh.from_array(np.full(n, 0.05, np.float32).reshape(() if n == 1 else (n,)), "s")
    inits = [nh.from_array(np.full(n, 0 if zp_type is np.int8 else 128, zp_type).reshape(() if n == 1 else (n,)), "z"),
             nh.from_array(np.array([1, 8, 16], np.int64), "shape"), nh.from_array(np.array(0.0, np.float32), "zero"),
             nh.from_array(np.array([0], np.int64), "axes"), nh.from_array(np.array([0], np.int64), "starts"),
             nh.from_array(np.array([3], np.int64), "ends")]
    nodes, inputs = [], [h.make_tensor_value_info("X", T.FLOAT, [1, 8, 4, 4])]
    if scale in ("initializer", "input"):
        inits.append(s_init)
        if scale == "input":
            inputs.append(h.make_tensor_value_info("s", T.FLOAT, []))
    elif scale == "Constant":
        nodes.append(h.make_node("Constant", [], ["s"], value=s_init))
    else:
        nodes.append(h.make_node("Constant", [], ["s"], value_float=0.05))
    axis = {"axis": 1} if per_channel else {}
    dq_zp = ["z"] if zero_point == "uint8" else []
    nodes += [h.make_node("QuantizeLinear", ["X", "s", "z"], ["xq"], **axis), h.make_node("DequantizeLinear", ["xq", "s", *dq_zp], ["xd"], **axis)]
    cur = "xd"
    if between:
        nodes.append(h.make_node(between, [cur], ["xb"]))
        cur = "xb"
    for k, op in enumerate(ops):
        attrs = {"MaxPool": {"kernel_shape": [1, 1]}, "Transpose": {"perm": [0, 1, 3, 2]}}.get(op, {})
        extra = {"Reshape": ["shape"], "Unsqueeze": ["axes"], "Squeeze": ["axes"], "Slice": ["starts", "ends", "axes"]}.get(op, [])
        nodes.append(h.make_node(op, [cur, *extra], [f"t{k}"], name=f"{op}{k}", **attrs))
        cur = f"t{k}"
    t_shape = {"Reshape": [1, 8, 16], "Unsqueeze": [1, 1, 8, 4, 4], "Squeeze": [8, 4, 4], "Slice": [1, 8, 4, 4]}.get(ops[-1] if ops else "", [1, 8, 4, 4])
    outs = [h.make_tensor_value_info("term", T.FLOAT, []), h.make_tensor_value_info("main", T.FLOAT, t_shape)]
    if side == "fanout":
        nodes.append(h.make_node("Relu", ["xd"], ["side"]))
    if side == "q":
        nodes += [h.make_node("QuantizeLinear", [cur, "s", "z"], ["sq"]), h.make_node("DequantizeLinear", ["sq", "s", "z"], ["side"])]
    if side:
        outs.append(h.make_tensor_value_info("side", T.FLOAT, t_shape if side == "q" else [1, 8, 4, 4]))
    if out_too:
        outs.append(h.make_tensor_value_info(cur, T.FLOAT, t_shape))
    reads = body_reads or cur
    nodes += [h.make_node("ReduceMax", ["X"], ["mx"], keepdims=0), h.make_node("Greater", ["mx", "zero"], ["cond"])]
    if reader == "Loop":  # one iteration: term = 0 + sum(t)
        inits += [nh.from_array(np.array(1, np.int64), "trips"), nh.from_array(np.array(0.0, np.float32), "v0")]
        body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("ReduceSum", [reads], ["r"], keepdims=0),
                             h.make_node("Add", ["v_in", "r"], ["v_out"])], "loop",
                            [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, []),
                             h.make_tensor_value_info("v_in", T.FLOAT, [])],
                            [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, [])])
        nodes.append(h.make_node("Loop", ["trips", "cond", "v0"], ["term"], name="If", body=body))
    else:
        then = _body("tb", reads)
        if nested:  # the read is two Ifs deep
            inner = h.make_node("If", ["cond"], ["inner"], then_branch=_body("ti", reads), else_branch=_body("ei", reads))
            then = h.make_graph([inner], "tb", [], [h.make_tensor_value_info("inner", T.FLOAT, [])])
        nodes.append(h.make_node("If", ["cond"], ["term"], name="If", then_branch=then, else_branch=_body("eb", reads)))
    nodes.append(h.make_node("Relu", [cur], ["main"]))
    g = h.make_graph(nodes, "g", inputs, outs, inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m


CASES = {  # name: (model, onnxruntime 1.31.1 aborts loading it)
    "MaxPool": (lambda: _graph(), True),
    "Transpose": (lambda: _graph(("Transpose",)), True),
    "Reshape": (lambda: _graph(("Reshape",)), True),
    "chain Transpose, MaxPool": (lambda: _graph(("Transpose", "MaxPool")), True),
    "read two Ifs deep": (lambda: _graph(nested=True), True),
    "DequantizeLinear read twice": (lambda: _graph(side="fanout"), True),
    "also a graph output": (lambda: _graph(out_too=True), True),
    "Relu (not propagated across)": (lambda: _graph(("Relu",)), False),
    "Relu before MaxPool": (lambda: _graph(("Relu", "MaxPool")), False),
    "body reads the DequantizeLinear": (lambda: _graph(body_reads="xd"), False),
    "group with a QuantizeLinear": (lambda: _graph(side="q"), False),
    "per-channel scale": (lambda: _graph(per_channel=True), False),
    "Loop body reads t": (lambda: _graph(reader="Loop"), True),
    "Squeeze": (lambda: _graph(("Squeeze",)), True),
    "Unsqueeze": (lambda: _graph(("Unsqueeze",)), True),
    "Slice": (lambda: _graph(("Slice",)), True),
    "scale from a Constant node": (lambda: _graph(scale="Constant"), True),
    "scale from a Constant value_float": (lambda: _graph(scale="value_float"), True),
    "scale a graph input may override": (lambda: _graph(scale="input"), False),
    "no zero point on the DequantizeLinear (int8)": (lambda: _graph(zero_point="int8 on Q only"), True),
    "MaxPool-11 (opset 11)": (lambda: _graph(opset=11), False),
    "MaxPool-12 in an opset-19 model": (lambda: _graph(opset=19), True),
    "mnist-12-like, QDQ before Pool2, If reads p2": (lambda: qdq_before(read_in_if_body(mnist12_like(), "p2", initializer=False), "Pool2"), True),
    "mnist-12-like, If reads p2, no QDQ": (lambda: read_in_if_body(mnist12_like(), "p2", initializer=False), False),
}


def _aborts(model: onnx.ModelProto, tmp_path) -> bool:
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    r = subprocess.run([sys.executable, "-c", f"import onnxruntime as o; o.InferenceSession({str(p)!r}, providers=['CPUExecutionProvider'])"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, -6, 134), r.stderr  # loads, or SIGABRT
    return r.returncode != 0


@pytest.mark.parametrize("case", list(CASES))
def test_hazards_match_what_onnxruntime_does_and_mend_makes_it_load(case, tmp_path):
    model, aborts = CASES[case][0](), CASES[case][1]
    found = controlflow.hazards(model)
    assert _aborts(model, tmp_path) is aborts, "onnxruntime changed: revisit quant/graph/controlflow.py"
    assert bool(found) is aborts, found
    mended, fixed = controlflow.mend(model)
    assert fixed == found and controlflow.hazards(mended) == []
    if not aborts:
        assert mended is model
        return
    onnx.checker.check_model(mended)
    assert not _aborts(mended, tmp_path)
    # exact: the same outputs as the original run without the propagation that aborts
    name, shape = model.graph.input[0].name, [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    a = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"], disabled_optimizers=["QDQPropagationTransformer"])
    b = ort.InferenceSession(mended.SerializeToString(), providers=["CPUExecutionProvider"])
    for _ in range(8):
        x = {name: (rng.normal(size=shape) + 0.3).astype(np.float32)}
        for u, v in zip(a.run(None, x), b.run(None, x)):
            assert np.array_equal(u, v)


def test_hazard_names_where_and_mend_gives_each_read_its_own_pair():
    m = _graph(("Transpose", "MaxPool"))
    (hz,) = controlflow.hazards(m)
    assert (hz.dequantize, hz.op, hz.tensor, hz.reader) == ("DequantizeLinear->xd", "MaxPool1", "t1", "If")
    assert "'t1'" in str(hz) and "'If'" in str(hz)
    mended, _ = controlflow.mend(m)
    pair = [n for n in mended.graph.node if n.output[0] in ("t1.q", "t1.dq")]
    assert [n.op_type for n in pair] == ["QuantizeLinear", "DequantizeLinear"] and all(list(n.input[1:]) == ["s", "z"] for n in pair)
    if_node = next(n for n in mended.graph.node if n.op_type == "If")
    assert all(n.input[0] == "t1.dq" for a in if_node.attribute for n in a.g.node)  # both branches read the pair
    assert [n.input[0] for n in mended.graph.node if n.op_type == "Relu"] == ["t1"]  # the main path is untouched


def test_sessions_refuse_such_a_model_with_a_message_instead_of_aborting():
    model = _graph().SerializeToString()
    with pytest.raises(ModelError, match=r"m\.onnx: onnxruntime .* aborts the process loading it \(tried in a child process\): "
                                         r".*'t0' the body of 'If' reads"):
        sessions.make_session(model, name="m.onnx")
    with pytest.raises(ModelError, match="aborts the process"):
        sessions.onnxruntime_graph(model, name="m.onnx")
    with pytest.raises(ModelError, match="^m.onnx: .*aborts the process"):
        sessions.plain_session(model, name="m.onnx")
    sessions.make_session(model, opt_level="disable")  # no optimizer, no abort: allowed


def test_a_crash_the_static_check_cannot_see_is_still_refused():
    """onnxruntime removes an Identity between the DequantizeLinear and the pool before it propagates, so
    the written graph does not show the shape: the load in a child process still catches the abort."""
    m = _graph(between="Identity")
    assert controlflow.hazards(m) == []
    with pytest.raises(ModelError, match=r"m\.onnx: onnxruntime .* aborts the process loading it \(tried in a child process\): SIGABRT"):
        sessions.make_session(m.SerializeToString(), name="m.onnx")


def test_the_child_load_runs_only_for_qdq_models_with_subgraphs_and_once_per_model(monkeypatch):
    import subprocess as sp

    calls = []
    real = sp.run

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(sessions.subprocess, "run", counting)
    plain = qdq_before(mnist12_like(), "Pool2").SerializeToString()  # QDQ, no subgraph: the default model's kind
    sessions.make_session(plain)
    assert calls == []
    with_if = read_in_if_body(mnist12_like(), "p2", initializer=False)
    with_if.graph.node[-1].name = "AddTerm2"  # bytes no earlier test loaded
    b = qdq_before(with_if, "Conv2").SerializeToString()
    sessions.make_session(b)
    sessions.make_session(b)
    assert len(calls) == 1


def test_finalize_mends_what_it_writes_and_says_so():
    m = qdq_before(read_in_if_body(mnist12_like(), "p2", initializer=False), "Pool2")
    out, notes = finalize.loadable(m)
    assert controlflow.hazards(out) == [] and notes and "p2" in notes[0]
    out2, notes2 = finalize.finish(m)
    assert controlflow.hazards(out2) == [] and any("body's read" in s for s in notes2)
    assert finalize.loadable(out) == (out, [])


def test_an_int32_site_is_left_for_the_refusal_not_mended_into_an_invalid_quantizelinear(tmp_path):
    """A DequantizeLinear of an int32 tensor (zero point int32) has no QuantizeLinear that gives its integers
    back (QuantizeLinear makes 8/16-bit types): mend leaves the site, so hazards still names it and
    finishing refuses to write it, instead of writing a QuantizeLinear with an int32 zero point."""
    m = _graph()
    g = m.graph
    g.input[0].type.tensor_type.elem_type = T.INT32
    g.node[0].op_type, g.node[0].input[:] = "Identity", ["X"]  # X (int32) -> xq, read by the DequantizeLinear
    del g.node[0].input[1:]
    z = next(i for i in g.initializer if i.name == "z")
    z.CopyFrom(nh.from_array(np.array(0, np.int32), "z"))
    k = next(k for k, n in enumerate(g.node) if n.op_type == "ReduceMax")  # the condition, from the int32 input
    g.node[k].output[0] = "mxi"
    g.node.insert(k + 1, h.make_node("Cast", ["mxi"], ["mx"], to=T.FLOAT))
    onnx.checker.check_model(m)
    assert _aborts(m, tmp_path)
    found = controlflow.hazards(m)
    assert [x.tensor for x in found] == ["t0"]
    mended, fixed = controlflow.mend(m)
    assert fixed == [] and controlflow.hazards(mended) == found
    assert not any(n.op_type == "QuantizeLinear" for n in mended.graph.node)
    with pytest.raises(QuantError, match="'t0' the body of 'If' reads"):
        finalize.loadable(m)
