"""``validate``: is an int8 model right for its documented preprocessing, and where does it lose accuracy?

Checks (each pass / fail / skip with its evidence):
- structure: ONNX checker, opset, same input/output names, shapes, dtypes as the fp32 baseline, which ops
  run in int8 and which stayed fp32;
- input range: the range the model's input QuantizeLinear (scale, zero point) was calibrated for vs the
  range the configured preprocessing produces on the data (the zoo's mnist-12-int8 expects 0..255 and is
  documented for 0..1);
- accuracy vs the baseline under the config's criterion;
- per-layer error: SQNR and relative error of every quantized activation vs its fp32 twin (info);
- tied outputs: test images whose top-1 output is exactly tied, and top-1 under "first max" vs "any max" (info);
- CPU portability: this CPU's onnxruntime outputs vs an exact integer reference of the same graph
  (:mod:`quant.runtime.reference`) on a sample of test images (warn when results depend on the CPU kind);
- zoo test data: the model reproduces ``test_data_set_*`` reference outputs.

Any producer's format: QOperator, QDQ (per-tensor or per-channel, symmetric or not), onnxruntime's
``com.microsoft`` ops (QGemm, QLinearAdd), int8 or uint8 activations. What runs in int8 is read from
the graph onnxruntime executes, not guessed from op names.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from quant import report as report_mod
from quant.config import ATOL, DEFAULT_ATOL, DEFAULT_RTOL, PORTABILITY_SAMPLES, RTOL, SAMPLES, check_flag, criterion
from quant.config.preprocessing import Preprocessing
from quant.data import provenance
from quant.errors import AccuracyError, ModelError, printable
from quant.files import check_distinct, check_writable_target
from quant.graph import models
from quant.runtime import evaluation, sessions
from quant.workflows import inputs, testdata
from quant.workflows.options import ReportOptions

RANGE_MIN_USE = 0.25      # the data must span at least a quarter of the calibrated input range ...
RANGE_MAX_CLIPPED = 1e-3  # ... and at most 0.1 % of input values may fall outside it
LOW_SQNR_DB = 20.0        # layers below this are flagged "low"
NAME_TWIN_SLACK_DB = 3.0  # a same-named fp32 twin is used unless another tensor agrees > 3 dB better (a fused Relu)
PORTABLE_REL_DIFF = 0.01  # outputs within 1 % of the reference's largest |output|: same result on every CPU
# suffixes quantizers append to the fp32 tensor name (onnxruntime and INC QOperator, onnxruntime QDQ)
QUANT_SUFFIXES = ("_quantized", "_QuantizeLinear_Output", "_output_quantized")
# output (scale, zero point) input positions of QOperator ops; pass-through ops keep their input's
QOP_OUTPUT_QPARAMS = {"QuantizeLinear": (1, 2), "QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QLinearAdd": (6, 7),
                      "QLinearMul": (6, 7), "QLinearAveragePool": (3, 4), "QLinearGlobalAveragePool": (3, 4),
                      "QLinearSigmoid": (3, 4), "QLinearLeakyRelu": (3, 4), "QLinearSoftmax": (3, 4), "QGemm": (6, 7)}
PASS_THROUGH = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Relu"}


@dataclass
class Check:
    name: str
    status: str  # pass | fail | warn | skip | info  (only fail changes the exit code)
    summary: str
    details: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """One line: ``PASS structure: ...``."""
        return f"{self.status.upper():<4} {self.name}: {self.summary}"


# ------------------------------------------------------------------------------- input range
def _qrange(dtype, bits: int = 8) -> tuple[int, int]:
    """Integer range a quantizer of ``dtype`` calibrates onto: the full type, or with 7-bit ranges
    (reduce_range: uint8 0..127, int8 -64..64, as onnxruntime's and INC's quantizers define them)."""
    info = np.iinfo(dtype)
    if bits == 7:
        return (0, 127) if info.min == 0 else (-64, 64)
    return int(info.min), int(info.max)


# int8 weights of the ops that carry them (QOperator; in QDQ models the DequantizeLinear of a weight)
_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "DequantizeLinear": 0}


def weight_bits(model: onnx.ModelProto) -> int | None:
    """7 when the model was quantized with 7-bit ranges (reduce_range), 8 for full ranges, None if unknown.

    Symmetric int8 weight quantization maps each tensor's largest magnitude onto qmax: 127 with full
    ranges, 64 with reduce_range. So the largest |weight| over all int8 weight tensors tells the two
    apart (activation scales alone cannot: a 7-bit uint8 quantizer looks like an 8-bit one of twice the range).
    """
    inits = {t.name: t for t in model.graph.initializer}
    peak = None
    for n in model.graph.node:
        i = _WEIGHT_INPUT.get(n.op_type)
        if i is None or len(n.input) <= i or n.input[i] not in inits or inits[n.input[i]].data_type != TensorProto.INT8:
            continue
        w = numpy_helper.to_array(inits[n.input[i]])
        if w.size > 1:
            m = int(np.abs(w.astype(np.int32)).max())
            peak = m if peak is None else max(peak, m)
    if peak is None:
        return None
    return 7 if peak <= 64 else 8


def activation_bits(model: onnx.ModelProto, rows: list[dict] | None = None, input_name: str | None = None) -> int:
    """7 when the activations were quantized with 7-bit ranges, else 8.

    Weights tell whether reduce_range was used (:func:`weight_bits`), but not whether it covered the
    activations: INC's reduce_range calibrates uint8 activations onto 0..127, onnxruntime's
    ``quantize_static(reduce_range=True)`` only the weights. So with 7-bit weights the activations
    count as 8-bit as soon as one of them (other than the input's, which is what is being judged)
    is calibrated for 8 bits on the data (``rows`` from :func:`layer_errors`): the activations' largest
    integers sit, in the median over the quantized tensors other than the input's (which is what is
    being judged), nearer the 8-bit end (255 for uint8) than the 7-bit one (127). A single tensor beyond
    127 does not decide it: a 7-bit quantizer saturates at the type's end, so test images brighter
    than the calibration images reach past 127.
    """
    if weight_bits(model) != 7:
        return 8
    peaks = []  # each tensor's largest integer as a fraction of the way from the 7-bit end to the 8-bit end
    for r in rows or []:
        if r.get("q_max") is None or r.get("source") == input_name:
            continue
        dtype = np.uint8 if r["q_dtype"] == "uint8" else np.int8
        (lo7, hi7), (lo8, hi8) = _qrange(dtype, 7), _qrange(dtype, 8)
        up = (r["q_max"] - hi7) / (hi8 - hi7)
        peaks.append(max(up, (lo7 - r["q_min"]) / (lo7 - lo8)) if lo7 != lo8 else up)  # uint8: 0 is both ranges' bottom
    return 8 if peaks and float(np.median(peaks)) > 0.5 else 7


def input_quantization(model: onnx.ModelProto, input_name: str, bits: int | None = None) -> dict | None:
    """Scale, zero point and representable float range of the QuantizeLinear fed by the graph input
    (directly or through layout-only ops such as the Transpose of a Keras NHWC export); ``bits``: the
    activations' range (:func:`activation_bits`; default: 7 when the weights are 7-bit)."""
    inits = {t.name: t for t in model.graph.initializer}
    same_values = {input_name}
    for n in model.graph.node:
        if n.op_type in models.LAYOUT_ONLY and n.input and n.input[0] in same_values:
            same_values.update(n.output)
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input and n.input[0] in same_values:
            if n.input[1] not in inits or len(n.input) < 3 or n.input[2] not in inits:
                return None
            scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
            zp = numpy_helper.to_array(inits[n.input[2]])
            if scale.size != 1 or zp.size != 1:
                return None  # per-axis input quantization: not a single range
            bits = bits or weight_bits(model) or 8
            qmin, qmax = _qrange(zp.dtype, bits)
            s, z = float(scale.reshape(())), int(zp.reshape(()))
            return {"node": n.name, "scale": s, "zero_point": z, "dtype": str(zp.dtype), "bits": bits, "qmin": qmin, "qmax": qmax,
                    "range": [(qmin - z) * s, (qmax - z) * s]}
    return None


