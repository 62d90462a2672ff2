"""A zoo-style package of an int8 model: what the ONNX Model Zoo publishes for each model.

``NAME.tar.gz`` holds ``NAME/model.onnx`` and ``NAME/test_data_set_{0,1,2}/{input_0.pb,output_0.pb}``
(inputs preprocessed as the run's preprocessing says, outputs computed by onnxruntime), like the zoo's
``mnist-12-int8.tar.gz``. Beside it, ``NAME.card.md`` is the model-card fragment: the card's table row
(archive size, opset, top-1 error on the 10,000 test images), the exact preprocessing, the command that
made the model (from its tune report, when one is found beside it) and the archive's md5/sha256.

The archive is deterministic (sorted members, mtime 0, no owner names, gzip without a timestamp), so the
same model, data and preprocessing give the same bytes and the same checksums on any machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from quant import report
from quant.errors import UsageError, printable
from quant.files import Outputs, check_distinct, check_writable_target, read_regular_file, sha256_bytes
from quant.graph import models
from quant.runtime import evaluation
from quant.workflows import inputs, testdata

CARD_MARK = "<!-- model-card fragment for "  # the first line of every card this command writes
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
SUFFIX = ".tar.gz"


def names(output: str | os.PathLike) -> tuple[str, Path, Path]:
    """(NAME, archive path, card path) for ``--output_model NAME.tar.gz``."""
    p = Path(output)
    if not p.name.endswith(SUFFIX) or not NAME.fullmatch(p.name[:-len(SUFFIX)]):
        raise UsageError(f"--output_model {output}: must be NAME.tar.gz with NAME of letters, digits, '.', '_' or '-' (the zoo's form, "
                         "e.g. mnist-12-int8.tar.gz)")
    name = p.name[:-len(SUFFIX)]
    return name, p, p.with_name(f"{name}.card.md")


def _tar_gz(files: list[tuple[str, bytes | None]]) -> bytes:
    """A deterministic .tar.gz of ``(member path, bytes)``; None marks a folder."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files):
            info = tarfile.TarInfo(path)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def _tune_command(model_path: str, sha256: str) -> str | None:
    """The command recorded by the tune report beside the model, if it describes these exact bytes."""
    rep = report.default_report_paths(model_path, None)[0]  # where tune puts it by default
    try:
        doc = json.loads(read_regular_file(rep, "tune report", 16 << 20, UsageError))
        if doc.get("kind") == "tune" and doc.get("int8", {}).get("sha256") == sha256:
            return str(doc.get("command"))
    except (UsageError, ValueError, AttributeError, OSError):
        pass
    return None


@dataclass(frozen=True)
class PackageOptions:
    """How :func:`package_model` packages: ``count`` ``test_data_set_N`` folders (default: the config's
    ``output.test_data_sets``), ``command`` the command line the card records (default: this process's)."""

    count: int | None = None
    command: str | None = None

    def __post_init__(self):
        if self.count is not None and self.count < 1:
            raise UsageError(f"--count {self.count}: must be >= 1 (a zoo package holds test_data_set folders)")


@dataclass(frozen=True)
class CardFacts:
    """What the model card states: the archive's checksums, the measured top-1 and the preprocessing."""

    md5: str
    sha256: str
    accuracy: float
    preprocessing: dict
    source: str  # where the preprocessing came from
    sets: int  # test_data_set folders in the archive
    made_by: str | None  # the tune command that made the model, when its report is found
    command: str  # the command that wrote the card


def card(name: str, lm: models.LoadedModel, archive: bytes, facts: CardFacts) -> str:
    opset = models.opset_of(lm.proto)
    pre, accuracy = facts.preprocessing, facts.accuracy
    return "\n".join([
        f"{CARD_MARK}{name}, written by `{printable(facts.command, None)}` -->",
        "| Model | Download | Download (with sample test data) | ONNX version | Opset version | Top-1 error |",
        "|---|---|---|---|---|---|",
        f"| {name} | [{len(lm.raw) / 1024:.0f} KB](model/{name}.onnx) | [{len(archive) / 1024:.0f} KB](model/{name}{SUFFIX}) | "
        f"{onnx.__version__} | {opset} | {100 * (1 - accuracy):.2f}% |",
        "",
        f"- Top-1 error: measured on the 10,000 MNIST test images with the preprocessing below (onnxruntime, "
        f"top-1 accuracy {100 * accuracy:.2f} %).",
        f"- Preprocessing: input = (pixel * {pre['scale']} - {pre['mean']:g}) / {pre['std']:g}, pixels 0..255 of a 28x28 "
        f"grayscale image (white digit on black), layout {pre['layout']} (from {facts.source}).",
        f"- Made by: `{facts.made_by}`" if facts.made_by else "- Made by: unknown (no tune report for these bytes beside the model)",
        f"- Archive: `{name}{SUFFIX}`, {len(archive):,} bytes, md5 `{facts.md5}`, sha256 `{facts.sha256}`; holds `{name}/model.onnx` "
        f"(sha256 `{sha256_bytes(lm.raw)}`) and {facts.sets} `test_data_set_N` folders "
        "(onnxruntime reproduces every output_0.pb within rtol 1e-3).",
        "",
    ])


