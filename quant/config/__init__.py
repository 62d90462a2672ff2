"""The toolkit's YAML config (``mnist.yaml``): schema, defaults, validation, INC-1.x key mapping.

Parsed with PyYAML's SafeLoader only, and built only after its composed node graph is checked
(aliases expanded, no mapping with a key twice). Any problem raises :class:`ConfigError` (exit 2)
with one line naming the file and the key path: unknown keys (with a did-you-mean), wrong types,
values out of range. Every number has one range (``F.min``/``F.max``); the command-line flags that
override a key are checked against the same range (:func:`check_value`). The INC-1.x keys of the
zoo's 2022 recipe are mapped onto this schema before validation (:mod:`quant.config.recipe`).
"""

from __future__ import annotations

import copy
import fractions
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from quant.config import recipe
from quant.config.preprocessing import Preprocessing
from quant.errors import ConfigError, UsageError, first_line, suggest
from quant.files import read_regular_file, sha256_bytes

MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_NODES = 10_000  # with aliases expanded; mnist.yaml has < 200, a 400-byte alias bomb hundreds of millions
SEED_MAX = 2**32 - 1  # numpy's RandomState (which INC seeds) takes seeds below 2**32


@dataclass(frozen=True)
class F:
    """A leaf of the schema."""

    kind: str  # str | int | float | bool | fraction | list[str] | criterion
    default: Any
    choices: tuple | None = None
    min: float | None = None  # every number (int, float, fraction, criterion) has both bounds
    max: float | None = None
    max_exclusive: bool = False
    nullable: bool = False
    doc: str = ""


