"""Another producer's int8 MNIST model: onnxruntime's own ``quantize_static``, calibrated on MNIST
train images preprocessed as documented ([0, 1], NCHW). Used by the README's results, docs/validate.md and
``tests/workflows/test_validate.py`` to check that ``validate`` judges models it did not make.

    python examples/ort_quantize_static.py --input_model=../shared/models/mnist-12.onnx \\
        --output_model=ort-qdq.onnx --data_dir=../shared/data/mnist [--format=QOperator] [--per_channel] \\
        [--reduce_range] [--activations=int8] [--asymmetric_weights] [--gemm] [--float_gemm_output]

--gemm fuses MatMul + Add into Gemm first (onnxruntime's basic optimizations, as ``quant_pre_process``
does), so QOperator writes a com.microsoft QGemm and QDQ a DQ -> Gemm that onnxruntime fuses into one;
--float_gemm_output leaves the Gemm's output unquantized (a QGemm with float output). --per_channel
needs opset >= 13; older models are converted with ``onnx.version_converter`` first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import onnx

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from quant import data  # noqa: E402
from quant.config import preprocessing  # noqa: E402


class Reader:
    """onnxruntime's CalibrationDataReader protocol: one {input name: batch} dict per get_next()."""

    def __init__(self, input_name: str, x: np.ndarray):
        self._batches = iter([{input_name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self._batches, None)


def quantize(input_model: str, output_model: str, x: np.ndarray, fmt: str = "QDQ", per_channel: bool = False,
             reduce_range: bool = False, activations: str = "uint8", symmetric_weights: bool = True,
             gemm: bool = False, float_gemm_output: bool = False) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="ort-quantize-") as tmp:
        src = input_model
        model = onnx.load(src)
        if per_channel and next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
            src = os.path.join(tmp, "opset13.onnx")
            onnx.save(onnx.version_converter.convert_version(model, 13), src)
        if gemm:  # MatMul + Add -> Gemm, as onnxruntime.quantization.quant_pre_process does
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.optimized_model_filepath = os.path.join(tmp, "fused.onnx")
            ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
            src = so.optimized_model_filepath
        input_name = onnx.load(src).graph.input[0].name
        extra = {"WeightSymmetric": symmetric_weights}
        if float_gemm_output:
            extra["OpTypesToExcludeOutputQuantization"] = ["Gemm"]
        quantize_static(src, output_model, Reader(input_name, x),
                        quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                        per_channel=per_channel, reduce_range=reduce_range,
                        activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options=extra)


def calibration_images(data_dir: str, count: int = 100) -> np.ndarray:
    """The first ``count`` MNIST train images, [0, 1], NCHW (the zoo's documented preprocessing)."""
    train = data.load_split(data_dir, "train")
    return preprocessing.apply(train.images[:count], 1 / 255, 0.0, 1.0, "NCHW")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--input_model", required=True)
    p.add_argument("--output_model", required=True)
    p.add_argument("--data_dir", required=True, help="folder with the MNIST IDX files")
    p.add_argument("--format", choices=["QDQ", "QOperator"], default="QDQ")
    p.add_argument("--per_channel", action="store_true")
    p.add_argument("--reduce_range", action="store_true", help="7-bit ranges: the same result on every CPU")
    p.add_argument("--activations", choices=["uint8", "int8"], default="uint8")
    p.add_argument("--asymmetric_weights", action="store_true")
    p.add_argument("--gemm", action="store_true", help="fuse MatMul + Add into Gemm first (QGemm)")
    p.add_argument("--float_gemm_output", action="store_true", help="leave the Gemm output unquantized")
    a = p.parse_args()
    quantize(a.input_model, a.output_model, calibration_images(a.data_dir), a.format, a.per_channel, a.reduce_range,
             a.activations, not a.asymmetric_weights, a.gemm, a.float_gemm_output)
    print(a.output_model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
