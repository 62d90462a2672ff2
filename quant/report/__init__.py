"""Reports: environment facts, JSON (schema-versioned) and Markdown rendering, atomic writing."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from quant.errors import UsageError, printable
from quant.files import Outputs

SCHEMA_VERSION = 1
INT8_CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "int8_flags": {f: f in flags for f in INT8_CPU_FLAGS}}


def environment(inc_version: str | None = None) -> dict:
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
    }
    if inc_version:
        env["neural_compressor"] = inc_version
    return env


def command_line() -> str:
    """The command as a user would type it again: ``python -m quant ...`` (the shell scripts pass their flags on)."""
    import shlex
    import sys

    return shlex.join(["python", "-m", "quant", *sys.argv[1:]])


def envelope(kind: str, config: dict, preprocessing: dict, prov: dict, inferred: dict, command: str | None,
             inc_version: str | None = None) -> dict:
    """What every report starts with, one form for tune, benchmark and validate: schema version, kind, the
    command, the environment (versions, CPU and its int8 flags), the config (``config``: path and sha256;
    the notes of values not from the file), the preprocessing used and where it came from (``prov``:
    :func:`quant.workflows.inputs.preprocessing_for`), the values read from the model, and the warnings."""
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "command": command or command_line(),
            "environment": environment(inc_version),
            "config": {**config, "notes": prov["config_notes"]},
            "preprocessing": preprocessing, "preprocessing_source": prov["source"], "inferred": inferred,
            "warnings": prov["warnings"]}


def default_report_paths(model_path: str | os.PathLike, report: str | None, kind: str = "report",
                         folder: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(json, markdown) report paths: ``--report`` (its suffix replaced), else ``<model stem>.<kind>.json/.md``
    in ``folder`` (benchmark and validate: the working folder, never the folder of someone else's model),
    or beside the model when ``folder`` is None (tune: beside the model it wrote)."""
    if report:
        base = Path(report)
        try:
            special = base.is_dir() or (base.exists() and not base.is_file())
        except OSError:  # a name too long: check_writable_target says so
            special = False
        if base.name in ("", ".", "..") or str(report).endswith(os.sep) or special:
            # the reports are <report>.json/.md: "/", ".", "~" or /dev/null would put them beside or in system folders
            raise UsageError(f"--report {report}: expected a file path such as reports/run.json (a folder or device was given)")
        paths = base.with_suffix(".json"), base.with_suffix(".md")
    else:
        m = Path(model_path)
        stem = m.name[:-5] if m.name.endswith(".onnx") else m.name
        where = m.parent if folder is None else Path(folder)
        paths = where / f"{stem}.{kind}.json", where / f"{stem}.{kind}.md"
    return paths


# how the reports this toolkit writes begin (JSON: the envelope's first key; Markdown: the title)
_REPORT_STARTS = {".json": (b'{\n  "schema_version"',), ".md": (b"# Tuning report", b"# Benchmark", b"# Validation report")}
_FIGURE_MARK = b"Software\x00mnist-quant"  # the tEXt chunk right after a figure's PNG header (plots.SOFTWARE)


def is_replaceable(path: Path) -> bool:
    """A report may replace ``path`` only when nothing is there or it is a report this toolkit wrote (a user's
    notes.md beside ``--report=notes.json`` are never overwritten). Other kinds of file are judged by the
    output checks (folders, devices)."""
    try:
        if not path.is_file():
            return True
        with open(path, "rb") as f:
            head = f.read(128)
    except OSError:
        return True  # not readable: the output checks say so
    if path.suffix == ".png":
        return not head or _FIGURE_MARK in head
    starts = _REPORT_STARTS.get(path.suffix)
    return not head or starts is None or head.startswith(starts)


def check_replaceable(path: Path | None, what: str = "--report") -> Path | None:
    """UsageError (exit 2) unless :func:`is_replaceable`; returns ``path``. Called after the collision checks,
    which name an input the path would overwrite more precisely."""
    if path is not None and not is_replaceable(Path(path)):
        kind = "figure or report" if Path(path).suffix == ".png" else "report"
        raise UsageError(f"{what} {path}: exists and is not a {kind} this toolkit wrote; move it or choose another report path")
    return path