SCHEMA: dict[str, Any] = {
    "version": F("scalar", None, nullable=True, doc="accepted for INC-1.x configs; ignored"),
    "model": {
        "name": F("str", None, nullable=True, doc="a label used in reports and figures; null = the model file's name without .onnx"),
        "input_name": F("str", None, nullable=True, doc="input tensor name; null = read from the model (its one input)"),
        "output": F("str", None, nullable=True, choices=("logits", "probabilities"),
                    doc="what the model's 10 outputs are; null = read from the model (a Softmax head gives probabilities)"),
        "dynamic_batch": F("bool", True, doc="rewrite a fixed batch dimension (the zoo's 1) to a symbolic one before quantizing, "
                           "outputs checked identical (--dynamic_batch / --no_dynamic_batch)"),
    },
    "dataset": {
        "root": F("str", None, nullable=True, doc="MNIST folder (--data_dir overrides it; else $MNIST_DIR, then the user cache)"),
        "download": F("bool", True, doc="download missing files (md5-verified) into the chosen folder"),
        "verify_md5": F("bool", True, doc="check the md5 of the four canonical files"),
    },
    "preprocessing": {
        # scale and std below 1e-6 are no preprocessing anyone uses (and tiny enough ones make the
        # float32 input 0 or inf); '1e400' used to reach float() and overflow
        "scale": F("fraction", "1/255", min=1e-6, max=1000, doc="pixels (0..255) are multiplied by this"),
        "mean": F("float", 0.0, min=-1e6, max=1e6, doc="subtracted after scaling (far beyond any pixel range at +-1e6)"),
        "std": F("float", 1.0, min=1e-6, max=1e6, doc="divided by after subtracting mean"),
        "layout": F("str", None, nullable=True, choices=("NCHW", "NHWC", "flat"),
                    doc="input layout: NCHW [N,1,28,28], NHWC [N,28,28,1], flat [N,784]; null = read from the model's input shape"),
    },
    "quantization": {
        "approach": F("str", "static", choices=("static",), doc="post-training static quantization"),
        "format": F("str", "QDQ", choices=("QOperator", "QDQ"), doc="QuantizeLinear/DequantizeLinear pairs (onnxruntime fuses them into "
                    "int8 kernels; float logits) or QLinear* ops (the zoo's; quantized logits)"),
        "kernel_aware": F("bool", True, doc="exact speed rewrites of the fp32 graph and the kernel-aware precision plan: layers without "
                          "a fast onnxruntime int8 kernel stay fp32 (docs/how-it-works.md)"),
        "per_channel": F("bool", False, doc="per-channel weight scales (QDQ needs opset >= 13)"),
        "reduce_range": F("bool", True, doc="7-bit quantization ranges (uint8 activations 0..127, int8 weights -64..64), so "
                          "onnxruntime computes the int8 model exactly on every x86 CPU (AVX2 without VNNI saturates 16-bit sums "
                          "at 8 bits). Always passed to INC, whose own default reads the host CPU (docs/how-it-works.md)"),
        "op_types_to_keep_fp32": F("list[str]", [], doc="op types never quantized, e.g. [MatMul]"),
        "nodes_to_keep_fp32": F("list[str]", [], doc="node names never quantized"),
        "calibration": {
            "split": F("str", "train", choices=("train",), doc="calibration never uses test images"),
            # the whole train split: measured 150 s and 508 MB peak for mnist-12 on 2 cores (docs/benchmarks.md)
            "sampling_size": F("int", 100, min=1, max=60000, doc="number of calibration images"),
            "seed": F("int", 9527, min=0, max=SEED_MAX, doc="seed that picks the calibration images"),
            "manifest": F("str", None, nullable=True, doc="calibration-set definitions checked against; null = the built-in "
                          "one shipped in the package (quant/resources/calib_manifest.json)"),
        },
    },
    "tuning": {
        "accuracy_criterion": F("criterion", {"relative": 0.01}, min=0, max=1, max_exclusive=True,
                                doc="{relative: x} or {absolute: x}: the accuracy (a fraction) int8 may lose; 1 would accept any model"),
        "strategy": F("str", "basic", choices=("basic", "conservative", "mse", "mse_v2", "random", "exhaustive", "bayesian"), doc="INC tuning strategy"),
        "objective": F("str", "accuracy", choices=("accuracy", "performance"), doc="accuracy: INC's first config that meets the criterion; performance: also time fp32-fallback candidates and keep the fastest that meets it (docs/how-it-works.md)"),
        "timeout": F("int", 0, min=0, max=7 * 24 * 3600, doc="seconds; 0 = no limit (at most a week)"),
        "max_trials": F("int", 100, min=1, max=10000, doc="tuning trials at most (each quantizes and evaluates the model)"),
        "random_seed": F("int", 9527, min=0, max=SEED_MAX, doc="INC's random seed (numpy seeds are below 2**32)"),
    },
    "evaluation": {
        "batch_size": F("int", 1, min=1, max=10000, doc="batch for accuracy runs (models with a fixed batch of 1 use 1; "
                        "at most the 10,000 test images)"),
        "timeout_seconds": F("float", 600.0, min=0.1, max=7 * 24 * 3600, doc="time bound of one inference (one onnxruntime run); a "
                             "model still running after it ends the command with exit 4 naming it"),
    },
    "benchmark": {
        "batch_size": F("int", 1, min=1, max=10000, doc="images per timed inference (at most the 10,000 test images)"),
        # 10**12 used to fail allocating the latency array (8 bytes per iteration and model) or run for days
        "iterations": F("int", 1000, min=1, max=1_000_000, doc="timed inferences per model (a million: 8 MB of "
                        "latencies per model)"),
        "warmup": F("int", 100, min=0, max=10000, doc="untimed inferences per model first"),
        # 1000 threads drove the load average to 730
        "threads": F("int", 1, min=1, max=256, doc="onnxruntime intra-op threads (more than the CPU has is allowed, up to 256)"),
    },
    "output": {
        "test_data_sets": F("int", 3, min=0, max=1000, doc="zoo-style test_data_set_N folders written beside the int8 model (0 = none)"),
        "report": F("str", None, nullable=True, doc="report path (.json; .md beside it); default beside the model"),
    },
}

# Keys holding file or folder paths: a relative value in a config file is resolved against the folder
# of that file (not the working folder), so a config behaves the same wherever it is used from.
PATH_KEYS = (("dataset", "root"), ("quantization", "calibration", "manifest"), ("output", "report"))
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "resources" / "mnist.yaml"

class Section:
    """A validated config section: attribute access, read-only (assigning a key would bypass its
    range check; :func:`replace` returns a re-validated copy instead)."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError(f"config key {key!r} is read-only: use quant.config.replace(cfg, {{section: {{key: value}}}}), "
                             "which checks the value")

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.to_dict() if isinstance(v, Section) else copy.deepcopy(v)) for k, v in self.__dict__.items()}

    def __repr__(self) -> str:
        return f"Section({self.to_dict()!r})"


class Config(Section):
    source: str
    sha256: str
    notes: list[str]  # what the INC-1.x key mapping decided (recipe.map_keys), for logs and reports

    @property
    def criterion(self) -> tuple[str, float]:
        ((kind, value),) = self.tuning.accuracy_criterion.items()
        return kind, float(value)

    @property
    def scale(self) -> float:
        return self.preprocessing_value().factor

    def preprocessing_value(self) -> Preprocessing:
        p = self.preprocessing
        return Preprocessing(str(p.scale), float(p.mean), float(p.std), p.layout)

    def preprocessing_dict(self) -> dict[str, Any]:
        return self.preprocessing_value().as_dict()


def _err(source: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")


def _typename(v: Any) -> str:
    return {"NoneType": "null", "dict": "mapping", "list": "list", "str": "string", "bool": "boolean"}.get(type(v).__name__, type(v).__name__)


def _num(x) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def range_text(f: F) -> str:
    """A number's range as the help texts and the config reference state it: ``1..256``, ``[0, 1)``."""
    return f"[{_num(f.min)}, {_num(f.max)})" if f.max_exclusive else f"{_num(f.min)}..{_num(f.max)}"


