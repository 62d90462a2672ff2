"""What preprocessing a model documents, and whether a config agrees with it.

The zoo's mnist-12-int8 went wrong because nothing tied the model to its preprocessing: it was
calibrated on raw 0..255 pixels while the zoo README documents [0, 1]. Two sources tie them here:

- the int8 models ``tune`` writes carry their preprocessing and calibration-set sha256 in
  ``metadata_props`` (:func:`stamp`), and ``producer_name``/``producer_version`` name this tool;
- the zoo's own MNIST files are known by sha256 (:data:`ZOO`), with the preprocessing the zoo README
  documents for them.

:func:`documented` returns a model's documented preprocessing (metadata first); :func:`disagreement`
words the warning printed when a config says otherwise. Nothing here overrides a user's config.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import onnx

from quant import __version__, data
from quant.config import checked_preprocessing
from quant.config.preprocessing import Preprocessing, same
from quant.errors import ConfigError, printable

PRODUCER = "mnist-quant"
KEY_PREPROCESSING = "mnist_quant.preprocessing"
KEY_CALIBRATION = "mnist_quant.calibration_sha256"
MAX_METADATA_CHARS = 4096  # a stamped value is ~60 characters
MAX_JSON_DEPTH = 8  # a stamped value is one flat object

# The zoo README (onnx/models validated/vision/classification/mnist/README.md), for every MNIST model
# it lists, int8 included: grayscale 28x28, white digit on black, "color value is scaled to [0.0, 1.0]",
# input [1, 1, 28, 28].
ZOO_PREPROCESSING = {"scale": "1/255", "mean": 0.0, "std": 1.0, "layout": "NCHW"}
ZOO_SOURCE = "the ONNX Model Zoo README (pixels scaled to [0, 1], [1, 1, 28, 28])"
# sha256 of the zoo's files (byte-identical to the zoo's Git LFS objects; ../shared/models/SOURCES.md)
ZOO = {
    data.ZOO_MODELS["mnist-12.onnx"][1]: "mnist-12.onnx",  # the file `fetch` downloads
    "5eac0752eecf4991a5e4157cf31a186f2c61090494019e87979ac17df1dae253": "mnist-12-int8.onnx",
    "2f06e72de813a8635c9bc0397ac447a601bdbfa7df4bebc278723b958831c9bf": "mnist-8.onnx",
    "0d715376572e89832685c56a65ef1391f5f0b7dd31d61050c91ff3ecab16c032": "mnist-7.onnx",
}


@dataclass(frozen=True)
class Documented:
    preprocessing: dict  # {scale (str), mean, std, layout}
    source: str  # where it is documented, for messages and reports
    calibration_sha256: str | None = None
    problem: str | None = None  # metadata present but unusable (then preprocessing is None)


def stamp(model: onnx.ModelProto, preprocessing: dict, calibration_sha256: str) -> onnx.ModelProto:
    """Record this tool, the preprocessing and the calibration set in ``model`` (in place; returned).
    Deterministic: the same values give the same bytes."""
    model.producer_name, model.producer_version = PRODUCER, __version__
    keep = [p for p in model.metadata_props if p.key not in (KEY_PREPROCESSING, KEY_CALIBRATION)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    props = {**{p.key: p.value for p in keep}, KEY_CALIBRATION: calibration_sha256,
             KEY_PREPROCESSING: Preprocessing.of(preprocessing).to_metadata()}
    onnx.helper.set_model_props(model, dict(sorted(props.items())))
    return model


def _from_metadata(model: onnx.ModelProto, path: str) -> Documented | None:
    props = {p.key: p.value for p in model.metadata_props}
    if KEY_PREPROCESSING not in props:
        return None
    producer = " ".join(printable(v, 60) for v in (model.producer_name or "unknown producer", model.producer_version) if v)
    who = f"{path}'s metadata ({producer})"
    raw = props[KEY_PREPROCESSING]
    try:
        value = parse_metadata_json(raw)
        if not isinstance(value, dict) or set(value) != {"scale", "mean", "std", "layout"}:
            raise ValueError("expected {scale, mean, std, layout}")
        checked = checked_preprocessing(value, f"metadata {KEY_PREPROCESSING}")
    except (ValueError, ConfigError, RecursionError, TypeError) as e:
        return Documented(None, who, problem=f"{KEY_PREPROCESSING} is unusable ({printable(e, 200)}); ignored")
    cal = props.get(KEY_CALIBRATION)
    return Documented(checked.as_dict(), who, cal if cal and re.fullmatch(r"[0-9a-f]{64}", cal) else None)


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"{printable(text, 40)} is not a finite number")
    return v


def parse_metadata_json(raw: str):
    """A JSON value from a model's metadata, parsed with limits: at most MAX_METADATA_CHARS characters and
    MAX_JSON_DEPTH levels of nesting (counted before parsing), no NaN/Infinity and no number that overflows
    (1e999). Anything else raises ValueError."""
    if len(raw) > MAX_METADATA_CHARS:
        raise ValueError(f"{len(raw):,} characters, over the {MAX_METADATA_CHARS:,} limit")
    depth = deepest = 0
    in_string = escaped = False
    for c in raw:  # nesting depth outside strings
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == "\\", c != '"')
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        raise ValueError(f"nested {deepest} levels deep, over the {MAX_JSON_DEPTH} limit")
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite, parse_int=lambda t: int(_finite(t)) if len(t) > 300 else int(t))


def documented(model: onnx.ModelProto, path: str, file_sha256: str) -> Documented | None:
    """The preprocessing ``model`` documents: its own metadata, else the zoo's by sha256, else None."""
    meta = _from_metadata(model, path)
    if meta is not None:
        return meta
    if file_sha256 in ZOO:
        return Documented(dict(ZOO_PREPROCESSING), f"{ZOO_SOURCE} for the zoo's {ZOO[file_sha256]} (known by sha256)")
    return None


def disagreement(doc: Documented, preprocessing: dict, used_source: str) -> str | None:
    """The warning for preprocessing that differs from the documented one, or None."""
    if doc.preprocessing is None or same(doc.preprocessing, preprocessing):
        return None
    return (f"the preprocessing in use ({Preprocessing.of(preprocessing).text()}, from {used_source}) differs from the one documented in "
            f"{doc.source} ({Preprocessing.of(doc.preprocessing).text()}); it is used as given. A model calibrated for one and fed the other "
            "is how the zoo's mnist-12-int8 scores 54.5 % instead of 98.9 %")