def range_use(q: dict, x: np.ndarray) -> dict:
    """How the data's values sit in the quantizer's range: fraction used, fraction clipped, levels hit."""
    lo, hi = q["range"]
    dlo, dhi = float(x.min()), float(x.max())
    half = q["scale"] / 2
    clipped = float(np.mean((x < lo - half) | (x > hi + half)))
    used = max(0.0, min(dhi, hi) - max(dlo, lo)) / (hi - lo) if hi > lo else 0.0
    levels = int(np.unique(np.clip(np.round(x / q["scale"]) + q["zero_point"], q["qmin"], q["qmax"])).size)
    return {"data_range": [dlo, dhi], "used_fraction": used, "clipped_fraction": clipped, "levels_hit": levels,
            "levels": q["qmax"] - q["qmin"] + 1}


def to_expected_range(x: np.ndarray, data_range: list[float], q_range: list[float]) -> np.ndarray:
    """Affinely map the data's [min, max] onto the model's calibrated input range."""
    (dlo, dhi), (lo, hi) = data_range, q_range
    if dhi <= dlo:
        return x
    return (lo + (x.astype(np.float64) - dlo) * (hi - lo) / (dhi - dlo)).astype(np.float32)


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def range_check(q: dict | None, x: np.ndarray, preprocessing: dict, accuracy_as_configured: float,
                accuracy_at: Callable[[np.ndarray], float]) -> Check:
    if q is None:
        return Check("input range", "skip", "the input is not quantized by a per-tensor QuantizeLinear (the first layer runs in "
                     "fp32), so there is no calibrated input range to compare")
    use = range_use(q, x)
    lo, hi = q["range"]
    dlo, dhi = use["data_range"]
    details = {"quantizer": q, **use, "preprocessing": preprocessing, "accuracy_as_configured": accuracy_as_configured}
    prep = f"scale {preprocessing['scale']}, mean {preprocessing['mean']:g}, std {preprocessing['std']:g}"
    bits = f", 7-bit: integers {q['qmin']}..{q['qmax']}" if q.get("bits") == 7 else ""
    where = (f"the model's input QuantizeLinear (scale {_fmt(q['scale'])}, zero point {q['zero_point']}, {q['dtype']}{bits}) "
             f"covers [{_fmt(lo)}, {_fmt(hi)}]; the configured preprocessing ({prep}) feeds [{_fmt(dlo)}, {_fmt(dhi)}]")
    if use["used_fraction"] >= RANGE_MIN_USE and use["clipped_fraction"] <= RANGE_MAX_CLIPPED:
        return Check("input range", "pass", f"{where}: the data uses {use['used_fraction']:.0%} of the range "
                     f"({use['levels_hit']} of {use['levels']} levels)", details)
    x_exp = to_expected_range(x, use["data_range"], q["range"])
    acc_exp = accuracy_at(x_exp)
    details["accuracy_in_expected_range"] = acc_exp
    if use["clipped_fraction"] > RANGE_MAX_CLIPPED:
        problem = f"{use['clipped_fraction']:.1%} of input values fall outside it and are clipped"
    else:
        problem = (f"the data uses only {use['used_fraction']:.2%} of it ({use['levels_hit']} of {use['levels']} levels), "
                   "so the image is crushed to a few grey levels")
    return Check("input range", "fail",
                 f"INPUT RANGE MISMATCH: {where}; {problem}. The model was calibrated for inputs in [{_fmt(lo)}, {_fmt(hi)}], "
                 f"not for this preprocessing: int8 top-1 is {accuracy_as_configured:.2%} as configured and {acc_exp:.2%} "
                 f"when the same images are fed in [{_fmt(lo)}, {_fmt(hi)}]. Re-quantize with calibration data preprocessed "
                 "as documented.", details)