def _range_problem(f: F, value) -> str | None:
    """Why ``value`` (a number; a Fraction for fraction leaves) is outside ``f``'s range, or None.
    Compared exactly before any float() conversion, so a huge int or fraction cannot overflow."""
    if value < f.min:
        return f"must be >= {_num(f.min)}"
    if value > f.max or (f.max_exclusive and value == f.max):
        return f"must be {'<' if f.max_exclusive else '<='} {_num(f.max)}"
    if value != value:  # nan: no comparison is true
        return "must be a finite number"
    return None


def leaf(key_path: str) -> F:
    """The schema leaf of a dotted key path, e.g. ``leaf("benchmark.threads")``."""
    spec: Any = SCHEMA
    for k in key_path.split("."):
        spec = spec[k]
    return spec


def check_flag(f: F, value: Any, flag: str) -> Any:
    """A command-line number (or the Python API argument standing for it) against the range ``f``:
    UsageError ``--flag VALUE: must be ...`` (exit 2)."""
    if isinstance(value, bool) or not isinstance(value, int if f.kind == "int" else (int, float)):
        raise UsageError(f"{flag} {value!r}: expected {'an integer' if f.kind == 'int' else 'a number'}")
    problem = _range_problem(f, value)
    if problem:
        raise UsageError(f"{flag} {value}: {problem}")
    return value


# Numbers that only have flags and API arguments, no config keys (validate, check-test-data). They live
# here, not in testdata / validation, so building the command-line parser imports no onnxruntime.
DEFAULT_RTOL = 1e-3  # the tolerances of onnx's backend test runner for zoo test data
DEFAULT_ATOL = 1e-7
# --rtol / --atol: an output passes when |got - ref| <= atol + rtol * |ref|. Above rtol 1 an output may
# change sign; MNIST logits stay well within +-100 (mnist-12's within +-35), so a larger atol would
# accept any output.
RTOL = F("float", None, min=0.0, max=1.0)
ATOL = F("float", None, min=0.0, max=100.0)
# --samples / --portability_samples (no config keys): at most the 10,000 images of the MNIST test split
SAMPLES = F("int", 200, min=1, max=2_000, doc="test images for the per-layer error (every activation of both models is "
            "kept: 683 MB peak at 2,000 for mnist-12)")
PORTABILITY_SAMPLES = F("int", 1000, min=1, max=10_000, doc="test images for the CPU-portability check (~10 ms each)")


def check_value(key_path: str, value: Any, flag: str) -> Any:
    """A flag that overrides a config key gets the key's range, e.g.
    ``check_value("benchmark.threads", 1000, "--threads")`` -> ``--threads 1000: must be <= 256``."""
    return check_flag(leaf(key_path), value, flag)


def _check_leaf(f: F, value: Any, key: str, source: str) -> Any:
    if value is None:
        if f.nullable:
            return None
        raise _err(source, key, "must not be null")
    k = f.kind
    if k == "scalar":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _err(source, key, f"expected a version number or string, got {_typename(value)}")
        return str(value)
    if k == "str":
        if not isinstance(value, str):
            raise _err(source, key, f"expected a string, got {_typename(value)} {value!r}")
        if "\0" in value:  # a path with a NUL byte reached os calls as an exit-1 ValueError
            raise _err(source, key, "contains a NUL character")
    elif k == "bool":
        if not isinstance(value, bool):
            raise _err(source, key, f"expected true or false, got {_typename(value)} {value!r}")
    elif k == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(source, key, f"expected an integer, got {_typename(value)} {value!r}")
    elif k == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value.strip()):
                hint = f" (YAML 1.1 reads {value} as text: write it with a dot and a signed exponent, e.g. 1.0e+6)"
            raise _err(source, key, f"expected a number, got {_typename(value)} {value!r}{hint}")
    elif k == "fraction":
        return _check_fraction(f, value, key, source)
    elif k == "list[str]":
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise _err(source, key, f"expected a list of strings, got {_typename(value)} {value!r}")
        return list(value)
    elif k == "criterion":
        return _check_criterion(f, value, key, source)
    if f.choices is not None and value not in f.choices:
        hint = suggest(str(value), f.choices)
        extra = f" (did you mean {hint!r}?)" if hint else ""
        raise _err(source, key, f"must be one of {', '.join(map(str, f.choices))}; got {value!r}{extra}")
    if k in ("int", "float"):
        problem = _range_problem(f, value)
        if problem:
            raise _err(source, key, f"{problem}, got {value!r}")
        return float(value) if k == "float" else value
    return value


