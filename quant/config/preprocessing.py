"""The preprocessing a model expects: ``input = (pixel * scale - mean) / std`` on 0..255 pixels, in one of
three layouts. One home for the concept: parsed from a config section, a model's metadata or the zoo
recipe's transforms (as a dict), applied to images, compared, described, and written into a model's
metadata. Reports and metadata carry it as the dict of :meth:`Preprocessing.as_dict`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

# per-image input shape of each layout
LAYOUT_SHAPES = {"NCHW": (1, 28, 28), "NHWC": (28, 28, 1), "flat": (784,)}


def scale_value(v: Any) -> float | None:
    """A scale (number, or text like '1/255' or '0.5') as a float, or None when it is not one. Bounded:
    a fraction's text is at most 100 characters and other text goes through float(), so '1e-999999999'
    costs nothing (Fraction would expand its exponent)."""
    try:
        if isinstance(v, bool):
            return None
        if isinstance(v, str) and "/" in v:
            return float(Fraction(v)) if len(v) <= 100 else None
        x = float(v)
        return x if math.isfinite(x) else None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None


def apply(images: np.ndarray, scale: float, mean: float, std: float, layout: str) -> np.ndarray:
    """uint8 [N,28,28] -> float32 model input: ``(pixel * scale - mean) / std`` in ``layout``
    (NCHW -> [N,1,28,28]; NHWC -> [N,28,28,1]; flat -> [N,784])."""
    x = images.astype(np.float32) * np.float32(scale)
    if mean != 0.0:
        x -= np.float32(mean)
    if std != 1.0:
        x /= np.float32(std)
    return np.ascontiguousarray(x.reshape((len(images), *LAYOUT_SHAPES[layout])), dtype=np.float32)


def same(a: dict, b: dict) -> bool:
    """Two preprocessing dicts feed the same numbers; False when either holds a value that is no number."""
    try:
        return Preprocessing.of(a).same_as(Preprocessing.of(b))
    except (TypeError, ValueError, OverflowError, KeyError):
        return False


@dataclass(frozen=True)
class Preprocessing:
    scale: str = "1/255"  # as written: "1/255", "1", "0.5"
    mean: float = 0.0
    std: float = 1.0
    layout: str | None = None  # None: not known yet (read from the model's input shape)

    @classmethod
    def of(cls, d: dict) -> "Preprocessing":
        """From a dict with ``scale``, ``mean``, ``std`` and ``layout`` (a config section, metadata, a report)."""
        return cls(str(d["scale"]), float(d["mean"]), float(d["std"]), None if d.get("layout") is None else str(d["layout"]))

    def as_dict(self) -> dict:
        return {"scale": self.scale, "mean": self.mean, "std": self.std, "layout": self.layout}

    @property
    def factor(self) -> float:
        """The scale as a number."""
        return scale_value(self.scale)

    def apply(self, images: np.ndarray) -> np.ndarray:
        return apply(images, self.factor, self.mean, self.std, self.layout)

    def same_as(self, other: "Preprocessing") -> bool:
        """Both feed the same numbers (up to float rounding: 0.00392156862745098 is 1/255)."""
        sa, sb = scale_value(self.scale), scale_value(other.scale)
        return (sa is not None and sb is not None and math.isclose(sa, sb, rel_tol=1e-9)
                and math.isclose(self.mean, other.mean, rel_tol=1e-9, abs_tol=1e-12)
                and math.isclose(self.std, other.std, rel_tol=1e-9) and self.layout == other.layout)

    def text(self) -> str:
        """Short form for messages: ``scale 1/255, mean 0, std 1, NCHW``."""
        return f"scale {self.scale}, mean {self.mean:g}, std {self.std:g}, {self.layout}"

    def describe(self) -> str:
        """Long form for the zoo recipe's notes: what happens to a pixel."""
        pixels = ("raw 0..255 pixels" if Fraction(self.scale) == 1 and self.mean == 0 and self.std == 1
                  else f"pixels * {self.scale}, minus {self.mean:g}, divided by {self.std:g}")
        return f"{pixels}, {self.layout} (scale {self.scale}, mean {self.mean:g}, std {self.std:g})"

    def to_metadata(self) -> str:
        """The canonical JSON written into a model's ``mnist_quant.preprocessing`` metadata (the same values,
        the same bytes)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