# ---------------------------------------------------------------------------- per-layer error
def activation_qparams(model: onnx.ModelProto) -> dict[str, dict]:
    """Quantized activation tensors of a QOperator model -> scale, zero point, producing op.

    Outputs of QuantizeLinear and QLinear* ops are listed; pass-through ops (MaxPool, Reshape on
    int8) inherit their input's parameters but are not listed as layers of their own, and neither is
    a QuantizeLinear that re-quantizes a layout op's output with its input's parameters (a QDQ
    model's DequantizeLinear -> Transpose/Reshape -> QuantizeLinear: the same values, reordered).
    """
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    params: dict[str, dict] = {}
    layers: dict[str, dict] = {}
    for n in model.graph.node:
        if n.op_type in QOP_OUTPUT_QPARAMS:
            si, zi = QOP_OUTPUT_QPARAMS[n.op_type]
            if len(n.input) <= zi or n.input[si] not in inits or n.input[zi] not in inits:
                continue
            if n.op_type == "QuantizeLinear" and n.input[0] in inits:
                continue  # a weight
            src = producers.get(n.input[0]) if n.op_type == "QuantizeLinear" else None
            if src is not None and src.op_type in models.LAYOUT_ONLY and src.input:
                dq = producers.get(src.input[0])
                while dq is not None and dq.op_type in models.LAYOUT_ONLY | {"MaxPool"} and dq.input:  # ... -> MaxPool -> Transpose -> Reshape
                    dq = producers.get(dq.input[0])
                if dq is not None and dq.op_type == "DequantizeLinear" and list(dq.input[1:3]) == list(n.input[1:3]):
                    continue
            s = numpy_helper.to_array(inits[n.input[si]]).astype(np.float64)
            z = numpy_helper.to_array(inits[n.input[zi]])
            if s.size != 1 or z.size != 1:
                continue
            p = {"scale": float(s.reshape(())), "zero_point": int(z.reshape(())), "elem_type": helper.np_dtype_to_tensor_dtype(z.dtype),
                 "op": n.op_type, "node": n.name or n.output[0], "source": n.input[0] if n.op_type == "QuantizeLinear" else None}
            params[n.output[0]] = p
            layers[n.output[0]] = p
        elif n.op_type in PASS_THROUGH and n.input and n.input[0] in params:
            params[n.output[0]] = params[n.input[0]]
    return layers


def qdq_activations(model: onnx.ModelProto) -> dict[str, dict]:
    """Dequantized activations of a QDQ model (DequantizeLinear outputs whose input is not a weight)."""
    inits = {t.name for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] not in inits:
            q = producers.get(n.input[0])
            out[n.output[0]] = {"elem_type": TensorProto.FLOAT, "op": "QuantizeLinear/DequantizeLinear",
                                "node": q.name if q is not None else n.name, "dequantized": True,
                                "source": q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None}
    return out


def _with_outputs(model: onnx.ModelProto, tensors: dict[str, int]) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name, et in tensors.items():
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, et, None))
    return models.serialize(m)


def _run_all(model_bytes: bytes, x: np.ndarray, input_name: str, batch: int, name: str) -> dict[str, np.ndarray]:
    sess = sessions.make_session(model_bytes, opt_level="basic", name=name)
    names = [o.name for o in sess.get_outputs()]
    chunks: dict[str, list] = {k: [] for k in names}
    per_image = set(names)  # tensors with one row per image: a scalar (an If's condition) or a shape is not one
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        for k, v in zip(names, sess.run(names, {input_name: xb})):
            chunks[k].append(v)
            if np.ndim(v) == 0 or np.shape(v)[0] != len(xb):
                per_image.discard(k)
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items() if k in per_image}


def _aligned(ref: np.ndarray, shape: tuple) -> np.ndarray | None:
    """``ref`` as a tensor of ``shape``: itself, or for an [N, C, H, W] activation whose rewritten conv no
    longer computes the last rows/columns (``rewrites.crop_unread_outputs``) its leading H x W window."""
    if ref.shape == shape:
        return ref
    if ref.ndim == 4 and len(shape) == 4 and ref.shape[:2] == shape[:2] and ref.shape[2] >= shape[2] and ref.shape[3] >= shape[3]:
        return ref[:, :, :shape[2], :shape[3]]
    return None


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
    sig = float(np.sum(ref.astype(np.float64) ** 2))
    if noise == 0:
        return float("inf")
    return 10 * np.log10(sig / noise) if sig > 0 else float("-inf")


def name_twin(tensor: str, p: dict) -> str | None:
    """The fp32 tensor a quantized activation stands for, by name: a QuantizeLinear's input, or the
    activation's name without the suffix the quantizer appended (``conv1_quantized`` -> ``conv1``)."""
    if p.get("source"):
        return p["source"]
    for suffix in QUANT_SUFFIXES:
        if tensor.endswith(suffix):
            return tensor[: -len(suffix)]
    return None


