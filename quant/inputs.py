"""What every workflow reads first: the config, the MNIST splits and the preprocessed test images."""

from __future__ import annotations

from typing import Callable

from . import config as config_mod, data


def load_config(cfg):
    return cfg if isinstance(cfg, config_mod.Config) else config_mod.load(cfg)


def config_file(cfg) -> str | None:
    """The YAML file a config was read from (None for the built-in defaults)."""
    return None if cfg.source.startswith("<") else cfg.source


def data_files(cfg, data_dir: str | None) -> list[tuple[str, object]]:
    """The MNIST files a run would read, gz and raw names (checked against its outputs before any work)."""
    root, source = data.resolve_data_dir(data_dir, cfg.dataset.root)
    return [(f"MNIST file (from {source})", root / (stem + ext)) for stem in data.CANONICAL_MD5 for ext in (".gz", "")]


def load_splits(cfg, data_dir: str | None, splits=("train", "test"), log: Callable = print) -> dict[str, data.Split]:
    root = data.ensure_data_dir(data_dir, cfg.dataset.root, download=cfg.dataset.download, log=log)
    return {s: data.load_split(root, s, verify=cfg.dataset.verify_md5) for s in splits}


def test_inputs(cfg, test: data.Split):
    p = cfg.preprocessing
    return data.preprocess(test.images, cfg.scale, p.mean, p.std, p.layout)
