"""What every workflow reads first: the config, the MNIST splits and the preprocessed test images."""

from __future__ import annotations

from typing import Callable

from . import config as config_mod, data, models, provenance
from .errors import QuantError


def load_config(cfg):
    from . import stop

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


def test_inputs(cfg, test: data.Split):
    p = cfg.preprocessing
    return data.preprocess(test.images, cfg.scale, p.mean, p.std, p.layout)


def preprocessing_for(cfg, adopt_documented: bool, loaded: list, log: Callable = print) -> dict:
    """Settle the preprocessing a run uses and say where it came from.

    ``loaded`` are the run's models (``models.LoadedModel``), the one under test first. The config is
    used as given, with a warning for every model that documents something else
    (:mod:`quant.provenance`). Only with ``adopt_documented`` (benchmark, validate and package without
    ``--config``) the preprocessing the model under test documents replaces the defaults in ``cfg``
    (a baseline's documentation is never adopted for it; documented layouts that do not fit the
    model's input are ignored with a warning). Returns ``{"source", "warnings", "config_notes"}`` for
    reports, plus per model (in ``loaded`` order) ``"documented"`` (:class:`provenance.Documented` or
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
                # only without a config: cfg is this run's own fresh defaults, not a caller's object
                cfg.preprocessing.__dict__.update({k: first.preprocessing[k] for k in ("scale", "mean", "std", "layout")})
                source = first.source
    used = cfg.preprocessing_dict()
    disagreements = [provenance.disagreement(d, used, source) if d is not None else None for _, d in docs]
    warnings += [w for w in disagreements if w]
    for w in warnings:
        log(f"[warning] {w}")
    if source != original:  # adopted from the model: say so (a config's own preprocessing is in every report)
        log(f"[data] preprocessing: {provenance.text(used)} (from {source})")
    return {"source": source, "warnings": warnings, "config_notes": list(getattr(cfg, "notes", [])),
            "documented": [d for _, d in docs], "disagreements": disagreements}