def wanted(reports: bool | None, report_path: str | None, configured: str | None) -> bool:
    """Whether a run writes report files: ``reports`` when given (tune's command line passes True), else only
    when a path is asked for (``report_path`` or the config's ``output.report``, ``configured``)."""
    return bool(report_path or configured) if reports is None else reports


def write(json_path: Path, doc: dict, md_path: Path, markdown: str, staged: Outputs | None = None) -> None:
    """The JSON and Markdown reports, committed together (with the run's other ``staged`` outputs if given)."""
    with Outputs() as own:
        out = staged or own
        out.text(json_path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
        out.text(md_path, markdown)
        if staged is None:
            own.commit()


def escaped(doc):
    """A copy of a report document with every string (keys too) passed through :func:`errors.printable`, for
    rendering: no value (a path, a model's text) can start a new Markdown line. Objects shared inside the
    document stay shared in the copy (renderers compare entries by identity)."""
    memo: dict[int, object] = {}

    def walk(v):
        if isinstance(v, str):
            return printable(v, None)
        if not isinstance(v, (dict, list, tuple)):
            return v
        if id(v) in memo:
            return memo[id(v)]
        if isinstance(v, dict):
            out: dict = {}
            memo[id(v)] = out
            out.update((walk(k), walk(x)) for k, x in v.items())
        elif isinstance(v, list):
            out = []
            memo[id(v)] = out
            out.extend(walk(x) for x in v)
        else:
            out = tuple(walk(x) for x in v)
            memo[id(v)] = out
        return out

    return walk(doc)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(printable(c, None) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(printable(c, None) for c in r) + " |" for r in rows]  # a cell is one line
    return "\n".join(out)


def _ops(summary: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in summary.items()) or "none"


def warning_lines(doc: dict) -> list[str]:
    """Warnings (preprocessing that contradicts what a model documents) as Markdown quote lines."""
    return [line for w in doc.get("warnings") or [] for line in (f"> **Warning:** {printable(w, None)}", "")]


def provenance_lines(doc: dict) -> list[str]:
    """Where the preprocessing came from and what the config mapping decided (INC-1.x recipe keys)."""
    out = [f"- preprocessing source: {doc['preprocessing_source']}"] if doc.get("preprocessing_source") else []
    notes = (doc.get("config") or {}).get("notes") or []
    return out + [f"- config: {n}" for n in notes]


def render_tune(doc: dict) -> str:
    doc = escaped(doc)
    f, q = doc["fp32"], doc["int8"]
    crit = doc["criterion"]
    cal = doc["calibration"]
    lines = [
        f"# Tuning report: {doc['model_name']}",
        "",
        f"**{'PASSED' if doc['passed'] else 'FAILED'}**: int8 top-1 {pct(q['accuracy'])} vs fp32 {pct(f['accuracy'])} "
        f"(drop {100 * doc['accuracy_drop']:.2f} pp; criterion {crit['kind']} {crit['tolerance']:g}, "
        f"i.e. int8 >= {pct(crit['min_accuracy'])}).",
        "",
        *warning_lines(doc),
        md_table(["", "fp32", "int8", "int8 / fp32"], [
            ["top-1 (10k test images)", pct(f["accuracy"]), pct(q["accuracy"]), f"{q['accuracy'] / f['accuracy']:.4f}"],
            ["file bytes", f"{f['bytes']:,}", f"{q['bytes']:,}", f"{q['bytes'] / f['bytes']:.3f}"],
            ["opset", f["opset"], q["opset"], ""],
            ["test images with tied top-1 outputs", f.get("tied_top1_images", ""), q.get("tied_top1_images", ""), ""],
        ]),
        "",
        f"- int8 ops (as onnxruntime runs the model): {_ops(q['ops']['int8'])}",
        f"- fp32 ops: {_ops(q['ops']['fp32'])}",
        f"- conversions: {_ops(q['ops']['convert'])}",
        f"- format: {doc['quantization']['format']}, per-channel: {doc['quantization']['per_channel']}",
        *([f"- latency-aware choice (objective performance): fp32 layers {doc['latency_aware']['nodes_kept_fp32'] or 'none'}; "
           f"int8/fp32 paired score {doc['latency_aware']['score']:.2f}x over {len(doc['latency_aware']['candidates'])} candidates"
           + ("" if doc['latency_aware']['beats_fp32'] else " (no int8 candidate beats fp32 on this machine)")]
          if doc.get("latency_aware") else []),
        *([f"- precision plan: {', '.join(f'{k} fp32 ({v})' for k, v in doc['precision_plan']['keep_fp32'].items()) or 'every layer int8'}"]
          if doc.get("precision_plan") else []),
        *([f"- finishing: {'; '.join(doc['finishing'])}"] if doc.get("finishing") else []),
        f"- graph preparation before quantizing: {'; '.join(doc['preparation']['steps']) or 'none needed'} "
        f"(int8 input shape {doc['preparation']['input_shape']})",
        f"- tuning: {doc['tuning']['trials']} trial(s), strategy {doc['tuning']['strategy']}, objective {doc['tuning']['objective']}, "
        f"seed {doc['tuning']['random_seed']}, {doc['wall_seconds']:.1f} s wall",
        f"- test data: {doc['test_data']['sets']} test_data_set folders in `{doc['test_data']['folder']}`" if doc.get("test_data")
        else "- test data: none written (output.test_data_sets: 0)",
        f"- calibration set: {cal['count']} {cal['split']} images, seed {cal['seed']}, {cal['source']}, sha256 `{cal['sha256'][:16]}…`",
        f"- preprocessing: {doc['preprocessing']} (written into the int8 model's metadata_props)",
        *provenance_lines(doc),
        f"- input model: `{f['path']}` (sha256 `{f['sha256'][:16]}…`)",
        f"- output model: `{q['path']}` (sha256 `{q['sha256'][:16]}…`)",
        f"- config: `{doc['config']['path']}` (sha256 `{doc['config']['sha256'][:16]}…`)",
        f"- versions: neural-compressor {doc['environment'].get('neural_compressor')}, onnxruntime {doc['environment']['onnxruntime']}, "
        f"onnx {doc['environment']['onnx']}, numpy {doc['environment']['numpy']}, Python {doc['environment']['python']}",
        f"- command: `{printable(doc['command'], None)}`",
        *([f"- plots: {', '.join(doc['plots'].values()) if isinstance(doc['plots'], dict) else doc['plots']}"] if doc.get("plots") else []),
        "",
    ]
    return "\n".join(lines)


def render_tune_failed(doc: dict) -> str:
    """The Markdown report of a tune that missed its accuracy criterion: why, and every trial neural-compressor
    evaluated (trial 0 is the fp32 model); no int8 model was written."""
    doc = escaped(doc)
    f, crit, t, cal = doc["fp32"], doc["criterion"], doc["tuning"], doc["calibration"]
    rows = [[r["trial"], "fp32" if r["trial"] == 0 else "int8", pct(r["accuracy"]), len(r["fp32_layers"]), len(r["int8_layers"])]
            for r in t["per_trial"]]
    lines = [
        f"# Tuning report: {doc['model_name']}",
        "",
        f"**FAILED**: {doc['failure']}",
        "",
        *warning_lines(doc),
        (f"Best int8 top-1 {pct(doc['best_int8_accuracy'])} vs fp32 {pct(f['accuracy'])} (criterion {crit['kind']} {crit['tolerance']:g}, "
         f"i.e. int8 >= {pct(crit['min_accuracy'])}). No int8 model and no test data were written."),
        "",
        *([md_table(["trial", "model", "top-1", "fp32 layers", "int8 layers"], rows), ""] if rows else []),
        (f"- tuning: {t['trials']} trial(s), strategy {t['strategy']}, objective {t['objective']}, seed {t['random_seed']}, "
         f"max trials {t['max_trials']}, timeout {t['timeout']}, {doc['wall_seconds']:.1f} s wall"),
        (f"- format: {doc['quantization']['format']}, per-channel: {doc['quantization']['per_channel']}, "
         f"7-bit ranges (reduce_range): {doc['quantization']['reduce_range']}"),
        f"- calibration set: {cal['count']} {cal['split']} images, seed {cal['seed']}, {cal['source']}, sha256 `{cal['sha256'][:16]}…`",
        f"- preprocessing: {doc['preprocessing']}",
        *provenance_lines(doc),
        f"- input model: `{f['path']}` (sha256 `{f['sha256'][:16]}…`)",
        f"- config: `{doc['config']['path']}` (sha256 `{doc['config']['sha256'][:16]}…`)",
        f"- command: `{printable(doc['command'], None)}`",
        "",
    ]
    return "\n".join(lines)