def package_model(input_model: str, output_model: str, config=None, data_dir: str | None = None, options: PackageOptions | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """Package ``input_model`` the zoo's way: ``output_model`` (``NAME.tar.gz``: ``NAME/model.onnx`` plus
    ``options.count`` ``test_data_set_N`` folders of test images run through the model) and the model-card
    fragment ``NAME.card.md`` beside it (size, md5, sha256, top-1 on the 10,000 test images, the
    preprocessing and how to reproduce the model).

    ``config``: a YAML path or :class:`quant.config.Config` for the preprocessing; None uses what the
    model's metadata documents, else the built-in defaults. ``data_dir``: the MNIST folder. ``options``:
    :class:`PackageOptions` (``count``, ``command``). Returns a summary dict (paths, bytes, md5, sha256,
    top-1, the card's text under ``"card_text"``).
    Raises UsageError/ConfigError (exit 2), InputError/ModelError (exit 4).
    """
    opts, log = options or PackageOptions(), log or logging.getLogger("quant").info
    t0 = time.perf_counter()
    name, archive_path, card_path = names(output_model)
    cfg = inputs.load_config(config)
    count = _count(cfg, opts)
    _check_outputs(input_model, output_model, cfg, data_dir, archive_path, card_path)
    lm = models.load(input_model, "input model")
    cfg, _, inferred = inputs.settle_model(cfg, lm)
    cfg, prov = inputs.preprocessing_for(cfg, config is None, [lm], log)
    sig = models.signature(lm.proto, lm.path, cfg.model.input_name, cfg.preprocessing.layout)
    test = inputs.load_splits(cfg, data_dir, splits=("test",), log=log)["test"]
    inputs.say_inferred(inferred, lm.path, log)
    x = inputs.test_inputs(cfg, test)
    acc = evaluation.accuracy(evaluation.Evaluator(x, test.labels, sig.input_name,
                                                   evaluation.effective_batch(sig.fixed_batch, 64)).outputs(lm.raw, lm.path), test.labels)
    picks = testdata.pick_indices(len(x), count, cfg.quantization.calibration.seed)
    sets = testdata.make_sets(lm.raw, sig.input_name, sig.output_name, x[picks], lm.path)
    with Outputs() as staged:
        archive = _tar_gz(_members(name, lm, sets))
        facts = CardFacts(hashlib.md5(archive).hexdigest(), sha256_bytes(archive), acc, cfg.preprocessing_dict(), prov["source"], len(sets),
                          _tune_command(lm.path, lm.file_sha256), opts.command or report.command_line())
        text = card(name, lm, archive, facts)
        staged.bytes(archive_path, archive)
        staged.text(card_path, text)
        staged.commit()
    summary = {"archive": str(archive_path), "card": str(card_path), "bytes": len(archive), "md5": facts.md5, "sha256": facts.sha256,
               "top1": acc, "test_data_sets": len(sets), "preprocessing": cfg.preprocessing_dict(), "preprocessing_source": prov["source"],
               "warnings": prov["warnings"], "inferred": inferred, "seconds": time.perf_counter() - t0, "card_text": text}
    log(f"[package] wrote {archive_path} ({len(archive):,} bytes, md5 {summary['md5']}, sha256 {summary['sha256']}) and {card_path}")
    return summary


def _count(cfg, opts: PackageOptions) -> int:
    """The number of test_data_set folders: the option, else the config's (which may not be 0 here)."""
    if opts.count is not None:
        return opts.count
    if cfg.output.test_data_sets < 1:
        raise UsageError(f"{cfg.source}: output.test_data_sets is 0; a zoo package holds test_data_set folders: give --count")
    return cfg.output.test_data_sets


def _check_outputs(input_model: str, output_model: str, cfg, data_dir: str | None, archive_path: Path, card_path: Path) -> None:
    """The archive and the card: writable, the card one this command wrote (or absent), neither an input."""
    for p in (archive_path, card_path):
        check_writable_target(p, "--output_model")
    if card_path.is_file() and not read_regular_file(card_path, "model card", 1 << 20, UsageError).startswith(CARD_MARK.encode()):
        raise UsageError(f"--output_model {output_model}: {card_path} exists and is not a model card this command wrote; move it or "
                         "choose another NAME")
    check_distinct(reads=[("--input_model", input_model), ("--config", inputs.config_file(cfg)), *inputs.data_files(cfg, data_dir)],
                   writes=[("--output_model (archive)", archive_path), ("--output_model (model card)", card_path)])


def _members(name: str, lm: models.LoadedModel, sets: list) -> list[tuple[str, bytes | None]]:
    """The archive's members: ``NAME/model.onnx`` and each ``test_data_set_N`` folder (None marks a folder)."""
    files: list[tuple[str, bytes | None]] = [(name, None), (f"{name}/model.onnx", lm.raw)]
    for i, (xb, yb) in enumerate(sets):
        files += [(f"{name}/test_data_set_{i}", None), (f"{name}/test_data_set_{i}/input_0.pb", xb),
                  (f"{name}/test_data_set_{i}/output_0.pb", yb)]
    return files
