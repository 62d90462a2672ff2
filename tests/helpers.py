"""Builders for synthetic test inputs: IDX files and small ONNX MNIST classifiers."""

from __future__ import annotations

import copy
import gzip
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant.data import SPLIT_FILES


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def pattern_images(labels: np.ndarray, rng: np.random.Generator, brightness: int = 255, noise: int = 20) -> np.ndarray:
    """Learnable synthetic digits: class k lights up rows 2k+4..2k+6 (plus uniform noise < ``noise``)."""
    imgs = rng.integers(0, noise, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        imgs[i, 2 * k + 4:2 * k + 7, 4:24] = brightness
    return imgs


def write_mnist(root: Path, n_train: int = 300, n_test: int = 200, seed: int = 0, gz: bool = True,
                train_brightness: int = 255, test_noise: int = 20) -> Path:
    """A synthetic MNIST folder with the four canonical file names (md5 will not match: verify off)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, n, bright, noise in (("train", n_train, train_brightness, 20), ("test", n_test, 255, test_noise)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        img_stem, lbl_stem = SPLIT_FILES[split]
        suffix = ".gz" if gz else ""
        write_idx(root / (img_stem + suffix), pattern_images(labels, rng, bright, noise), gz)
        write_idx(root / (lbl_stem + suffix), labels, gz)
    return root


def _t(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _ridge_head(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f1 = np.hstack([features, np.ones((len(features), 1))]).astype(np.float64)
    target = np.eye(10)[labels] * 2 - 1
    w = np.linalg.solve(f1.T @ f1 + 1e-4 * len(f1) * np.eye(f1.shape[1]), f1.T @ target)
    return w[:-1].astype(np.float32), w[-1].astype(np.float32)


def mnist12_like(batch: int | str = 1, seed: int = 0, opset: int = 12, fitted: bool = True) -> onnx.ModelProto:
    """The MNIST-12 topology (Conv-Add-Relu-MaxPool x2, Reshape, MatMul, Add): random convolutions and,
    with ``fitted``, a head fitted by ridge least squares to ``pattern_images`` (scale 1/255) so it classifies
    the synthetic digits well above chance (the toolkit refuses baselines at chance level); else random."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(0, 0.3, (8, 1, 5, 5)), rng.normal(0, 0.1, (1, 8, 1, 1))
    w2, b2 = rng.normal(0, 0.1, (16, 8, 5, 5)), rng.normal(0, 0.1, (1, 16, 1, 1))
    w3, b3 = rng.normal(0, 0.1, (256, 10)), rng.normal(0, 0.1, (1, 10))
    if fitted:
        import onnxruntime as ort

        labels = np.arange(500) % 10
        x = pattern_images(labels, np.random.default_rng(seed + 1)).astype(np.float32).reshape(-1, 1, 28, 28) / 255
        features = mnist12_like("N", seed, opset, fitted=False)
        features.graph.output[0].name = "flat"
        features.graph.output[0].type.tensor_type.ClearField("shape")
        sess = ort.InferenceSession(features.SerializeToString(), providers=["CPUExecutionProvider"])
        feats = sess.run(["flat"], {"Input3": x})[0]
        w3, b3 = _ridge_head(feats, labels)
    inits = [
        _t("W1", w1), _t("B1", b1), _t("W2", w2), _t("B2", b2), _t("W3", w3), _t("B3", b3.reshape(1, 10)),
        numpy_helper.from_array(np.array([1 if batch == 1 else -1, 256], dtype=np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["Input3", "W1"], ["c1"], name="Conv1", kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        helper.make_node("Add", ["c1", "B1"], ["a1"], name="Add1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="Relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="Pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "W2"], ["c2"], name="Conv2", kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
        helper.make_node("Add", ["c2", "B2"], ["a2"], name="Add2"),
        helper.make_node("Relu", ["a2"], ["r2"], name="Relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="Pool2", kernel_shape=[3, 3], strides=[3, 3]),
        helper.make_node("Reshape", ["p2", "shape"], ["flat"], name="Reshape"),
        helper.make_node("MatMul", ["flat", "W3"], ["mm"], name="MatMul"),
        helper.make_node("Add", ["mm", "B3"], ["Plus214_Output_0"], name="Add3"),
    ]
    graph = helper.make_graph(nodes, "mnist12_like", [helper.make_tensor_value_info("Input3", TensorProto.FLOAT, [batch, 1, 28, 28])],
                              [helper.make_tensor_value_info("Plus214_Output_0", TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def read_in_if_body(m: onnx.ModelProto, outer: str, initializer: bool, fixed_shape: list[int] | None = None) -> onnx.ModelProto:
    """``logits += 0.05 * sum(first 7 values of outer)``, per image, computed inside an If whose branches read ``outer`` by name from the enclosing graph; order-sensitive (a permuted
    weight or a cropped/transposed activation changes it). ``initializer``: ``outer`` has no batch dimension.
    ``fixed_shape``: the body flattens with a Reshape to this constant shape (the zoo's ``[1, 256]``) instead."""
    out = m.graph.output[0].name
    m.graph.node[-1].output[0] = out + "_pre"

    def branch(tag):
        nodes = [helper.make_node("Cast", [outer], [f"{tag}_c"], to=TensorProto.FLOAT),
                 helper.make_node("Flatten", [f"{tag}_c"], [f"{tag}_f"], axis=0 if initializer else 1) if fixed_shape is None
                 else helper.make_node("Reshape", [f"{tag}_c", f"{tag}_shape"], [f"{tag}_f"]),
                 helper.make_node("Slice", [f"{tag}_f", f"{tag}_st", f"{tag}_en", f"{tag}_ax"], [f"{tag}_s"]),
                 helper.make_node("ReduceSum", [f"{tag}_s"], [f"{tag}_r"], axes=[1], keepdims=1),
                 helper.make_node("Mul", [f"{tag}_r", f"{tag}_k"], [f"{tag}_out"])]
        consts = [numpy_helper.from_array(np.array(v, dt), f"{tag}_{k}")
                  for k, v, dt in (("st", [0], np.int64), ("en", [7], np.int64), ("ax", [1], np.int64), ("k", 0.05, np.float32),
                                   *([("shape", fixed_shape, np.int64)] if fixed_shape else []))]
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}_out", TensorProto.FLOAT, None)], consts)

    # the condition depends on the input (always true for pixels >= 0), so no optimizer can inline the If
    m.graph.initializer.append(numpy_helper.from_array(np.array(-1.0, np.float32), "cond_floor"))
    m.graph.node.extend([helper.make_node("ReduceMin", [m.graph.input[0].name], ["cond_min"], name="CondMin", keepdims=0),
                         helper.make_node("Greater", ["cond_min", "cond_floor"], ["cond"], name="Cond"),
                         helper.make_node("If", ["cond"], ["term"], name="If", then_branch=branch("then"), else_branch=branch("else")),
                         helper.make_node("Add", [out + "_pre", "term"], [out], name="AddTerm")])
    onnx.checker.check_model(m)
    return m


def qdq_before(m: onnx.ModelProto, node: str, scale: float = 0.05, zero_point: int = 0) -> onnx.ModelProto:
    """A QuantizeLinear/DequantizeLinear pair (uint8, one-element scale) in front of ``node``'s first input:
    with ``read_in_if_body(.., "p2")`` and ``node="Pool2"``, the graph shape that makes onnxruntime 1.31
    abort while loading (quant.graph.controlflow)."""
    n = next(x for x in m.graph.node if x.name == node)
    src = n.input[0]
    m.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{node}_qs"),
                                numpy_helper.from_array(np.array(zero_point, np.uint8), f"{node}_qz")])
    pair = [helper.make_node("QuantizeLinear", [src, f"{node}_qs", f"{node}_qz"], [f"{src}_q"], name=f"{node}_Q"),
            helper.make_node("DequantizeLinear", [f"{src}_q", f"{node}_qs", f"{node}_qz"], [f"{src}_dq"], name=f"{node}_DQ")]
    n.input[0] = f"{src}_dq"
    nodes = [copy.deepcopy(x) for x in m.graph.node]
    at = next(k for k, x in enumerate(nodes) if x.name == node)
    del m.graph.node[:]
    m.graph.node.extend(nodes[:at] + pair + nodes[at:])
    onnx.checker.check_model(m)
    return m


def pattern_linear(batch: int | str = "N", layout: str = "flat", softmax: bool = False) -> onnx.ModelProto:
    """A linear classifier that solves ``pattern_images`` exactly (weights = class row masks)."""
    w = np.zeros((28, 28, 10), np.float32)
    for k in range(10):
        w[2 * k + 4:2 * k + 7, 4:24, k] = 1.0 / 60
    shapes = {"flat": [batch, 784], "NCHW": [batch, 1, 28, 28], "NHWC": [batch, 28, 28, 1]}
    nodes, inits = [], [_t("W", w.reshape(784, 10)), _t("B", np.zeros((1, 10)))]
    x = "input"
    if layout != "flat":
        inits.append(numpy_helper.from_array(np.array([-1, 784], np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", [x, "flat_shape"], ["x_flat"], name="Flatten"))
        x = "x_flat"
    nodes += [helper.make_node("MatMul", [x, "W"], ["mm"], name="MatMul"), helper.make_node("Add", ["mm", "B"], ["logits"], name="Add")]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="Softmax", axis=1))
        out = "probs"
    graph = helper.make_graph(nodes, "pattern_linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shapes[layout])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def with_external_data_outside(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its first weight moved to external data at ../../etc/passwd (must be refused)."""
    w = model.graph.initializer[0]
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.external_data.add(key="location", value="../../etc/passwd")
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# ------------------------------------------------------------------ fitted classifiers (real MNIST)
CLASSIFIERS = {
    # name: (input layout, output kind, preprocessing the model was "trained" with)
    "mlp_flat": ("flat", "logits", {"scale": "1/255", "mean": 0.1307, "std": 0.3081, "layout": "flat"}),
    "keras_nhwc_softmax": ("NHWC", "probabilities", {"scale": "1/255", "mean": 0.0, "std": 1.0, "layout": "NHWC"}),
    "lenet_nchw_gemm": ("NCHW", "logits", {"scale": "1/255", "mean": 0.5, "std": 0.5, "layout": "NCHW"}),
}


def _features_graph(kind: str, rng: np.random.Generator) -> tuple[list, list, str, list, int]:
    """Fixed random feature extractor (nodes, initializers, feature tensor, input shape, feature count)."""
    if kind == "mlp_flat":
        w = rng.normal(0, 1 / 28, (784, 512))
        nodes = [helper.make_node("MatMul", ["input", "W1"], ["h"], name="fc1"), helper.make_node("Add", ["h", "B1"], ["hb"], name="fc1_bias"),
                 helper.make_node("Relu", ["hb"], ["feat"], name="relu1")]
        return nodes, [_t("W1", w), _t("B1", rng.normal(0, 0.1, (512,)))], "feat", ["N", 784], 512
    conv_in = "input"
    nodes = []
    if kind == "keras_nhwc_softmax":  # what tf2onnx emits for a Keras CNN: NHWC input, Transpose to NCHW
        nodes.append(helper.make_node("Transpose", ["input"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]))
        conv_in = "x_nchw"
    nodes += [helper.make_node("Conv", [conv_in, "Wc", "Bc"], ["c"], name="conv1", kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
              helper.make_node("Relu", ["c"], ["r"], name="relu1"),
              helper.make_node("MaxPool", ["r"], ["p"], name="pool1", kernel_shape=[4, 4], strides=[4, 4]),
              helper.make_node("Flatten", ["p"], ["feat"], name="flatten", axis=1)]
    inits = [_t("Wc", rng.normal(0, 0.2, (16, 1, 5, 5))), _t("Bc", rng.normal(0, 0.1, (16,)))]
    shape = ["N", 28, 28, 1] if kind == "keras_nhwc_softmax" else ["N", 1, 28, 28]
    return nodes, inits, "feat", shape, 16 * 7 * 7


def fitted_classifier(kind: str, x_train: np.ndarray, y_train: np.ndarray, seed: int = 0) -> onnx.ModelProto:
    """A small MNIST classifier of the given ``kind`` (see CLASSIFIERS): a fixed random feature
    extractor whose linear head is fitted by ridge least squares on ``x_train`` (preprocessed for the
    model's layout), so its accuracy on real MNIST is meaningful (about 90-97 %). Dynamic batch."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    nodes, inits, feat, in_shape, nf = _features_graph(kind, rng)
    g = helper.make_graph(nodes, "features", [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info(feat, TensorProto.FLOAT, ["N", nf])], inits)
    fm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    fm.ir_version = 8
    f = ort.InferenceSession(fm.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x_train})[0]
    head_w, head_b = _ridge_head(f, y_train)
    out = "logits"
    if kind == "lenet_nchw_gemm":
        nodes.append(helper.make_node("Gemm", [feat, "Wh", "Bh"], ["logits"], name="fc_out"))
        inits += [_t("Wh", head_w), _t("Bh", head_b)]
    else:
        nodes += [helper.make_node("MatMul", [feat, "Wh"], ["mm"], name="fc_out"), helper.make_node("Add", ["mm", "Bh"], ["logits"], name="fc_out_bias")]
        inits += [_t("Wh", head_w), _t("Bh", head_b.reshape(1, 10))]
    if CLASSIFIERS[kind][1] == "probabilities":
        nodes.append(helper.make_node("Softmax", ["logits", ], ["probs"], name="softmax", axis=-1))
        out = "probs"
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# ------------------------------------------------------------------- one result on every machine
# The default model's sha256 on Python 3.11, 3.12 and 3.13 and on CPUs with and without AVX-512 VNNI
# (docs/how-it-works.md, docs/benchmarks.md). A change here is a change of the published model: say why.
DEFAULT_MNIST12_INT8_SHA256 = "483d306e620e9b33789856a9cc4319bfbaf5cd1e29ac6917009dd7b7d031a296"


REPORT_KEYWORDS = {"report_path": "path", "reports": "write", "plots": "plots", "command": "command"}


def api_options(options_class, keywords: dict) -> dict:
    """``options=`` and ``report=`` for a workflow function from flat keywords (``mode=..., report_path=...``):
    the workflow's own options go to ``options_class``, the report's (:data:`REPORT_KEYWORDS`) to ReportOptions."""
    from quant.workflows.options import ReportOptions

    rep = {REPORT_KEYWORDS[k]: v for k, v in keywords.items() if k in REPORT_KEYWORDS}
    own = {k: v for k, v in keywords.items() if k not in REPORT_KEYWORDS}
    return {"options": options_class(**own), "report": ReportOptions(**rep)}
