"""The INC-1.x keys of the zoo's 2022 recipe, mapped onto this toolkit's config schema.

The MNIST-12-int8 model card says the model was made with the INC example's ``mnist.yaml``
(intel/neural-compressor ``examples/onnxrt/image_recognition/onnx_model_zoo/mnist/quantization/ptq``).
Users who follow the card bring that file; :func:`map_keys` turns every key of it into this schema
(before validation) and returns one note per decision a user should know about:

- ``model.framework`` -> ``quantization.format``; ``post_training_static_quant`` -> ``static``;
  ``tuning.exit_policy.*`` / ``tuning.strategy.name`` -> ``tuning.*``;
- the dataloaders (``quantization.calibration.dataloader``, ``evaluation.accuracy.dataloader``,
  ``evaluation.performance.dataloader``): ``dataset: {MNIST: {root}}`` -> ``dataset.root`` (one MNIST
  folder: the train split calibrates, the test split evaluates), the ``transform`` chain ->
  ``preprocessing``. INC 1.x's ``MNIST`` dataset yields raw 0..255 pixels as HWC ``[28, 28, 1]``, so
  ``Cast`` + ``Transpose: [2, 0, 1]`` (the recipe's chain) means raw pixels in NCHW; ``Rescale``
  divides by 255, ``Normalize`` subtracts a mean and divides by a std, ``Transpose``/``Reshape`` set the
  layout. Every dataloader must describe the same preprocessing (calibrating on one and evaluating on
  another is how a model gets calibrated for inputs it never sees);
- ``evaluation.accuracy.dataloader.batch_size`` -> ``evaluation.batch_size``;
  ``evaluation.performance`` {warmup, iteration, configs.intra_num_of_threads, dataloader.batch_size}
  -> ``benchmark.*``; keys with no meaning here (``cores_per_instance``, ``num_of_instance``, the
  calibration batch size) are accepted and reported as ignored.
"""

from __future__ import annotations

import copy
import math
import os
from fractions import Fraction
from typing import Any

from quant.config.preprocessing import LAYOUT_SHAPES, Preprocessing, same, scale_value
from quant.errors import ConfigError

FRAMEWORKS = {"onnxrt_qlinearops": "QOperator", "onnxrt_qdq": "QDQ", "onnxrt_qdqops": "QDQ"}
TRANSFORMS = ("Cast", "Rescale", "Normalize", "Transpose", "Reshape", "ToArray")
# INC 1.x's MNIST dataset item: np.expand_dims(uint8 image, -1), i.e. HWC
_INC_IMAGE_SHAPE = (28, 28, 1)
_LAYOUTS = {shape: layout for layout, shape in LAYOUT_SHAPES.items()}
_DATALOADER_KEYS = ("batch_size", "dataset", "transform", "shuffle", "last_batch")
# (section path, what the dataloader is for)
_LOADERS = (("quantization.calibration", "calibration"), ("evaluation.accuracy", "accuracy"),
            ("evaluation.performance", "performance"))