def _check_fraction(f: F, value: Any, key: str, source: str) -> Any:
    """A ``fraction`` leaf: a number or a string (stripped) holding a number or ``a/b``, in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _err(source, key, f"expected a number or a fraction like '1/255', got {_typename(value)} {value!r}")
    number = value = value.strip() if isinstance(value, str) else value
    if isinstance(value, str):
        try:  # float() unless 'a/b': Fraction('1e-999999999') would expand the exponent into a billion digits
            number = fractions.Fraction(value) if "/" in value else float(value)
        except (ValueError, ZeroDivisionError):
            raise _err(source, key, f"expected a number or a fraction like '1/255', got {value!r}") from None
    problem = _range_problem(f, number)
    if problem:
        raise _err(source, key, f"{problem}, got {value!r}")
    return value


def _check_criterion(f: F, value: Any, key: str, source: str) -> dict:
    """A ``criterion`` leaf: exactly one of ``{relative: x}`` or ``{absolute: x}``, x in range."""
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("relative", "absolute"):
        raise _err(source, key, f"expected exactly one of {{relative: x}} or {{absolute: x}}, got {value!r}")
    (ck, cv), = value.items()
    if isinstance(cv, bool) or not isinstance(cv, (int, float)):
        raise _err(source, f"{key}.{ck}", f"expected a number, got {_typename(cv)} {cv!r}")
    if _range_problem(f, cv):
        raise _err(source, f"{key}.{ck}", f"tolerance must be in {range_text(f)}, got {cv!r}")
    return {ck: float(cv)}


def _validate(schema: dict, data: Any, prefix: str, source: str) -> dict:
    if not isinstance(data, dict):
        raise _err(source, prefix, f"expected a mapping, got {_typename(data)}")
    for key in data:
        if not isinstance(key, str) or key not in schema:
            path = f"{prefix}.{key}" if prefix else str(key)
            hint = suggest(str(key), list(schema))
            extra = f" (did you mean {(prefix + '.' if prefix else '') + hint!r}?)" if hint else ""
            raise _err(source, "", f"unknown key {path!r}{extra}")
    out = {}
    for key, spec in schema.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, dict):
            out[key] = Section(_validate(spec, data.get(key, {}) if data.get(key) is not None else {}, path, source))
        else:
            out[key] = _check_leaf(spec, data[key], path, source) if key in data else copy.deepcopy(spec.default)
    return out


def from_dict(raw: Any, source: str = "<config>", sha256: str | None = None, base: str | None = None) -> Config:
    if raw is None:
        raise _err(source, "", "config is empty")
    if not isinstance(raw, dict):
        raise _err(source, "", f"config must be a mapping of sections, got a {_typename(raw)}")
    mapped, notes = recipe.map_keys(raw, source, base)
    values = _validate(SCHEMA, mapped, "", source)
    cfg = Config(values)
    cfg.__dict__.update(source=source, sha256=sha256 or sha256_bytes(json.dumps(cfg.to_dict(), sort_keys=True).encode()),
                        notes=notes)
    return cfg


def checked_preprocessing(value: Any, source: str) -> Preprocessing:
    """A ``preprocessing`` mapping found outside a config file (a model's metadata), checked key for key as
    the config's section is; ConfigError naming ``source`` and the key. The plain value, never a Config, is
    what the layers below the workflows receive."""
    return from_dict({"preprocessing": value}, source).preprocessing_value()


def replace(cfg: Config, changes: dict[str, Any], noted: bool = True) -> Config:
    """A copy of ``cfg`` with ``changes`` (``{"tuning": {"objective": "performance"}}``) merged in and
    every key checked again as in a file (a bad value raises ConfigError, exit 2, naming the key). The
    copy keeps the file's path and sha256; each changed key is added to its notes, which the reports
    print beside them, so a report says which values did not come from that file (``noted=False``: values
    read from the model itself, which the reports list as inferred instead)."""
    def merge(base: dict, new: dict, prefix: str) -> list[str]:
        changed = []
        for k, v in new.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                changed += merge(base[k], v, f"{prefix}{k}.")
            else:
                if base.get(k, object()) != v:
                    changed.append(f"{prefix}{k} = {v!r}")
                base[k] = copy.deepcopy(v)
        return changed

    if not isinstance(changes, dict):
        raise _err(cfg.source, "", f"changes must be a mapping of sections, got a {_typename(changes)}")
    values = {k: v for k, v in cfg.to_dict().items() if k in SCHEMA}
    changed = merge(values, changes, "")
    new = Config(_validate(SCHEMA, values, "", cfg.source))
    new.__dict__.update(source=cfg.source, sha256=cfg.sha256,
                        notes=[*cfg.notes, *(f"{c} (not from the file: a flag or the caller)" for c in changed if noted)])
    return new


def defaults() -> Config:
    return from_dict({}, "<defaults>")


class _Loader(yaml.SafeLoader):
    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except ValueError as e:  # a value its tag cannot hold (2001-02-30, a 5000-digit integer): one line with its place
            raise yaml.constructor.ConstructorError(None, None, first_line(e), node.start_mark) from None


def _check_graph(root: yaml.Node, source: str) -> None:
    """Refuse, before anything is built, a document that is more than :data:`MAX_YAML_NODES` nodes once
    its aliases are expanded (nine levels of nine aliases: 400 bytes, 9**9 nodes), an alias
    inside its own anchor, and a mapping with a key twice (the last one would silently win; merge keys
    ``<<`` may repeat keys, that is what they are for). Aliases share node objects, so each node is
    visited once and its expanded size is memoized."""
    sizes: dict[int, int | None] = {}  # id(node) -> expanded node count; None while being counted

    def size(node: yaml.Node, path: str) -> int:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise _err(source, path, f"YAML alias refers to its own anchor (line {node.start_mark.line + 1})")
            return sizes[id(node)]
        sizes[id(node)] = None
        children = []
        if isinstance(node, yaml.SequenceNode):
            children = [(f"{path}[{i}]", item) for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}  # (tag, text) of each scalar key -> its line
            for k, v in node.value:
                scalar = isinstance(k, yaml.ScalarNode)
                name = k.value if scalar else "?"
                child = f"{path}.{name}" if path else name
                if scalar and k.tag != "tag:yaml.org,2002:merge":
                    if (k.tag, k.value) in seen:
                        raise _err(source, child, f"duplicate key (lines {seen[k.tag, k.value]} and {k.start_mark.line + 1})")
                    seen[k.tag, k.value] = k.start_mark.line + 1
                children += [(child, k), (child, v)]
        total = 1
        for child, n in children:
            total += size(n, child)
            if total > MAX_YAML_NODES:
                raise _err(source, "", f"more than {MAX_YAML_NODES} YAML nodes once aliases are expanded; not a config")
        sizes[id(node)] = total
        return total

    size(root, "")


def _parse_yaml(data: bytes, source: str) -> Any:
    """The YAML document in ``data`` (None when empty), composed first and built only after
    :func:`_check_graph`; every problem is a one-line ConfigError."""
    try:
        loader = _Loader(data.decode("utf-8"))
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_graph(node, source)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not a UTF-8 text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nesting too deep") from None


def load(path: str | os.PathLike | None) -> Config:
    """Load and validate a YAML config; ``None`` gives the defaults (identical to mnist.yaml)."""
    if path is None:
        return defaults()
    p = Path(path)
    data = read_regular_file(p, "config file", MAX_CONFIG_BYTES, ConfigError)
    raw = _parse_yaml(data, str(p))
    cfg = from_dict(raw, str(p), sha256_bytes(data), str(p.parent))
    _resolve_paths(cfg, p.parent)
    return cfg


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Make the relative (and ``~``) paths of :data:`PATH_KEYS` absolute against ``base``."""
    for keys in PATH_KEYS:
        section = cfg
        for k in keys[:-1]:
            section = getattr(section, k)
        value = getattr(section, keys[-1])
        if value is not None:
            section.__dict__[keys[-1]] = str(base / Path(value).expanduser())


def describe_schema(schema: dict = SCHEMA, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, default, doc) rows for the config reference (docs/configuration.md, scripts/config_reference.py); numbers state their range."""
    rows = []
    for key, spec in schema.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, dict):
            rows += describe_schema(spec, path)
        else:
            choices = f" ({' / '.join(map(str, spec.choices))})" if spec.choices else ""
            span = f" (range {range_text(spec)})" if spec.min is not None else ""
            rows.append((path, json.dumps(spec.default), spec.doc + choices + span))
    return rows