def layer_errors(fp32: onnx.ModelProto, int8: onnx.ModelProto, x: np.ndarray, input_name: str, batch_fp32: int,
                 batch_int8: int, name: str = "model") -> list[dict]:
    """Per quantized layer: SQNR and relative error of the dequantized int8 activation vs its fp32 twin.

    The twin is found by name first (a QuantizeLinear's input, or the activation's name without the
    quantizer's suffix) when the fp32 model has a tensor of that name and shape; otherwise, or when
    another fp32 tensor agrees more than ``NAME_TWIN_SLACK_DB`` better (a QLinearConv or QLinearAdd
    whose fused Relu makes its output the fp32 Relu's), by value: the fp32 tensor of the same shape
    it agrees with best. Each row says which (``matched_by``).
    """
    types = models.elem_types(fp32)
    fp_names = {o: TensorProto.FLOAT for n in fp32.graph.node for o in n.output if o and types.get(o) == TensorProto.FLOAT}
    fp_names.update({i.name: TensorProto.FLOAT for i in models.graph_inputs(fp32)})
    fp_vals = _run_all(_with_outputs(fp32, fp_names), x, input_name, batch_fp32, name)
    acts = activation_qparams(int8) or qdq_activations(int8)
    q_vals = _run_all(_with_outputs(int8, {k: v["elem_type"] for k, v in acts.items()}), x, input_name, batch_int8, name)
    rows = []
    for tensor, p in acts.items():
        if tensor not in q_vals:  # not one row per image (a scalar): nothing to compare layer by layer
            continue
        q = q_vals[tensor]
        deq = q.astype(np.float64) if p.get("dequantized") else (q.astype(np.float64) - p["zero_point"]) * p["scale"]
        aligned = {k: a for k, a in ((k, _aligned(v, deq.shape)) for k, v in fp_vals.items()) if a is not None}
        cands = [(sqnr_db(v, deq), k) for k, v in aligned.items()]
        if not cands:
            continue
        best, twin = max(cands)
        matched_by = "value"
        by_name = name_twin(tensor, p)
        if by_name in aligned:
            named = sqnr_db(aligned[by_name], deq)
            if named >= best - NAME_TWIN_SLACK_DB:
                best, twin, matched_by = named, by_name, "name"
            else:
                matched_by = f"value ({best - named:.1f} dB closer than `{by_name}`)"
        if fp_vals[twin].shape != deq.shape:
            h, w = deq.shape[2:]
            matched_by += f"; its leading {h}x{w} of {'x'.join(map(str, fp_vals[twin].shape[2:]))} (rows a pool never reads are not computed)"
        ref = aligned[twin].astype(np.float64)
        rel = float(np.linalg.norm(ref - deq) / max(np.linalg.norm(ref), 1e-30))
        ints = not p.get("dequantized")
        rows.append({"tensor": tensor, "op": p["op"], "node": p["node"], "fp32_twin": twin, "matched_by": matched_by,
                     "sqnr_db": best, "relative_error": rel, "levels_used": int(np.unique(q).size) if ints else None,
                     "q_dtype": str(q.dtype) if ints else None, "q_min": int(q.min()) if ints else None,
                     "q_max": int(q.max()) if ints else None, "source": p.get("source"), "shape": list(deq.shape[1:]), "flag": ""})
    if rows:
        finite = [r for r in rows if np.isfinite(r["sqnr_db"])] or rows
        worst = min(finite, key=lambda r: r["sqnr_db"])
        for r in rows:
            if r["sqnr_db"] < LOW_SQNR_DB:
                r["flag"] = "low"
        worst["flag"] = "worst" + (", low" if worst["sqnr_db"] < LOW_SQNR_DB else "")
    return rows


# -------------------------------------------------------------------------- ties and portability
def tied_check(outputs: np.ndarray, labels: np.ndarray) -> Check:
    """Images whose largest output is shared by two or more classes, and top-1 accuracy when such a
    tie counts as the first maximum (numpy's argmax, what most programs do) vs as any maximum."""
    is_max = outputs == outputs.max(axis=1, keepdims=True)
    ways = is_max.sum(axis=1)
    tied = evaluation.tied_top1(outputs)
    first = evaluation.accuracy(outputs, labels)
    anyv = float(np.mean(is_max[np.arange(len(labels)), labels]))
    details = {"images": int(len(labels)), "tied_images": tied, "most_classes_tied": int(ways.max()),
               "accuracy_first_max": first, "accuracy_any_max": anyv}
    if not tied:
        return Check("tied outputs", "info", f"no test image has a tied top-1 output ({len(labels):,} images)", details)
    return Check("tied outputs", "info",
                 f"{tied} of {len(labels):,} test images have an exactly tied top-1 output (quantized outputs; up to "
                 f"{int(ways.max())} classes share the maximum): top-1 is "
                 f"{first:.2%} counting the first maximum and {anyv:.2%} counting any maximum, so the tie rule alone moves "
                 f"accuracy by {100 * (anyv - first):.2f} pp", details)


def cpu_flags() -> str:
    flags = report_mod.cpu_info()["int8_flags"]
    return ", ".join(k for k, v in flags.items() if v) or "none of " + "/".join(flags)


