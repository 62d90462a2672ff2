"""What every workflow reads first: the config, the MNIST splits and the preprocessed test images."""

from __future__ import annotations

from typing import Callable

from quant import config as config_mod
from quant import data
from quant.config import preprocessing
from quant.data import calib, provenance
from quant.errors import ConfigError, QuantError, UsageError
from quant.graph import models


def load_config(cfg):
    from quant import stop

    cfg = cfg if isinstance(cfg, config_mod.Config) else config_mod.load(cfg)
    stop.configure(cfg.evaluation.timeout_seconds)  # every command that runs a model reads its config here
    return cfg


def config_file(cfg) -> str | None:
    """The YAML file a config was read from (None for the built-in defaults)."""
    return None if cfg.source.startswith("<") else cfg.source


def data_files(cfg, data_dir: str | None) -> list[tuple[str, object]]:
    """The MNIST files a run would read, gz and raw names (checked against its outputs before any work)."""
    root, source = data.resolve_data_dir(data_dir, cfg.dataset.root)
    return [(f"MNIST file (from {source})", root / (stem + ext)) for stem in data.CANONICAL_MD5 for ext in (".gz", "")]


def load_splits(cfg, data_dir: str | None, splits=("train", "test"), log: Callable = print) -> dict[str, data.Split]:
    root = data.ensure_data_dir(data_dir, cfg.dataset.root, download=cfg.dataset.download, log=log, splits=splits)
    return {s: data.load_split(root, s, verify=cfg.dataset.verify_md5) for s in splits}


def calib_spec(cfg) -> calib.CalibSpec:
    """Which calibration set the config asks for."""
    c = cfg.quantization.calibration
    return calib.CalibSpec(c.split, c.sampling_size, c.seed, cfg.preprocessing_dict(), calib.manifest_path(c.manifest))


def calibration_set(cfg, train: data.Split) -> calib.CalibrationSet:
    """The calibration set the config asks for, built from the train split and checked against the manifest."""
    return calib.build(calib_spec(cfg), train)


def test_inputs(cfg, test: data.Split):
    return cfg.preprocessing_value().apply(test.images)


def model_name(path) -> str:
    """A model's name for reports and figures: its file name without ``.onnx``."""
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return name[:-5] if name.endswith(".onnx") else name


def settle_model(cfg, lm, others: tuple = ()):
    """What the model says about itself, before any work: its input (name and layout), what its outputs
    are (a Softmax head gives probabilities) and its name (the file name). A config value left null is
    read from the model; a config value the model contradicts is exit 2 naming both. ``others`` (more
    loaded models of the same run, e.g. a baseline) must take the same input layout. Returns ``(cfg,
    signature, inferred)``: ``cfg`` a copy with the model's values filled in, ``inferred`` what was read
    from the model (recorded in the reports; :func:`say_inferred` says it once)."""
    source = "the built-in defaults" if cfg.source.startswith("<") else cfg.source
    for m in (lm, *others):
        names = [i.name for i in models.graph_inputs(m.proto)]
        if cfg.model.input_name is not None and cfg.model.input_name not in names:
            raise ConfigError(f"{source}: model.input_name is {cfg.model.input_name!r} but {m.path} has no such input "
                              f"(its inputs: {names}); remove the key or set it to the model's")
    sig = models.signature(lm.proto, lm.path, cfg.model.input_name)
    layout = models.layout_of(sig)
    if cfg.preprocessing.layout not in (None, layout):
        want = ["N", *preprocessing.LAYOUT_SHAPES[cfg.preprocessing.layout]]
        raise ConfigError(f"{source}: preprocessing.layout is {cfg.preprocessing.layout} ({want}) but {lm.path} input "
                          f"{sig.input_name!r} has shape {list(sig.input_shape)} ({layout}); remove the key or set it to {layout}")
    output = _output_kind(lm, sig)
    if cfg.model.output not in (None, output):
        raise ConfigError(f"{source}: model.output is {cfg.model.output} but {lm.path} output {sig.output_name!r} "
                          f"{'comes from Softmax' if output == 'probabilities' else 'does not come from Softmax'} ({output}); "
                          f"remove the key or set it to {output}")
    facts = _facts(lm, sig)
    inferred = _unset(cfg, facts)
    for other in others:
        osig = models.signature(other.proto, other.path, cfg.model.input_name)
        if models.layout_of(osig) != layout:
            raise UsageError(f"{other.path} input {osig.input_name!r} has shape {list(osig.input_shape)} ({models.layout_of(osig)}) "
                              f"but {lm.path} takes {layout}; one run feeds every model the same images")
    # the input name stays per model (a run's other models, an int8 model and its baseline, may name theirs otherwise)
    fill = {s: {k: v for k, v in vs.items() if getattr(getattr(cfg, s), k) is None and k != "input_name"} for s, vs in facts.items()}
    if any(fill.values()):
        cfg = config_mod.replace(cfg, fill, noted=False)
    return cfg, sig, inferred


