"""The calibration set: its committed definition (the built-in manifest
``quant/resources/calib_manifest.json``, shipped in the package, or one named in the config), the array it
materializes to, and the INC-compatible dataloader that feeds it.

Calibration images come from the MNIST *train* split only; the 2022 zoo recipe calibrated on test
images, which leaks into the accuracy it reported.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quant.config.preprocessing import Preprocessing
from quant.data import SPLIT_SIZES, Split
from quant.errors import ConfigError, DataError, first_line
from quant.files import Outputs, atomic_write_bytes, atomic_write_text, read_regular_file, sha256_bytes

BUILTIN_MANIFEST = Path(__file__).resolve().parents[1] / "resources" / "calib_manifest.json"
MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # a set of all 60,000 train indices is ~420 kB of JSON: room for dozens of sets


def select_indices(n_total: int, count: int, seed: int) -> list[int]:
    """``count`` distinct indices of ``range(n_total)`` picked by ``seed``, sorted."""
    if not 1 <= count <= n_total:
        raise ConfigError(f"quantization.calibration.sampling_size: must be in 1..{n_total}, got {count}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n_total, size=count, replace=False))


def array_sha256(x: np.ndarray) -> str:
    """sha256 of the little-endian float32 bytes (C order) of the calibration array."""
    return sha256_bytes(np.ascontiguousarray(x, dtype="<f4").tobytes())


@dataclass
class CalibrationSet:
    x: np.ndarray  # float32, preprocessed, in the model's layout
    labels: np.ndarray
    definition: dict  # split, count, seed, indices, preprocessing, sha256, source

    @property
    def sha256(self) -> str:
        return self.definition["sha256"]

    def summary(self) -> dict:
        d = dict(self.definition)
        d.pop("indices", None)
        return d


def definition_key(split: str, count: int, seed: int, preprocessing: dict) -> dict:
    return {"split": split, "count": count, "seed": seed, "preprocessing": preprocessing}


def manifest_path(value: str | None) -> Path:
    """The manifest a config names (``quantization.calibration.manifest``, made absolute by config.load),
    else the built-in one."""
    return BUILTIN_MANIFEST if value is None else Path(value)


@dataclass(frozen=True)
class CalibSpec:
    """Which calibration set to build: the workflows make it from the config (``inputs.calib_spec``)."""

    split: str
    count: int
    seed: int
    preprocessing: dict  # {scale, mean, std, layout}; a null layout gives NCHW
    manifest: Path


def read_manifest(path: Path) -> list[dict]:
    """The manifest's list of set definitions (read bounded: files.read_regular_file)."""
    raw = read_regular_file(path, "calibration manifest (quantization.calibration.manifest)", MAX_MANIFEST_BYTES, ConfigError)
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: thousands of nested brackets
        raise ConfigError(f"quantization.calibration.manifest: {path} is not a readable JSON manifest ({first_line(e)})") from None
    sets = doc.get("sets") if isinstance(doc, dict) else None
    if not isinstance(sets, list) or not all(isinstance(s, dict) for s in sets):
        raise ConfigError(f"quantization.calibration.manifest: {path} has no 'sets' list of set definitions")
    for i, entry in enumerate(sets):
        problem = _entry_problem(entry)
        if problem:
            raise ConfigError(f"quantization.calibration.manifest: {path}: set {entry.get('name', i)!r}: {problem}")
    return sets


def _entry_problem(e: dict) -> str | None:
    """What is wrong with one set definition (None if nothing): every field ``build`` relies on, typed and in range."""
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    for key, ok, want in (("split", lambda v: v in SPLIT_SIZES, f"one of {', '.join(SPLIT_SIZES)}"),
                          ("count", lambda v: is_int(v) and v >= 1, "an integer >= 1"), ("seed", is_int, "an integer"),
                          ("preprocessing", lambda v: isinstance(v, dict), "a mapping"),
                          ("sha256", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v), "64 hex digits"),
                          ("indices", lambda v: isinstance(v, list) and all(map(is_int, v)), "a list of integers")):
        if key not in e:
            return f"missing {key!r}"
        if not ok(e[key]):
            return f"{key} must be {want}, got {json.dumps(e[key])[:40]}"
    n = SPLIT_SIZES[e["split"]]
    idx = e["indices"]
    if len(idx) != e["count"]:
        return f"has {len(idx)} indices but count {e['count']}"
    if idx and not 0 <= min(idx) <= max(idx) < n:
        return f"index {min(idx) if min(idx) < 0 else max(idx)} is outside the {e['split']} split (0..{n - 1})"
    if len(set(idx)) != len(idx):
        return "repeats an index"
    return None