def portability_check(model: onnx.ModelProto, session, input_name: str, x: np.ndarray, labels: np.ndarray,
                      budget: float) -> Check:
    """This CPU's onnxruntime outputs vs the exact integer reference (:mod:`quant.runtime.reference`) on ``x``.

    pass: bit-exact, or within ``PORTABLE_REL_DIFF`` of the largest output with the same top-1 on
    every image (rounding in fp32 layers);
    warn: otherwise — this CPU's int8 kernels do not compute the exact integer result, so another
    CPU kind gives other outputs — while top-1 accuracy on the sample differs by at most the budget;
    fail: top-1 accuracy under onnxruntime here and under exact arithmetic differ by more than the
    accuracy budget on the sample (the model's accuracy depends on the CPU kind).
    """
    from quant.runtime import reference

    flags = cpu_flags()
    try:
        a = reference.compare(model, session, input_name, x, labels)
    except reference.Unsupported as e:
        return Check("CPU portability", "skip", f"{e}; CPU int8 flags here: {flags}", {"cpu_int8_flags": flags})
    return portability_verdict(a, budget, flags, can_saturate(model))


SATURATION_FREE_WEIGHT = 64  # 255 * (64 + 64) = 32,640 <= 32,767: no pair of u8 x s8 products saturates a 16-bit sum


def can_saturate(model: onnx.ModelProto) -> bool:
    """Whether a CPU without VNNI can saturate this model's 16-bit pair sums: some int8 weight tensor
    beyond +-64 (or uint8 weights, whose products we do not bound)."""
    for t in models.all_tensors(model):
        if t.data_type in (TensorProto.INT8, TensorProto.UINT8) and math.prod(t.dims) > 1:
            v = numpy_helper.to_array(t)
            if t.data_type == TensorProto.UINT8 or int(np.abs(v.astype(np.int16)).max(initial=0)) > SATURATION_FREE_WEIGHT:
                return True
    return False


def portability_verdict(a, budget: float, flags: str, saturates: bool = True) -> Check:
    """The check's verdict from a :class:`quant.runtime.reference.Agreement` (rules in :func:`portability_check`)."""
    n = max(a.images, 1)
    acc_here, acc_exact = a.correct_onnxruntime / n, a.correct_reference / n
    rel = a.max_abs_diff / a.max_abs_output if a.max_abs_output > 0 else (0.0 if a.max_abs_diff == 0 else float("inf"))
    details = {**asdict(a), "relative_max_diff": rel, "accuracy_here": acc_here, "accuracy_exact": acc_exact,
               "cpu_int8_flags": flags, "accuracy_budget": budget,
               "reference": "onnx.reference on the graph onnxruntime executes (quant.runtime.reference)"}
    what = (f"onnxruntime on this CPU ({flags}) vs the exact integer reference on {a.images} test images: "
            f"{a.images_differing} differ, largest |difference| {a.max_abs_diff:.4g} ({rel:.2%} of the largest output), "
            f"{a.top1_disagreements} top-1 changes, top-1 {acc_here:.2%} here vs {acc_exact:.2%} exact")
    if a.exact:
        return Check("CPU portability", "pass", what + ": bit-exact, the same result on every CPU", details)
    if abs(acc_here - acc_exact) > budget + 1e-12:
        return Check("CPU portability", "fail", what + f": the accuracy differs by more than the budget {budget:.2%}, "
                     "so this model's accuracy depends on the CPU kind", details)
    if rel <= PORTABLE_REL_DIFF and not a.top1_disagreements:
        return Check("CPU portability", "pass", what + f": within {PORTABLE_REL_DIFF:.0%} of the largest output "
                     "(rounding in fp32 layers), the same top-1 on every CPU", details)
    if not saturates:  # 7-bit weights: what differs is onnxruntime's requantization rounding, off by a level here and there
        return Check("CPU portability", "warn", what + ": this CPU's int8 kernels do not compute the exact integer result, "
                     f"but the weights are within +-{SATURATION_FREE_WEIGHT}, so no 16-bit sum can saturate: the difference is "
                     "rounding (onnxruntime rescaling int32 sums to 8 bits, a level off in a few values, or fp32 layers), "
                     "not measured to differ between CPU kinds", details)
    return Check("CPU portability", "warn", what + ": this CPU's int8 kernels do not compute the exact integer result "
                 "(typical of 8-bit u8 x s8 products on CPUs without VNNI, whose 16-bit intermediate sums saturate), "
                 "so outputs differ between CPU kinds; 7-bit ranges (reduce_range) give one result everywhere", details)


# ----------------------------------------------------------------------------------- structure
def _io(model: onnx.ModelProto) -> dict:
    def desc(vi):
        return {"name": vi.name, "dtype": TensorProto.DataType.Name(vi.type.tensor_type.elem_type), "shape": [str(d) for d in models._dims(vi)]}
    return {"inputs": [desc(i) for i in models.graph_inputs(model)], "outputs": [desc(o) for o in model.graph.output]}


