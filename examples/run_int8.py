"""Classify one digit with an int8 model written by mnist-quant, using the preprocessing the model records.

``tune`` stores the preprocessing its calibration used in the model's ``metadata_props`` under
``mnist_quant.preprocessing``, e.g. ``{"layout":"NCHW","mean":0.0,"scale":"1/255","std":1.0}``:
``input = (pixel * scale - mean) / std`` with pixels 0..255, arranged as NCHW [N,1,28,28], NHWC
[N,28,28,1] or flat [N,784]. This script needs only onnxruntime, numpy and (for PNG) Pillow:

    python examples/run_int8.py --input_model=mnist-12-int8.onnx --image=digit.png
    python examples/run_int8.py --input_model=mnist-12-int8.onnx --image=t10k-images-idx3-ubyte.gz --index=7

A PNG is read as greyscale and resized to 28x28; MNIST digits are white on black, so invert a dark
digit on a light background with --invert. An IDX file (``.gz`` or raw) gives the image at --index.
Prints the digit on stdout and the per-class scores on stderr.
"""

from __future__ import annotations

import argparse
import gzip
import json
import struct
import sys
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort

KEY = "mnist_quant.preprocessing"


def preprocessing(model_path: str) -> dict:
    """The preprocessing the model documents; exits when it documents none."""
    model = onnx.load(model_path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if KEY not in meta:
        sys.exit(f"error: {model_path} records no {KEY} metadata (not written by mnist-quant's tune); "
                 "pass the preprocessing its producer documents instead")
    return json.loads(meta[KEY])


def read_image(path: str, index: int, invert: bool) -> np.ndarray:
    """One 28x28 uint8 image from a PNG (or any image Pillow reads) or an IDX images file."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:4] == b"\x00\x00\x08\x03":  # IDX: unsigned bytes, 3 dimensions
        count, rows, cols = struct.unpack(">III", raw[4:16])
        if not 0 <= index < count or (rows, cols) != (28, 28):
            sys.exit(f"error: {path}: {count} images of {rows}x{cols}; --index must be 0..{count - 1}")
        img = np.frombuffer(raw, np.uint8, rows * cols, 16 + index * rows * cols).reshape(28, 28)
    else:
        import io

        from PIL import Image

        img = np.asarray(Image.open(io.BytesIO(raw)).convert("L").resize((28, 28)), dtype=np.uint8)
    return 255 - img if invert else img


def to_input(img: np.ndarray, p: dict) -> np.ndarray:
    x = (img.astype(np.float32) * np.float32(float(Fraction(str(p["scale"])))) - np.float32(p["mean"])) / np.float32(p["std"])
    shapes = {"NCHW": (1, 1, 28, 28), "NHWC": (1, 28, 28, 1), "flat": (1, 784)}
    return x.reshape(shapes[p["layout"]]).astype(np.float32)


def main() -> int:
    a = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    a.add_argument("--input_model", required=True, help="an int8 model written by mnist-quant's tune")
    a.add_argument("--image", required=True, help="a PNG (or other image) or an MNIST IDX images file")
    a.add_argument("--index", type=int, default=0, help="which image of an IDX file (default 0)")
    a.add_argument("--invert", action="store_true", help="invert the grey levels (dark digit on light paper)")
    args = a.parse_args()
    p = preprocessing(args.input_model)
    session = ort.InferenceSession(args.input_model, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores = session.run(None, {name: to_input(read_image(args.image, args.index, args.invert), p)})[0].reshape(-1)
    print(f"preprocessing {p}; scores {[round(float(s), 3) for s in scores]}", file=sys.stderr)
    print(int(np.argmax(scores)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
