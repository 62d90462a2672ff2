"""The ONNX Model Zoo's sample test data: ``test_data_set_N/input_0.pb`` and ``output_0.pb``.

Each file is one serialized ``onnx.TensorProto``. ``write_sets`` writes N such folders for a model
(inputs drawn from the test set, preprocessed per config; outputs computed by onnxruntime);
``check_sets`` runs a model on every folder and compares with the stored outputs.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from quant.config import DEFAULT_ATOL, DEFAULT_RTOL
from quant.errors import AccuracyError, DataError, QuantError, UsageError, first_line
from quant.files import check_name_length, check_writable_target, read_regular_file, write_new_file
from quant.runtime.sessions import make_session

MAX_TENSOR_BYTES = 64 << 20
SET_NAME = re.compile(r"test_data_set_\d+")
TENSOR_NAME = re.compile(r"(input|output)_\d+\.pb")


def default_dir(model_path: str | os.PathLike) -> Path:
    """``<model>_test_data`` beside the model: e.g. mnist-12-int8.onnx -> mnist-12-int8_test_data/."""
    m = Path(model_path)
    stem = m.name[:-5] if m.name.endswith(".onnx") else m.name
    return m.with_name(f"{stem}_test_data")


def pick_indices(n_total: int, count: int, seed: int) -> np.ndarray:
    count = min(count, n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=count, replace=False))


def _tensor_bytes(arr: np.ndarray, name: str) -> bytes:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name).SerializeToString(deterministic=True)


def check_replaceable(dest: str | os.PathLike, what: str) -> None:
    """``dest`` may be replaced whole only if it is absent or holds nothing but ``test_data_set_N``
    folders (an earlier run's output): anything else there would be deleted with it (exit 2)."""
    dest = Path(dest)
    check_name_length(dest, what)
    if not dest.parent.is_dir():  # created on commit (files.Outputs), like every output's missing folders
        check_writable_target(dest, what)
        return
    if not os.access(dest.parent, os.R_OK | os.W_OK | os.X_OK):
        raise UsageError(f"{what} {dest}: parent folder {dest.parent} is not writable")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise UsageError(f"{what} {dest}: exists and is not a folder")
    other = foreign_entries(dest)
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise UsageError(f"{what} {dest}: holds other files ({shown}); the test-data folder is replaced whole, "
                         "so choose a new or empty folder")
    stuck = [d for d in [dest, *dest.iterdir()] if not os.access(d, os.W_OK | os.X_OK)]
    if stuck:  # the old folder could not be removed after the new one is in place
        raise UsageError(f"{what} {dest}: {stuck[0]} is not writable, so the old test data could not be removed")


def foreign_entries(dest: Path) -> list[str]:
    """What in the test-data folder ``dest`` is not an earlier run's output (``test_data_set_N`` folders of
    ``input_N.pb``/``output_N.pb`` files): it may not be deleted with the folder. Asked before any work and
    again when the commit has moved the folder aside."""
    dest = Path(dest)
    other = sorted(p.name for p in dest.iterdir() if not (p.is_dir() and not p.is_symlink() and SET_NAME.fullmatch(p.name)))
    other += sorted(f"{p.parent.name}/{p.name}" for d in dest.iterdir() if d.is_dir() and not d.is_symlink() and SET_NAME.fullmatch(d.name)
                    for p in d.iterdir() if not (TENSOR_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink()))
    return other


def make_sets(model: bytes, input_name: str, output_name: str, x: np.ndarray, name: str = "model") -> list[tuple[bytes, bytes]]:
    """``(input_0.pb, output_0.pb)`` bytes per image in ``x`` (each a batch of 1; outputs from onnxruntime)."""
    sess = make_session(model, name=name)
    out = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        y = sess.run([output_name], {input_name: xi})[0]
        out.append((_tensor_bytes(xi, input_name), _tensor_bytes(y, output_name)))
    return out


def write_sets(model: bytes, input_name: str, output_name: str, x: np.ndarray, folder: str | os.PathLike,
               name: str = "model") -> int:
    """Write one ``test_data_set_i`` per image in ``x`` (each a batch of 1) into the empty ``folder``
    (a run's staged output: ``fsio.Outputs.folder`` swaps it in whole on commit). Returns the count."""
    folder = Path(folder)
    sets = make_sets(model, input_name, output_name, x, name)
    for i, (xb, yb) in enumerate(sets):
        d = folder / f"test_data_set_{i}"
        d.mkdir()
        write_new_file(d / "input_0.pb", xb)
        write_new_file(d / "output_0.pb", yb)
    return len(sets)


def find_sets(paths: list[str | os.PathLike]) -> list[Path]:
    """Each path is a ``test_data_set_N`` folder or a folder holding such folders."""
    found: list[Path] = []
    for p in map(Path, paths):
        try:
            kind = "folder" if p.is_dir() else "missing" if not p.exists() else "other"
        except (OSError, ValueError) as e:  # a name too long, a NUL byte
            raise DataError(f"{p}: test data folder cannot be opened ({getattr(e, 'strerror', None) or e})") from None
        if kind == "missing":
            raise DataError(f"{p}: test data folder not found")
        if kind == "other":
            raise DataError(f"{p}: is not a folder (expected test_data_set_N or a folder of them)")
        if (p / "input_0.pb").exists():
            found.append(p)
            continue
        subs = sorted((d for d in p.glob("test_data_set_*") if d.is_dir()), key=lambda d: d.name)
        if not subs:
            raise DataError(f"{p}: holds no test_data_set_* folders and no input_0.pb")
        found += subs
    return found


def read_tensor(path: Path) -> tuple[str, np.ndarray]:
    """One ``input_0.pb``/``output_0.pb``: read bounded (files.read_regular_file), self-contained (external data
    would be resolved against the working folder)."""
    raw = read_regular_file(path, "test data file", MAX_TENSOR_BYTES, DataError)
    t = onnx.TensorProto()
    try:
        t.ParseFromString(raw)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise DataError(f"{path}: refers to external data; a test data tensor must hold its values")
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind not in "biuf":  # STRING (object) or complex: no model output to compare with
            raise DataError(f"{path}: holds a {onnx.TensorProto.DataType.Name(t.data_type)} tensor; test data must be numeric")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: not a serialized ONNX TensorProto ({type(e).__name__})") from None
    return t.name, arr


@dataclass
class SetResult:
    folder: str
    max_abs_diff: float
    passed: bool
    same_argmax: bool
    detail: str = ""


def check_sets(model: bytes, sets: list[Path], input_name: str, output_name: str, rtol: float = DEFAULT_RTOL,
               atol: float = DEFAULT_ATOL, name: str = "model") -> list[SetResult]:
    """Run the model on every set; a set passes when ``|got - ref| <= atol + rtol * |ref|`` everywhere."""
    sess = make_session(model, name=name)
    results = []
    for d in sets:
        _, x = read_tensor(d / "input_0.pb")
        _, ref = read_tensor(d / "output_0.pb")
        try:
            got = sess.run([output_name], {input_name: x})[0]
        except QuantError:  # stop.RunTimeout: said as it is
            raise
        except Exception as e:
            first = first_line(e)
            raise DataError(f"{d / 'input_0.pb'}: the model cannot run on it: {first}") from None
        if got.shape != ref.shape:
            results.append(SetResult(str(d), float("inf"), False, False, f"output shape {list(got.shape)} != reference {list(ref.shape)}"))
            continue
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        ok = bool(np.all(diff <= atol + rtol * np.abs(ref.astype(np.float64))))
        same = bool(np.array_equal(np.argmax(got.reshape(len(got), -1), 1), np.argmax(ref.reshape(len(ref), -1), 1)))
        results.append(SetResult(str(d), float(diff.max()) if diff.size else 0.0, ok, same))
    return results


def write_test_data(input_model: str, output_dir: str, config=None, data_dir: str | None = None, count: int | None = None,
                    log: Callable[[str], None] | None = None) -> Path:
    """Write ``count`` zoo-style ``test_data_set_N`` folders for ``input_model`` into ``output_dir``
    (replaced whole, atomically; it may hold only earlier test data): test images preprocessed per
    ``config`` (a YAML path, a :class:`quant.config.Config` or None for the defaults), picked with the
    calibration seed, and the model's outputs for them. ``count`` None: the config's
    ``output.test_data_sets``. Returns ``output_dir``. Raises UsageError/ConfigError (exit 2),
    InputError/ModelError (exit 4)."""
    log = log or logging.getLogger("quant").info
    from quant import config as config_mod
    from quant.files import Outputs, check_distinct
    from quant.graph import models
    from quant.workflows import inputs

    if count is not None:
        config_mod.check_value("output.test_data_sets", count, "--count")
    cfg = inputs.load_config(config)
    count = cfg.output.test_data_sets if count is None else count
    if count < 1:
        raise UsageError(f"--count {count}: must be >= 1")
    dest = Path(output_dir)
    check_distinct(reads=[("--input_model", input_model), ("--config", inputs.config_file(cfg)), *inputs.data_files(cfg, data_dir)],
                   writes=[], replaced=[("--output_dir", dest)])
    check_replaceable(dest, "--output_dir")
    m = models.load(input_model, "input model")
    cfg, sig, inferred = inputs.settle_model(cfg, m)
    test = inputs.load_splits(cfg, data_dir, splits=("test",), log=log)["test"]
    inputs.say_inferred(inferred, m.path, log)
    x = inputs.test_inputs(cfg, test)[pick_indices(len(test.labels), count, cfg.quantization.calibration.seed)]
    with Outputs() as out:
        n = write_sets(m.raw, sig.input_name, sig.output_name, x, out.folder(dest, foreign_entries), m.path)
        out.commit()
    log(f"[test-data] wrote {n} test_data_set folders in {dest}")
    return dest


def check_test_data(input_model: str, test_data: list[str], config=None, rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> dict:
    """Run ``input_model`` on zoo-style test data (``test_data_set_N`` folders, or folders of them) and
    compare with the stored outputs: a set passes when ``|got - ref| <= atol + rtol * |ref|`` everywhere.
    Returns the report dict (``passed``, ``sets``; its Markdown under ``"markdown"``); raises AccuracyError
    (exit 3, the report in ``details``) when any set differs, DataError/ModelError (exit 4) on bad input."""
    from dataclasses import asdict

    from quant import config as config_mod
    from quant.graph import models
    from quant.workflows import inputs

    config_mod.check_flag(config_mod.RTOL, rtol, "--rtol")
    config_mod.check_flag(config_mod.ATOL, atol, "--atol")
    cfg = inputs.load_config(config)
    m = models.load(input_model, "input model")
    sig = models.signature(m.proto, m.path, cfg.model.input_name)
    res = check_sets(m.raw, find_sets(test_data), sig.input_name, sig.output_name, rtol, atol, m.path)
    bad = [r for r in res if not r.passed]
    verdict = (f"{len(bad)} of {len(res)} test data sets differ beyond rtol {rtol:g}, atol {atol:g} (largest difference "
               f"{max(r.max_abs_diff for r in bad):.4g} in {bad[0].folder})" if bad
               else f"{len(res)} test data set(s) reproduced within rtol {rtol:g}, atol {atol:g}")
    doc = {"kind": "check-test-data", "input_model": m.path, "passed": not bad, "rtol": rtol, "atol": atol,
           "sets": [asdict(r) for r in res], "verdict": verdict}
    doc["markdown"] = "\n".join(
        [f"{'PASS' if r.passed else 'FAIL'}  {r.folder}  max |diff| {r.max_abs_diff:.4g}  same top-1 {r.same_argmax}"
         + (f"  ({r.detail})" if r.detail else "") for r in res]) + "\n"
    if bad:
        raise AccuracyError(verdict, doc)
    return doc