def structure_check(int8: models.LoadedModel, base: models.LoadedModel) -> Check:
    io_q, io_b = _io(int8.proto), _io(base.proto)
    problems = []
    for kind in ("inputs", "outputs"):
        a, b = io_q[kind], io_b[kind]
        if [t["name"] for t in a] != [t["name"] for t in b]:
            problems.append(f"{kind} names {[t['name'] for t in a]} != baseline {[t['name'] for t in b]}")
            continue
        for ta, tb in zip(a, b):
            if ta["dtype"] != tb["dtype"]:
                problems.append(f"{ta['name']} dtype {ta['dtype']} != baseline {tb['dtype']}")
            if ta["shape"][1:] != tb["shape"][1:] or len(ta["shape"]) != len(tb["shape"]):
                problems.append(f"{ta['name']} shape {ta['shape']} != baseline {tb['shape']}")
            elif ta["shape"][:1] != tb["shape"][:1] and ta["shape"][0].isdigit():
                problems.append(f"{ta['name']} has a fixed batch {ta['shape'][0]} where the baseline has {tb['shape'][0]}")
    executed = sessions.onnxruntime_graph(int8.raw, int8.path)  # what onnxruntime runs, after its QDQ fusions
    prec = models.op_precisions(executed)
    if not prec["int8"]:
        problems.append("no op runs in int8 in onnxruntime (not a quantized model)")
    details = {"checker": "passed", "opset": int8.opset, "baseline_opset": base.opset, "io": io_q, "baseline_io": io_b,
               "ops": models.precision_summary(executed), "int8_nodes": prec["int8"], "fp32_nodes": prec["fp32"],
               "ops_source": "the graph onnxruntime executes (SessionOptions.optimized_model_filepath, level EXTENDED)"}
    summ = (f"ONNX checker passed; opset {int8.opset} (baseline {base.opset}); as onnxruntime runs it: "
            f"int8 ops: {_ops(details['ops']['int8'])}; fp32 ops: {_ops(details['ops']['fp32'])}")
    if problems:
        return Check("structure", "fail", summ + "; " + "; ".join(problems), details)
    return Check("structure", "pass", summ + "; inputs/outputs match the baseline", details)


def _ops(d: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in d.items()) or "none"


def documented_check(int8, prov: dict) -> Check:
    """Does the int8 model say what preprocessing it was calibrated for, and does the run agree?
    ``prov``: :func:`quant.workflows.inputs.preprocessing_for` with the int8 model first."""
    from quant.data import provenance

    doc, disagreement = prov["documented"][0], prov["disagreements"][0]
    if doc is not None and not disagreement and prov["source"] == doc.source:  # the run adopted what the int8 model documents:
        disagreement = next((w for w in prov["disagreements"][1:] if w), None)  # the baseline documenting otherwise contradicts it
    details = {"source": prov["source"], "documented": None if doc is None else {"preprocessing": doc.preprocessing, "source": doc.source,
                                                                                  "calibration_sha256": doc.calibration_sha256}}
    if doc is None:
        return Check("documented preprocessing", "info", f"{int8.path} documents no preprocessing (no {provenance.KEY_PREPROCESSING} "
                     f"metadata, not a known zoo file); validated with {prov['source']}", details)
    if disagreement:
        return Check("documented preprocessing", "warn", disagreement, details)
    return Check("documented preprocessing", "pass", f"{doc.source} documents {Preprocessing.of(doc.preprocessing).text()}; "
                 f"the run uses the same (from {prov['source']})", details)


# ------------------------------------------------------------------------------------ workflow
@dataclass(frozen=True)
class ValidateOptions:
    """What :func:`validate_model` checks with.

    - ``test_data``: ``test_data_set_N`` folders (or folders of them) to check; default: ``<model>_test_data/``
      beside the model if present.
    - ``samples``: test images for the per-layer error; ``portability_samples``: test images for the CPU
      portability check against the exact integer reference.
    - ``rtol``, ``atol``: the tolerances of the test-data check.

    Each value gets its flag's range and message (UsageError, exit 2) when the options are made.
    """

    test_data: tuple[str, ...] | None = None
    samples: int = SAMPLES.default
    portability_samples: int = PORTABILITY_SAMPLES.default
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL

    def __post_init__(self):
        if self.test_data is not None:  # one folder may be given alone
            one = isinstance(self.test_data, (str, os.PathLike))
            object.__setattr__(self, "test_data", (self.test_data,) if one else tuple(self.test_data))
        check_flag(SAMPLES, self.samples, "--samples")
        check_flag(PORTABILITY_SAMPLES, self.portability_samples, "--portability_samples")
        check_flag(RTOL, self.rtol, "--rtol")
        check_flag(ATOL, self.atol, "--atol")


@dataclass(frozen=True)
class _Subject:
    """The int8 model and its baseline, loaded and checked, the config completed from them, and the test images."""

    cfg: object
    int8: models.LoadedModel
    base: models.LoadedModel
    sig_q: object
    sig_b: object
    prov: dict
    inferred: dict
    x: np.ndarray
    labels: np.ndarray


def validate_model(input_model: str, baseline_model: str, config=None, data_dir: str | None = None,
                   options: ValidateOptions | None = None, report: ReportOptions | None = None,
                   log: Callable[[str], None] | None = None) -> dict:
    """Check ``input_model`` (an int8 ONNX model, whoever made it) against ``baseline_model`` (the fp32
    model it was made from); returns the report dict (its Markdown under ``"markdown"``).

    Checks (each pass / warn / fail / info / skip): structure, the preprocessing the model documents,
    the input range its input quantizer was calibrated for against the preprocessing in use, accuracy
    against the baseline (the config's accuracy criterion), tied top-1 outputs, per-layer error on
    ``options.samples`` test images, CPU portability against the exact integer reference on
    ``options.portability_samples`` images, and zoo test data (``options.test_data``, else
    ``<model>_test_data/`` beside it, compared within ``options.rtol``/``options.atol``).

    ``config``: a YAML path, a Config, or None (the preprocessing the model documents, else the
    defaults). ``report``: :class:`quant.workflows.options.ReportOptions`, ``path`` ``NAME.json``
    (``NAME.md`` beside it); no files without it. Raises AccuracyError (exit 3, the report in
    ``details``) when any check fails.
    """
    opts, rep, log = options or ValidateOptions(), report or ReportOptions(), log or logging.getLogger("quant").info
    started = time.perf_counter()
    cfg = inputs.load_config(config)
    json_path, md_path = _check_outputs(input_model, baseline_model, cfg, data_dir, opts, rep)
    subject, sets = _load_subject(input_model, baseline_model, cfg, config is None, data_dir, opts, log)
    checks = _run_checks(subject, input_model, sets, opts)
    failed = [c for c in checks if c.status == "fail"]
    doc = _report_doc(subject, checks, rep.command, started, json_path, md_path)
    md = render(doc)
    if json_path:
        report_mod.write(json_path, doc, md_path, md)
    doc["markdown"] = md
    if failed:
        raise AccuracyError("validation FAILED: " + "; ".join(f"{c.name}: {c.summary}" for c in failed), doc)
    return doc