def _err(source: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")


def _typename(v: Any) -> str:
    return {"NoneType": "null", "dict": "mapping", "list": "list", "str": "string", "bool": "boolean"}.get(type(v).__name__, type(v).__name__)


def _mapping(v: Any, key: str, source: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _err(source, key, f"expected a mapping, got {_typename(v)}")
    return v


def _only(d: dict, allowed: tuple, key: str, source: str) -> None:
    for k in d:
        if k not in allowed:
            raise _err(source, "", f"unknown key '{key}.{k}' (supported here: {', '.join(allowed) or 'none'})")


def _number(v: Any, key: str, source: str, lo: float | None = None) -> float:
    """A finite number, or a one-element list of one (INC's per-channel form; MNIST has one channel)."""
    if isinstance(v, list):
        if len(v) != 1:
            raise _err(source, key, f"MNIST images have one channel: give one value, got {len(v)}")
        v = v[0]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or abs(v) > 1e6 or not math.isfinite(v):
        raise _err(source, key, f"expected a finite number (|x| <= 1e6), got {v!r}")
    if lo is not None and v < lo:
        raise _err(source, key, f"must be >= {lo:g}, got {v!r}")
    return float(v)


def _int(v: Any, key: str, source: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _err(source, key, f"expected an integer in {lo}..{hi}, got {v!r}")
    return v


def preprocessing_of(chain: Any, key: str, source: str) -> dict:
    """The preprocessing an INC-1.x ``transform`` chain applies to INC's MNIST items (raw 0..255, HWC):
    ``{scale, mean, std, layout}`` with input = (pixel * scale - mean) / std."""
    chain = _mapping(chain, key, source)
    shape = _INC_IMAGE_SHAPE
    axes: tuple | None = ("H", "W", "C")  # what each axis is, while known; H must stay before W (else the digit is transposed)
    scale, mean, std = Fraction(1), 0.0, 1.0
    for name, params in chain.items():
        k = f"{key}.{name}"
        params = _mapping(params, k, source)
        if name == "Cast":
            _only(params, ("dtype",), k, source)
            if params.get("dtype", "float32") != "float32":
                raise _err(source, f"{k}.dtype", f"the models take float32 input; got {params['dtype']!r}")
        elif name == "ToArray":
            _only(params, (), k, source)
        elif name == "Rescale":  # image / 255
            _only(params, (), k, source)
            if mean == 0 and std == 1:
                scale /= 255
            else:
                std *= 255
        elif name == "Normalize":  # (image - mean) / std, after what came before
            _only(params, ("mean", "std"), k, source)
            m = _number(params.get("mean", [0.0]), f"{k}.mean", source)
            s = _number(params.get("std", [1.0]), f"{k}.std", source, lo=1e-6)
            mean, std = mean + m * std, std * s
        elif name == "Transpose":
            shape, axes = _transpose(params, k, source, shape, axes)
        elif name == "Reshape":
            shape, axes = _reshape(params, k, source)
        else:
            raise _err(source, k, f"transform {name!r} cannot be expressed as preprocessing; supported: {', '.join(TRANSFORMS)} "
                       "(crops, flips and resizes change the digit)")
    if mean > 1e6 or std > 1e6:
        raise _err(source, key, f"gives mean {mean:g} / std {std:g}, beyond the supported +-1e6")
    if shape not in _LAYOUTS:
        raise _err(source, key, f"leaves images of shape {list(shape)}; the models take [1, 28, 28] (NCHW), [28, 28, 1] (NHWC) "
                   "or [784] (flat) per image: add Transpose {perm: [2, 0, 1]} or Reshape {shape: [784]}")
    return {"scale": str(scale), "mean": mean, "std": std, "layout": _LAYOUTS[shape]}


def _transpose(params: dict, k: str, source: str, shape: tuple, axes: tuple | None) -> tuple[tuple, tuple]:
    """The image's shape and axes after a ``Transpose`` step ``k`` of a transform chain."""
    _only(params, ("perm",), k, source)
    perm = params.get("perm")
    if not isinstance(perm, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in perm) \
            or sorted(perm) != list(range(len(shape))):
        raise _err(source, f"{k}.perm", f"expected a permutation of {list(range(len(shape)))} (the image is {list(shape)} here), got {perm!r}")
    if axes is None:
        raise _err(source, k, f"a Transpose of an image reshaped to {list(shape)} cannot be expressed as a layout")
    shape, axes = tuple(shape[p] for p in perm), tuple(axes[p] for p in perm)
    hw = [a for a in axes if a in ("H", "W")]
    if hw == ["W", "H"]:
        raise _err(source, f"{k}.perm", f"{perm} swaps the image's height and width: the model would see transposed digits; "
                   "only the channel axis may move (e.g. [2, 0, 1])")
    return shape, axes


def _reshape(params: dict, k: str, source: str) -> tuple[tuple, tuple | None]:
    """The image's shape and axes (None when they are no longer known) after a ``Reshape`` step ``k``."""
    _only(params, ("shape",), k, source)
    new = params.get("shape")
    ok = isinstance(new, list) and new and all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1) for d in new) \
        and new.count(-1) <= 1
    if ok:
        known = math.prod(d for d in new if d != -1)
        ok = (784 % known == 0) if -1 in new else known == 784
    if not ok:
        raise _err(source, f"{k}.shape", f"expected a shape of 784 values (one -1 allowed), got {new!r}")
    shape = tuple(784 // math.prod(d for d in new if d != -1) if d == -1 else d for d in new)
    # a reshape keeps the raster order of the pixels (the channel has size 1, so HWC and CHW share it)
    axes = {(784,): ("P",), (1, 28, 28): ("C", "H", "W"), (28, 28, 1): ("H", "W", "C"), (28, 28): ("H", "W")}.get(shape)
    return shape, axes


def _dataloader(dl: Any, key: str, source: str) -> dict:
    dl = _mapping(dl, key, source)
    _only(dl, _DATALOADER_KEYS, key, source)
    out: dict[str, Any] = {"ignored": []}
    if "batch_size" in dl:
        out["batch_size"] = _int(dl["batch_size"], f"{key}.batch_size", source, 1, 10000)
    for k in ("shuffle", "last_batch"):
        if k in dl:
            out["ignored"].append(f"{key}.{k}")
    ds = _mapping(dl.get("dataset"), f"{key}.dataset", source)
    if ds:
        if list(ds) != ["MNIST"]:
            raise _err(source, f"{key}.dataset", f"only the MNIST dataset is supported here; got {', '.join(map(str, ds))}")
        mn = _mapping(ds["MNIST"], f"{key}.dataset.MNIST", source)
        _only(mn, ("root", "train", "download"), f"{key}.dataset.MNIST", source)
        if "root" in mn:
            if not isinstance(mn["root"], str) or not mn["root"].strip() or "\0" in mn["root"]:
                raise _err(source, f"{key}.dataset.MNIST.root", f"expected a folder path, got {mn['root']!r}")
            out["root"] = mn["root"]
        for flag in ("train", "download"):
            if flag in mn:
                if not isinstance(mn[flag], bool):
                    raise _err(source, f"{key}.dataset.MNIST.{flag}", f"expected true or false, got {mn[flag]!r}")
                out[flag] = mn[flag]
    out["preprocessing"] = preprocessing_of(dl.get("transform"), f"{key}.transform", source)
    return out


def _map_dataloaders(d: dict, quant: dict, evaluation: dict, source: str, notes: list[str], base: str | None) -> None:
    """The recipe's dataloaders (calibration, accuracy, performance) as the schema's keys: one MNIST folder, one
    preprocessing, the batch sizes; contradictions are errors naming the key, what is dropped a note."""
    loaders: dict[str, dict] = {}
    cal = quant.get("calibration")
    if isinstance(cal, dict) and "dataloader" in cal:
        loaders["quantization.calibration.dataloader"] = _dataloader(cal.pop("dataloader"), "quantization.calibration.dataloader", source)
    for part in ("accuracy", "performance"):
        sect = evaluation.get(part)
        if isinstance(sect, dict) and "dataloader" in sect:
            key = f"evaluation.{part}.dataloader"
            loaders[key] = _dataloader(sect.pop("dataloader"), key, source)
    if not loaders:
        return
    _one_folder(d, loaders, source, notes, base)
    _one_preprocessing(d, loaders, source, notes)
    _batches_and_split(d, loaders, evaluation, source, notes)
    for v in loaders.values():
        for k in v["ignored"]:
            notes.append(f"ignored: {k}")


def _one_folder(d: dict, loaders: dict[str, dict], source: str, notes: list[str], base: str | None) -> None:
    """The dataloaders' MNIST roots are one folder: ``dataset.root`` (and ``dataset.download``)."""
    roots = {k: v["root"] for k, v in loaders.items() if "root" in v}

    def where(r: str) -> str:  # the same folder however it is written (relative to the config's folder, like the schema)
        return os.path.normpath(os.path.join(base or "", os.path.expanduser(r)))

    items = list(roots.items())
    for k2, r2 in items[1:]:
        k1, r1 = items[0]
        if where(r2) != where(r1):
            raise _err(source, f"{k2}.dataset.MNIST.root", f"{r2!r} differs from {k1}.dataset.MNIST.root {r1!r}: mnist-quant reads one "
                       "MNIST folder (the train split calibrates, the test split evaluates); give both the same folder")
    dataset = _mapping(d.get("dataset"), "dataset", source)
    if roots:
        root = next(iter(roots.values()))
        if "root" in dataset and (not isinstance(dataset["root"], str) or "\0" in dataset["root"] or where(dataset["root"]) != where(root)):
            raise _err(source, "dataset.root", f"{dataset['root']!r} contradicts the dataloaders' MNIST root {root!r}")
        dataset["root"] = root
        notes.append(f"dataset root {root!r} from {', '.join(roots)}; --data_dir overrides it")
    downloads = {v["download"] for v in loaders.values() if "download" in v}
    if len(downloads) > 1:
        raise _err(source, "dataset.MNIST.download", "the dataloaders disagree on download")
    if downloads:
        dataset.setdefault("download", downloads.pop())
    if dataset:
        d["dataset"] = dataset


def _one_preprocessing(d: dict, loaders: dict[str, dict], source: str, notes: list[str]) -> None:
    """The dataloaders' transforms give one preprocessing, which an explicit ``preprocessing`` must not contradict."""
    (k0, first), *rest = loaders.items()
    for k, v in rest:
        if not same(first["preprocessing"], v["preprocessing"]):
            raise _err(source, f"{k}.transform", f"gives {Preprocessing.of(v['preprocessing']).describe()} but {k0}.transform gives {Preprocessing.of(first['preprocessing']).describe()}: "
                       "a model must be calibrated and evaluated with the same preprocessing")
    pre = first["preprocessing"]
    explicit = _mapping(d.get("preprocessing"), "preprocessing", source)
    if explicit:
        merged = {**pre, **explicit}
        bad = scale_value(merged["scale"]) is None or not all(isinstance(merged[k], (int, float)) and not isinstance(merged[k], bool)
                                                               for k in ("mean", "std"))
        if not bad and not same(pre, merged):  # (a bad value is named by the schema afterwards)
            raise _err(source, "preprocessing", f"contradicts {k0}.transform, which gives {Preprocessing.of(pre).describe()}")
    else:
        d["preprocessing"] = dict(pre)
        notes.append(f"preprocessing from {k0}.transform: {Preprocessing.of(pre).describe()} (INC 1.x's MNIST dataset yields raw 0..255 pixels; "
                     "only Rescale divides by 255)")


def _batches_and_split(d: dict, loaders: dict[str, dict], evaluation: dict, source: str, notes: list[str]) -> None:
    """The dataloaders' batch sizes and splits: evaluation.batch_size, benchmark.batch_size, notes on what is ignored."""
    c = loaders.get("quantization.calibration.dataloader")
    if c is not None:
        if "batch_size" in c:
            c["ignored"].append("quantization.calibration.dataloader.batch_size (min/max calibration does not depend on batching)")
        if c.get("train") is not True:
            notes.append("calibration uses the train split, as always here; the recipe's INC MNIST dataset (train: false by default) "
                         "calibrated on the first test images")
    a = loaders.get("evaluation.accuracy.dataloader")
    if a is not None:
        if a.get("train"):
            raise _err(source, "evaluation.accuracy.dataloader.dataset.MNIST.train", "accuracy is measured on the 10,000 test images; "
                       "remove train: true")
        if "batch_size" in a:
            if "batch_size" in evaluation and evaluation["batch_size"] != a["batch_size"]:
                raise _err(source, "evaluation.accuracy.dataloader.batch_size", "contradicts evaluation.batch_size")
            evaluation["batch_size"] = a["batch_size"]
    p = loaders.get("evaluation.performance.dataloader")
    if p is not None and p.get("train"):
        p["ignored"].append("evaluation.performance.dataloader.dataset.MNIST.train (the benchmark times test images)")
    if p is not None and "batch_size" in p:
        bench = d["benchmark"] = _mapping(d.get("benchmark"), "benchmark", source)
        if "batch_size" in bench and bench["batch_size"] != p["batch_size"]:
            raise _err(source, "evaluation.performance.dataloader.batch_size", "contradicts benchmark.batch_size")
        bench["batch_size"] = p["batch_size"]


def _map_performance(d: dict, evaluation: dict, source: str, notes: list[str]) -> None:
    perf = evaluation.pop("performance", None)
    if perf is None:
        return
    perf = _mapping(perf, "evaluation.performance", source)
    _only(perf, ("warmup", "iteration", "configs"), "evaluation.performance", source)
    bench = _mapping(d.get("benchmark"), "benchmark", source)
    for old, new in (("warmup", "warmup"), ("iteration", "iterations")):
        if old in perf:
            if new in bench and bench[new] != perf[old]:
                raise _err(source, f"evaluation.performance.{old}", f"contradicts benchmark.{new}")
            bench[new] = perf[old]
    cfgs = _mapping(perf.get("configs"), "evaluation.performance.configs", source)
    _only(cfgs, ("cores_per_instance", "num_of_instance", "inter_num_of_threads", "intra_num_of_threads", "kmp_blocktime"),
          "evaluation.performance.configs", source)
    for k, v in cfgs.items():
        if k == "intra_num_of_threads":
            if "threads" in bench and bench["threads"] != v:
                raise _err(source, "evaluation.performance.configs.intra_num_of_threads", "contradicts benchmark.threads")
            bench["threads"] = v
        else:
            notes.append(f"ignored: evaluation.performance.configs.{k} ({v!r}: the benchmark runs one onnxruntime session "
                         "with benchmark.threads intra-op threads)")
    if bench:
        d["benchmark"] = bench


def _map_accuracy(evaluation: dict, source: str) -> None:
    acc = evaluation.pop("accuracy", None)
    if acc is None:
        return
    acc = _mapping(acc, "evaluation.accuracy", source)
    _only(acc, ("metric",), "evaluation.accuracy", source)
    metric = acc.get("metric")
    top1 = isinstance(metric, dict) and list(metric) == ["topk"] and type(metric["topk"]) is int and metric["topk"] == 1
    if not (top1 or metric in ({"Accuracy": {}}, {"Accuracy": None}, None)):
        raise _err(source, "evaluation.accuracy.metric", f"only top-1 accuracy ({{topk: 1}}) is measured here; got {metric!r}")


def map_keys(raw: dict, source: str, base: str | None = None) -> tuple[dict, list[str]]:
    """``raw`` with its INC-1.x keys rewritten into this schema (a copy), and notes for the user;
    ``base``: the config file's folder (relative roots are compared as the folders they name)."""
    d = copy.deepcopy(raw)
    notes: list[str] = []
    model = _mapping(d.get("model"), "model", source)
    quant = _mapping(d.get("quantization"), "quantization", source)
    tuning = _mapping(d.get("tuning"), "tuning", source)
    evaluation = _mapping(d.get("evaluation"), "evaluation", source)
    if "framework" in model:
        fw = model.pop("framework")
        if fw == "onnxrt_integerops":
            raise _err(source, "model.framework", "onnxrt_integerops (dynamic quantization) is not supported; use onnxrt_qlinearops or onnxrt_qdq")
        if not isinstance(fw, str) or fw not in FRAMEWORKS:
            raise _err(source, "model.framework", f"must be one of {', '.join(FRAMEWORKS)}; got {fw!r}")
        if "format" in quant and quant["format"] != FRAMEWORKS[fw]:
            raise _err(source, "model.framework", f"{fw} contradicts quantization.format {quant['format']!r}")
        quant["format"] = FRAMEWORKS[fw]
    if quant.get("approach") == "post_training_static_quant":
        quant["approach"] = "static"
    elif quant.get("approach") == "post_training_dynamic_quant":
        raise _err(source, "quantization.approach", "dynamic quantization is not supported; use post_training_static_quant / static")
    cal = quant.get("calibration")
    if isinstance(cal, dict) and isinstance(cal.get("sampling_size"), list):
        if len(cal["sampling_size"]) != 1:
            raise _err(source, "quantization.calibration.sampling_size", "give one size, e.g. 100")
        cal["sampling_size"] = cal["sampling_size"][0]
    if "exit_policy" in tuning:
        ep = _mapping(tuning.pop("exit_policy"), "tuning.exit_policy", source)
        _only(ep, ("timeout", "max_trials"), "tuning.exit_policy", source)
        for k, v in ep.items():
            if k in tuning and tuning[k] != v:
                raise _err(source, f"tuning.exit_policy.{k}", f"contradicts tuning.{k}")
            tuning[k] = v
    if isinstance(tuning.get("strategy"), dict):
        st = tuning["strategy"]
        if set(st) != {"name"}:
            raise _err(source, "tuning.strategy", "only {name: ...} is supported in the INC-1.x form")
        tuning["strategy"] = st["name"]
    _map_dataloaders(d, quant, evaluation, source, notes, base)
    _map_accuracy(evaluation, source)
    _map_performance(d, evaluation, source, notes)
    for name, s in (("model", model), ("quantization", quant), ("tuning", tuning), ("evaluation", evaluation)):
        if s or name in d:
            d[name] = s
    if d.get("evaluation") == {}:
        d.pop("evaluation")
    ignored = [n[len("ignored: "):] for n in notes if n.startswith("ignored: ")]
    notes = [n for n in notes if not n.startswith("ignored: ")]
    if ignored:
        notes.append("accepted and ignored (no meaning here): " + "; ".join(ignored))
    return d, notes
