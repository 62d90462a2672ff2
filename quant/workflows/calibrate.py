"""The calibration set as a file: materialize it, check it against the manifest, record a new definition."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

from quant import data
from quant.data.calib import BUILTIN_MANIFEST, array_path, manifest_entry, manifest_path, read_manifest, save_array, write_manifest
from quant.errors import UsageError
from quant.files import Outputs, check_distinct, check_writable_target
from quant.workflows import inputs


def build_calibration_set(output_dir: str | os.PathLike, config=None, data_dir: str | None = None,
                          add_to_manifest: str | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Materialize the calibration set ``config`` defines (train images picked by count and seed,
    preprocessed; a null ``preprocessing.layout`` gives NCHW) as ``output_dir/calib-<sha12>.npy``, checked
    against the manifest's sha256. ``add_to_manifest``: also record it under that name in the manifest
    the config names (``quantization.calibration.manifest``; never the built-in one); the array and
    the manifest are committed together. Returns the array's path. Raises UsageError/ConfigError (exit
    2), DataError (exit 4)."""
    log = log or logging.getLogger("quant").info
    cfg = inputs.load_config(config)
    folder = Path(output_dir)
    check_writable_target(folder / "calib-0123456789ab.npy", "--output_dir")
    mpath = manifest_path(cfg.quantization.calibration.manifest)
    if add_to_manifest:
        if mpath.resolve() == BUILTIN_MANIFEST.resolve():  # never write into the installed package
            raise UsageError("--add_to_manifest: set quantization.calibration.manifest to a manifest file of yours "
                             "(the built-in one is part of the package)")
        check_writable_target(mpath, "quantization.calibration.manifest")
    root = data.ensure_data_dir(data_dir, cfg.dataset.root, download=cfg.dataset.download, log=log)
    cs = inputs.calibration_set(cfg, data.load_split(root, "train", verify=cfg.dataset.verify_md5))
    manifest = ("quantization.calibration.manifest", mpath)
    check_distinct(reads=[("--config", inputs.config_file(cfg)), *inputs.data_files(cfg, data_dir)]
                   + ([] if add_to_manifest else [manifest]),
                   writes=[("the calibration array", array_path(cs, folder))] + ([manifest] if add_to_manifest else []))
    log(f"[calib] {cs.definition['count']} {cs.definition['split']} images, {cs.definition['source']}; sha256 {cs.sha256} checked")
    with Outputs() as staged:  # the array and the manifest entry, committed together
        out = save_array(cs, folder, staged)
        if add_to_manifest:
            entries = [e for e in (read_manifest(mpath) if mpath.exists() else []) if e.get("name") != add_to_manifest]
            write_manifest(mpath, entries + [manifest_entry(cs, add_to_manifest)], staged)
        staged.commit()
    if add_to_manifest:
        log(f"[calib] recorded as {add_to_manifest!r} in {mpath}")
    return out