def _check_outputs(input_model: str, baseline_model: str, cfg, data_dir: str | None, opts: ValidateOptions, rep: ReportOptions):
    """The report paths (only when asked), checked against everything the run reads before any work."""
    json_path = md_path = None
    if report_mod.wanted(rep.write, rep.path, cfg.output.report):
        json_path, md_path = report_mod.default_report_paths(input_model, rep.path or cfg.output.report, kind="validate", folder=".")
    for p in filter(None, (json_path, md_path)):
        check_writable_target(p, "--report")
    check_distinct(reads=[("--input_model", input_model), ("--baseline_model", baseline_model), ("--config", inputs.config_file(cfg)),
                          *[("--test_data", d) for d in opts.test_data or []], *inputs.data_files(cfg, data_dir)],
                   writes=[("--report (JSON)", json_path), ("--report (Markdown)", md_path)])
    for p in (json_path, md_path):
        report_mod.check_replaceable(p)
    return json_path, md_path


def _load_subject(input_model: str, baseline_model: str, cfg, adopt_documented: bool, data_dir: str | None, opts: ValidateOptions,
                  log) -> tuple[_Subject, list | None]:
    """Both models (the baseline fp32, the int8 model's own documentation usable), the config completed from
    them, the test-data folders to check, and the test images."""
    int8 = models.load(input_model, "input model")
    base = models.load(baseline_model, "baseline model")
    models.require_fp32(base)
    own = provenance.documented(int8.proto, int8.path, int8.file_sha256)
    if own is not None and own.problem:  # validate checks a model against what it documents: unusable documentation is its defect
        raise ModelError(f"{int8.path}: {own.problem.removesuffix('; ignored')}")
    # without --config: the preprocessing the int8 model documents (its metadata, or the zoo README by sha256)
    cfg, _, inferred = inputs.settle_model(cfg, base, others=(int8,))  # the fp32 baseline speaks for the input and outputs
    cfg, prov = inputs.preprocessing_for(cfg, adopt_documented, [int8, base], log)
    sig_q = models.signature(int8.proto, int8.path, cfg.model.input_name, cfg.preprocessing.layout)
    sig_b = models.signature(base.proto, base.path, cfg.model.input_name, cfg.preprocessing.layout)
    sets = testdata.find_sets(list(opts.test_data)) if opts.test_data else None
    splits = inputs.load_splits(cfg, data_dir, splits=("test",), log=log)
    inputs.say_inferred(inferred, base.path, log)
    x, labels = inputs.test_inputs(cfg, splits["test"]), splits["test"].labels
    return _Subject(cfg, int8, base, sig_q, sig_b, prov, inferred, x, labels), sets


def _run_checks(s: _Subject, input_model: str, sets: list | None, opts: ValidateOptions) -> list[Check]:
    """Every check in the report's order: structure, documented preprocessing, input range, accuracy, tied
    outputs, per-layer error, CPU portability, test data."""
    cfg, int8, labels = s.cfg, s.int8, s.labels
    checks = [structure_check(int8, s.base), documented_check(int8, s.prov)]
    bq = evaluation.effective_batch(s.sig_q.fixed_batch, cfg.evaluation.batch_size)
    bb = evaluation.effective_batch(s.sig_b.fixed_batch, cfg.evaluation.batch_size)
    sess_q = sessions.make_session(int8.raw, name=int8.path)
    out_q = evaluation.predict(sess_q, s.x, s.sig_q.input_name, bq, int8.path)
    acc_q = evaluation.accuracy(out_q, labels)
    acc_b = evaluation.accuracy(evaluation.predict(sessions.make_session(s.base.raw, name=s.base.path), s.x, s.sig_b.input_name, bb,
                                                   s.base.path), labels)
    evaluation.require_above_chance(acc_b, s.base.path, cfg.preprocessing_dict(), cfg.dataset.verify_md5)

    def accuracy_at(xx: np.ndarray) -> float:
        return evaluation.accuracy(evaluation.predict(sess_q, xx, s.sig_q.input_name, bq, int8.path), labels)

    idx = testdata.pick_indices(len(s.x), opts.samples, cfg.quantization.calibration.seed)
    rows = layer_errors(s.base.proto, int8.proto, s.x[idx], s.sig_q.input_name, evaluation.effective_batch(s.sig_b.fixed_batch, 64),
                        evaluation.effective_batch(s.sig_q.fixed_batch, 64), int8.path)
    bits = activation_bits(int8.proto, rows, s.sig_q.input_name)
    checks.append(range_check(input_quantization(int8.proto, s.sig_q.input_name, bits), s.x, cfg.preprocessing_dict(), acc_q, accuracy_at))
    budget = criterion.budget(cfg.criterion, acc_b)
    checks += [_accuracy_check(cfg, acc_q, acc_b, budget, len(labels)), tied_check(out_q, labels), _layer_check(rows, len(idx))]
    pidx = testdata.pick_indices(len(s.x), opts.portability_samples, cfg.quantization.calibration.seed)
    checks.append(portability_check(int8.proto, sess_q, s.sig_q.input_name, s.x[pidx], labels[pidx], budget))
    checks.append(_test_data_check(s, input_model, sets, opts.rtol, opts.atol))
    return checks