def _output_kind(lm, sig) -> str:
    return "probabilities" if models.output_producer(lm.proto, sig) in ("Softmax", "QLinearSoftmax") else "logits"


def _facts(lm, sig) -> dict:
    """What a model says about itself: its input name and layout, its output kind, its name."""
    return {"model": {"input_name": sig.input_name, "output": _output_kind(lm, sig), "name": model_name(lm.path)},
            "preprocessing": {"layout": models.layout_of(sig)}}


def _unset(cfg, facts: dict) -> dict:
    """``facts`` as ``{"section.key": value}`` for the keys ``cfg`` leaves null."""
    return {f"{section}.{k}": v for section, values in facts.items() for k, v in values.items()
            if getattr(getattr(cfg, section), k) is None}


def inferred_of(cfg, lm) -> dict:
    """What is read from model ``lm`` for the keys ``cfg`` (as loaded, before :func:`settle_model` filled it)
    leaves null: :func:`settle_model`'s ``inferred`` for the run's first model, the same facts for each other
    model of a run (recorded per model in the benchmark report). No checks: :func:`settle_model` makes them."""
    return _unset(cfg, _facts(lm, models.signature(lm.proto, lm.path, cfg.model.input_name)))


def say_inferred(inferred: dict, path: str, log: Callable) -> None:
    """The one ``[model]`` line: what :func:`settle_model` read from the model (said once the run's inputs are loaded)."""
    if inferred:
        log(f"[model] {path}: " + ", ".join(f"{k} {v}" for k, v in inferred.items()) + " (read from the model)")


def preprocessing_for(cfg, adopt_documented: bool, loaded: list, log: Callable = print) -> tuple:
    """Settle the preprocessing a run uses and say where it came from.

    ``loaded`` are the run's models (``models.LoadedModel``), the one under test first. The config is
    used as given, with a warning for every model that documents something else
    (:mod:`quant.data.provenance`). Only with ``adopt_documented`` (benchmark, validate and package without
    ``--config``) the preprocessing the model under test documents replaces the defaults (a
    baseline's documentation is never adopted for it; documented layouts that do not fit the model's
    input are ignored with a warning). Returns ``(cfg, prov)``: the config the run uses (a copy when
    something was adopted) and ``prov``: ``{"source", "warnings", "config_notes"}`` for reports, plus per model (in ``loaded`` order) ``"documented"`` (:class:`provenance.Documented` or
    None) and ``"disagreements"`` (its warning or None); ``cfg.notes`` (what the INC-1.x key mapping
    decided) are logged here too.
    """
    for note in getattr(cfg, "notes", []):
        log(f"[config] {note}")
    docs = [(m, provenance.documented(m.proto, m.path, m.file_sha256)) for m in loaded]
    warnings = [f"{d.source}: {d.problem}" for _, d in docs if d is not None and d.problem]
    source = original = "the built-in defaults" if cfg.source.startswith("<") else f"config {cfg.source}"
    if adopt_documented and docs:
        m, first = docs[0]
        if first is None or first.preprocessing is None:
            log(f"[data] {m.path} documents no preprocessing; using {source}")
        else:
            try:
                models.signature(m.proto, m.path, cfg.model.input_name, first.preprocessing["layout"])
            except QuantError as e:
                warnings.append(f"{first.source}: layout {first.preprocessing['layout']} does not fit the model's input ({e}); ignored")
            else:
                adopted = {k: first.preprocessing[k] for k in ("scale", "mean", "std", "layout")}
                cfg = config_mod.replace(cfg, {"preprocessing": adopted}, noted=False)  # reported as the preprocessing source
                source = first.source
    used = cfg.preprocessing_dict()
    disagreements = [provenance.disagreement(d, used, source) if d is not None else None for _, d in docs]
    warnings += [w for w in disagreements if w]
    for w in warnings:
        log(f"[warning] {w}")
    if source != original:  # adopted from the model: say so (a config's own preprocessing is in every report)
        log(f"[data] preprocessing: {preprocessing.Preprocessing.of(used).text()} (from {source})")
    return cfg, {"source": source, "warnings": warnings, "config_notes": list(getattr(cfg, "notes", [])),
                 "documented": [d for _, d in docs], "disagreements": disagreements}
