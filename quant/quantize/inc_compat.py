"""What INC 3.7.1 needs from older onnx and setuptools, supplied only while it runs.

INC 3.7.1, the last release with the onnxrt adaptor,
imports ``pkg_resources.parse_version`` (setuptools >= 82 and Python >= 3.12 venvs have no
pkg_resources) and uses ``onnx.mapping`` (removed in onnx 1.19). While INC runs, and only where they
are missing, the two are supplied from ``packaging.version.parse`` and ``onnx.helper``; afterwards
``sys.modules`` and ``onnx`` are as they were.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from typing import Iterator

import numpy as np
import onnx

# The plain numeric/string tensor types of the removed onnx.mapping tables (what INC's quantizer looks up).
_MAPPED_TYPES = ("FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64", "STRING", "BOOL", "FLOAT16",
                 "DOUBLE", "UINT32", "UINT64", "COMPLEX64", "COMPLEX128")


def _onnx_mapping_module() -> types.ModuleType:
    """A stand-in for ``onnx.mapping`` (onnx < 1.19) built from ``onnx.helper``'s dtype functions."""
    m = types.ModuleType("onnx.mapping")
    t2n = {}
    for name in _MAPPED_TYPES:
        t = getattr(onnx.TensorProto, name)
        t2n[t] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t))
    m.TENSOR_TYPE_TO_NP_TYPE = t2n
    m.NP_TYPE_TO_TENSOR_TYPE = {dt: t for t, dt in reversed(list(t2n.items()))}  # float16 etc.: first name wins
    m.__doc__ = "mnist-quant's stand-in for onnx.mapping (removed in onnx 1.19), present only while INC runs"
    return m


def _pkg_resources_module() -> types.ModuleType:
    from packaging.version import parse

    m = types.ModuleType("pkg_resources")
    m.parse_version = parse
    m.__doc__ = "mnist-quant's stand-in for pkg_resources.parse_version, present only while INC runs"
    return m


@contextlib.contextmanager
def inc_compat() -> Iterator[list[str]]:
    """Supply ``pkg_resources`` and ``onnx.mapping`` where missing while INC runs; yields what was supplied."""
    supplied = []
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        sys.modules["pkg_resources"] = _pkg_resources_module()
        supplied.append("pkg_resources")
    if not hasattr(onnx, "mapping") and importlib.util.find_spec("onnx.mapping") is None:
        onnx.mapping = sys.modules["onnx.mapping"] = _onnx_mapping_module()
        supplied.append("onnx.mapping")
    try:
        yield supplied
    finally:
        if "pkg_resources" in supplied:
            sys.modules.pop("pkg_resources", None)
        if "onnx.mapping" in supplied:
            sys.modules.pop("onnx.mapping", None)
            with contextlib.suppress(AttributeError):
                del onnx.mapping