def _accuracy_check(cfg, acc_q: float, acc_b: float, budget: float, images: int) -> Check:
    g = criterion.gate(acc_b, acc_q, budget)
    return Check("accuracy", "pass" if g["passed"] else "fail",
                 f"int8 top-1 {acc_q:.2%} vs fp32 {acc_b:.2%} on {images:,} test images: {g['verdict']} "
                 f"(criterion {cfg.criterion[0]} {cfg.criterion[1]:g})", {"int8": acc_q, "fp32": acc_b, **g})


def _layer_check(rows: list[dict], samples: int) -> Check:
    worst = next((r for r in rows if r["flag"].startswith("worst")), None)
    return Check("per-layer error", "info" if rows else "skip",
                 (f"{len(rows)} quantized layers over {samples} test images; worst: {worst['node']} ({worst['op']}) "
                  f"SQNR {worst['sqnr_db']:.1f} dB, relative error {worst['relative_error']:.3f}") if worst
                 else "no quantized activation could be matched to an fp32 tensor",
                 {"samples": int(samples), "layers": rows, "low_sqnr_db": LOW_SQNR_DB})


def _test_data_check(s: _Subject, input_model: str, sets: list | None, rtol: float, atol: float) -> Check:
    """The given test-data folders, else ``<model>_test_data/`` beside the model, reproduced within the tolerances."""
    if sets is None and testdata.default_dir(input_model).is_dir():
        sets = testdata.find_sets([testdata.default_dir(input_model)])
    if sets is None:
        return Check("test data", "skip", f"no test data given (--test_data) and no {testdata.default_dir(input_model).name}/ beside the model")
    res = testdata.check_sets(s.int8.raw, sets, s.sig_q.input_name, s.sig_q.output_name, rtol, atol, s.int8.path)
    bad = [r for r in res if not r.passed]
    return Check("test data", "fail" if bad else "pass",
                 f"{len(res) - len(bad)} of {len(res)} test_data_set folders reproduced within rtol {rtol:g}, atol {atol:g}"
                 + (f"; largest difference {max(r.max_abs_diff for r in bad):.4g} in {bad[0].folder}" if bad else ""),
                 {"rtol": rtol, "atol": atol, "sets": [asdict(r) for r in res]})


def _report_doc(s: _Subject, checks: list[Check], command: str | None, started: float, json_path, md_path) -> dict:
    cfg = s.cfg
    return {**report_mod.envelope("validate", {"path": cfg.source, "sha256": cfg.sha256}, cfg.preprocessing_dict(), s.prov, s.inferred,
                                  command),
            "passed": not any(c.status == "fail" for c in checks),
            "input_model": s.int8.describe(), "baseline_model": s.base.describe(),
            "criterion": {"kind": cfg.criterion[0], "tolerance": cfg.criterion[1]},
            "checks": [{**asdict(c), "verdict": c.verdict} for c in checks], "wall_seconds": time.perf_counter() - started,
            "reports": {"json": str(json_path), "markdown": str(md_path)} if json_path else None}


def render(doc: dict) -> str:
    doc = report_mod.escaped(doc)
    mark = {"pass": "PASS", "fail": "**FAIL**", "warn": "**warn**", "skip": "skip", "info": "info"}
    lines = [f"# Validation report: `{doc['input_model']['path']}`", "",
             f"**{'PASSED' if doc['passed'] else 'FAILED'}** against baseline `{doc['baseline_model']['path']}` "
             f"with preprocessing {doc['preprocessing']}.", "", *report_mod.warning_lines(doc),
             report_mod.md_table(["check", "result", "evidence"], [[c["name"], mark[c["status"]], c["summary"].replace("|", "/")] for c in doc["checks"]]),
             ""]
    layers = next((c for c in doc["checks"] if c["name"] == "per-layer error"), None)
    if layers and layers["details"].get("layers"):
        lines += [f"## Per-layer error ({layers['details']['samples']} test images)", "",
                  "Each quantized activation, dequantized, against its fp32 twin: the fp32 tensor it was quantized from "
                  "(matched by name), else the fp32 tensor of the same shape it agrees with best (matched by value).", "",
                  report_mod.md_table(["int8 tensor", "op", "fp32 twin", "matched by", "SQNR (dB)", "relative error", "int8 levels used", "flag"],
                                  [[f"`{r['tensor']}`", r["op"], f"`{r['fp32_twin']}`", r["matched_by"], f"{r['sqnr_db']:.1f}", f"{r['relative_error']:.4f}",
                                    "" if r["levels_used"] is None else r["levels_used"], r["flag"]] for r in layers["details"]["layers"]]), ""]
    td = next((c for c in doc["checks"] if c["name"] == "test data"), None)
    if td and td["details"].get("sets"):
        lines += ["## Test data", "", report_mod.md_table(["folder", "max abs diff", "same top-1", "result"],
                  [[f"`{s['folder']}`", f"{s['max_abs_diff']:.3g}", s["same_argmax"], "PASS" if s["passed"] else "**FAIL**"]
                   for s in td["details"]["sets"]]), ""]
    lines += [f"- input model: {doc['input_model']['bytes']:,} bytes, sha256 `{doc['input_model']['sha256'][:16]}…`, opset {doc['input_model']['opset']}",
              f"- baseline: {doc['baseline_model']['bytes']:,} bytes, sha256 `{doc['baseline_model']['sha256'][:16]}…`",
              f"- command: `{printable(doc['command'], None)}`", ""]
    return "\n".join(lines)
