"""Builders for synthetic test inputs: IDX files and small ONNX MNIST classifiers."""

from __future__ import annotations

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


def mnist12_like(batch: int | str = 1, seed: int = 0, opset: int = 12) -> onnx.ModelProto:
    """The MNIST-12 topology (Conv-Add-Relu-MaxPool x2, Reshape, MatMul, Add) with random weights."""
    rng = np.random.default_rng(seed)
    inits = [
        _t("W1", rng.normal(0, 0.3, (8, 1, 5, 5))), _t("B1", rng.normal(0, 0.1, (1, 8, 1, 1))),
        _t("W2", rng.normal(0, 0.1, (16, 8, 5, 5))), _t("B2", rng.normal(0, 0.1, (1, 16, 1, 1))),
        _t("W3", rng.normal(0, 0.1, (256, 10))), _t("B3", rng.normal(0, 0.1, (1, 10))),
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


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path