def build(spec: CalibSpec, train: Split) -> CalibrationSet:
    """Materialize the calibration set ``spec`` asks for, checked against the manifest.

    If the manifest defines a set with the same split, count, seed and preprocessing, its indices
    are used and the resulting array must have the manifest's sha256 (else DataError: the data or
    the preprocessing code changed). Otherwise the set is defined ad hoc from count and seed.
    """
    p = dict(spec.preprocessing)
    p["layout"] = p["layout"] or "NCHW"  # no model to read it from: the zoo's [N,1,28,28] (the same bytes in every layout)
    key = definition_key(spec.split, spec.count, spec.seed, p)
    if spec.count > len(train.labels):
        raise ConfigError(f"quantization.calibration.sampling_size: {spec.count} is larger than the {spec.split} split ({len(train.labels)} images)")
    mpath = spec.manifest
    entry = next((s for s in read_manifest(mpath) if {k: s.get(k) for k in key} == key), None)
    indices = entry["indices"] if entry else select_indices(len(train.labels), spec.count, spec.seed)
    if entry and indices and max(indices) >= len(train.labels):  # the manifest is checked against 60,000; the file may hold fewer
        raise ConfigError(f"{mpath}: calibration set {entry.get('name', '?')} uses {spec.split} image {max(indices)}, but the "
                          f"{spec.split} split loaded has {len(train.labels)} images")
    x = Preprocessing.of(p).apply(train.images[indices])
    sha = array_sha256(x)
    if entry and entry["sha256"] != sha:
        raise DataError(
            f"calibration set {entry.get('name', '?')} from {mpath}: sha256 {sha} differs from the manifest's {entry['sha256']}; "
            "the MNIST files or the preprocessing code changed"
        )
    definition = dict(key, indices=indices, sha256=sha, shape=list(x.shape),
                      name=entry.get("name") if entry else None,
                      source=f"manifest {mpath.name}" if entry else "ad hoc (not in the manifest)")
    return CalibrationSet(x, train.labels[indices], definition)


def manifest_entry(cs: CalibrationSet, name: str) -> dict:
    d = cs.definition
    return {"name": name, "split": d["split"], "count": d["count"], "seed": d["seed"],
            "preprocessing": d["preprocessing"], "shape": d["shape"], "sha256": d["sha256"], "indices": d["indices"]}


def write_manifest(path: Path, entries: list[dict], staged: Outputs | None = None) -> None:
    """Write the manifest atomically, or stage it with the run's other outputs (``staged``)."""
    doc = {"version": MANIFEST_VERSION,
           "about": "Committed definitions of calibration sets (MNIST train-split indices + preprocessing + sha256 "
                    "of the resulting float32 array). Pixels are never committed: `python -m quant calib --output_dir=DIR` "
                    "materializes a set as DIR/calib-<sha256 prefix>.npy and checks the sha256.",
           "sets": entries}
    text = json.dumps(doc, indent=1)
    text = re.sub(r"\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text)
    if staged is None:
        atomic_write_text(path, text + "\n")
    else:
        staged.text(path, text + "\n")


def array_path(cs: CalibrationSet, folder: Path) -> Path:
    return folder / f"calib-{cs.sha256[:12]}.npy"


def save_array(cs: CalibrationSet, folder: Path, staged: Outputs | None = None) -> Path:
    """Write the materialized array to ``folder/calib-<sha12>.npy`` atomically, or stage it (``staged``)."""
    buf = io.BytesIO()
    np.save(buf, cs.x, allow_pickle=False)
    out = array_path(cs, folder)
    if staged is None:
        atomic_write_bytes(out, buf.getvalue())
    else:
        staged.bytes(out, buf.getvalue())
    return out


class CalibDataLoader:
    """INC-compatible calibration dataloader: a ``batch_size`` attribute; iterates (input, label)."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, batch_size: int = 1):
        self.x, self.labels, self.batch_size = x, labels, batch_size

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i:i + self.batch_size], self.labels[i:i + self.batch_size]

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size
