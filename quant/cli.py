"""Command line: ``python -m quant SUB-COMMAND --flag=value ...`` (the zoo's underscore flag style).

Each sub-command is a thin call of one function of the Python API (:mod:`quant`), imported from the
workflow module that defines it when the sub-command runs, so the command line and Python behave alike
and ``--help`` loads no workflow. One vocabulary across sub-commands: ``--input_model``, ``--baseline_model``,
``--output_model`` (a file the command produces), ``--output_dir`` (a folder it produces), ``--report``,
``--data_dir``, ``--config``, ``--json``, and ``--no_X`` for a negation; older spellings still work
with a one-line deprecation notice (:data:`DEPRECATED`).

Streams: stdout carries the report (Markdown, or JSON with ``--json``); stderr carries progress and
one closing verdict line (``--json``: nothing but an error line).

Exit codes: 0 success; 1 unexpected error (a bug); 2 usage or config error; 3 accuracy goal not met;
4 invalid input model or data; 5 the system refused a path (disk full, name too long); 130 Ctrl-C,
129 SIGHUP, 143 SIGTERM. Errors print one line on stderr (a traceback only with --verbose).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import signal
import sys
import threading
import traceback
from typing import Callable

from quant import __version__
from quant.errors import (
    EXIT_SYSTEM,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    STOP_SIGNALS,
    AccuracyError,
    Interrupted,
    QuantError,
    UsageError,
    closing_line,
    handle_signals,
    printable,
    restore_signals,
)

PATH_FLAGS = {"--input_model", "--baseline_model", "--output_model", "--config", "--data_dir", "--report", "--models_dir",
              "--output_dir", "--test_data"}

# old spelling -> (new spelling, the sub-commands that had it); still accepted, with a one-line notice
DEPRECATED = {
    "--output": ("--output_model", ("package",)),
    "--out_dir": ("--output_dir", ("calib",)),
    "--no-dynamic_batch": ("--no_dynamic_batch", ("tune", "benchmark")),
}

COMMON_HELP = {
    "--input_model": "ONNX model to read",
    "--baseline_model": "the fp32 model to compare against",
    "--data_dir": "MNIST folder (else config dataset.root, $MNIST_DIR, the user cache)",
    "--report": "report path NAME.json: NAME.json, NAME.md and the figures NAME.<figure>.png are written "
                "(tune: default beside --output_model; benchmark and validate write no files without it)",
    "--json": "print the report as JSON on stdout instead of Markdown; stderr stays quiet except for an error",
    "--verbose": "a traceback on errors (the exit code stays the same)",
    "--no_plots": "no PNG figures beside the report (default: written when matplotlib is installed, "
                  "pip install 'mnist-quant[plots]')",
    "--mode": "all (default): size, accuracy and latency side by side, and the gate; "
              "accuracy: size, accuracy and the gate; performance: size and latency only (no accuracy, no gate)",
}
CONFIG_HELP = "YAML config (default: the built-in defaults, identical to mnist.yaml: python -m quant config)"
CONFIG_DOCUMENTED_HELP = ("YAML config (default: the preprocessing the model documents in its metadata, else the built-in "
                          "defaults: python -m quant config)")


LINE_LIMIT = 20_000  # characters of one log or error line; untrusted values inside are cut far shorter (errors.PRINT_LIMIT)


def log(msg: str) -> None:
    """One line on stderr: control characters escaped (a model's metadata or a file name cannot forge lines)."""
    print(printable(msg, LINE_LIMIT), file=sys.stderr, flush=True)


def quiet(_msg: str) -> None:
    pass


def _path(value: str) -> str:
    if not value.strip():  # "" would mean the working folder to pathlib: never what was meant
        raise argparse.ArgumentTypeError("expected a path, got an empty value")
    return value


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: expected an integer or comma-separated integers") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def add_argument(self, *names, **kwargs):
        if PATH_FLAGS.intersection(names):  # every sub-command's path flags refuse an empty value
            kwargs.setdefault("type", _path)
        if not kwargs.get("help") and names and names[0] in COMMON_HELP:  # one wording for flags many commands share
            kwargs["help"] = COMMON_HELP[names[0]]
        return super().add_argument(*names, **kwargs)

    def parse_args(self, args=None, namespace=None):
        """argparse, plus a did-you-mean for a mistyped flag (``--data-dir``): argparse names it only."""
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            sub = self._subparsers._group_actions[0].choices.get(getattr(ns, "command", None)) if self._subparsers else None
            known = [o for a in (sub or self)._actions for o in a.option_strings]
            flag = extra[0].split("=", 1)[0]
            hint = difflib.get_close_matches(flag.replace("-", "_").replace("__", "--", 1), known, n=1, cutoff=0.6)
            (sub or self).error(f"unrecognized argument {extra[0]!r}" + (f" (did you mean {hint[0]}?)" if hint else ""))
        return ns


def renamed(argv: list[str], notice: Callable[[str], None]) -> list[str]:
    """``argv`` with deprecated flag spellings (:data:`DEPRECATED`) replaced, one notice per flag."""
    command = next((a for a in argv if not a.startswith("-")), None)
    given = {a.partition("=")[0] for a in argv}
    for old, (new, commands) in DEPRECATED.items():
        if command in commands and old in given and new in given:
            raise UsageError(f"{old} and {new} are one flag ({old} is its old spelling): give it once")
    out, told = [], set()
    for a in argv:
        name, eq, value = a.partition("=")
        new, commands = DEPRECATED.get(name, (None, ()))
        if new and command in commands:
            if name not in told:
                notice(f"warning: {name} is deprecated; use {new}")
                told.add(name)
            a = new + eq + value
        out.append(a)
    return out


def _common(p: argparse.ArgumentParser, config_help: str = CONFIG_HELP) -> None:
    p.add_argument("--input_model", required=True)
    p.add_argument("--config", default=None, help=config_help)
    p.add_argument("--data_dir", default=None)


def _dynamic_batch(p: argparse.ArgumentParser, help_on: str, default: bool | None) -> None:
    p.add_argument("--dynamic_batch", dest="dynamic_batch", action="store_const", const=True, default=default, help=help_on)
    p.add_argument("--no_dynamic_batch", dest="dynamic_batch", action="store_const", const=False, help="the opposite of --dynamic_batch")


def _tolerances(p) -> None:
    from quant.config import ATOL, DEFAULT_ATOL, DEFAULT_RTOL, RTOL, range_text

    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (range {range_text(RTOL)}; default {DEFAULT_RTOL:g})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (range {range_text(ATOL)}; default {DEFAULT_ATOL:g})")


def _range(key: str) -> str:
    """Help text for a flag overriding config ``key``: the key's range (:func:`quant.config.check_value` enforces it)."""
    from quant.config import leaf, range_text

    return f"range {range_text(leaf(key))}"


def _closing_flags(p: argparse.ArgumentParser, plots: bool = False, json: bool = True, verbose_help: str | None = None) -> None:
    """The flags that end most sub-commands, in this order: --no_plots, --json, --verbose."""
    if plots:
        p.add_argument("--no_plots", action="store_true")
    if json:
        p.add_argument("--json", action="store_true")
    p.add_argument("--verbose", action="store_true", help=verbose_help)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m quant", description="Produce and validate int8 ONNX MNIST classifiers.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"mnist-quant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_tune_parser, _benchmark_parser, _validate_parser, _package_parser, _calib_parser, _write_test_data_parser,
                _check_test_data_parser, _fetch_parser, _config_parser):
        add(sub)
    return parser


def _tune_parser(sub) -> None:
    t = sub.add_parser("tune", help="tune an fp32 model into int8 with neural-compressor", allow_abbrev=False)
    _common(t)
    t.add_argument("--output_model", required=True, help="where the int8 model is written (atomically); its reports and test "
                   "data go beside it")
    t.add_argument("--report", default=None)
    t.add_argument("--objective", choices=("accuracy", "performance"), default=None,
                   help="override tuning.objective (performance = latency-aware search)")
    _dynamic_batch(t, "give the int8 model a symbolic batch dimension (default: config model.dynamic_batch, true)", None)
    _closing_flags(t, plots=True, verbose_help="neural-compressor's full logging, and a traceback on errors")
    t.set_defaults(func=cmd_tune)


def _benchmark_parser(sub) -> None:
    b = sub.add_parser("benchmark", help="size, accuracy and latency of int8 vs fp32 side by side; accuracy gate", allow_abbrev=False)
    b.add_argument("--input_model", action="append", required=True,
                   help="model to measure; give the flag once per model, or several comma-separated (a value naming an "
                        "existing file is taken whole, commas and all)")
    b.add_argument("--config", default=None, help=CONFIG_DOCUMENTED_HELP)
    b.add_argument("--data_dir", default=None)
    b.add_argument("--baseline_model", default=None,
                   help="fp32 model to compare against (measured in the same run); with accuracy measured, every model is gated against it")
    b.add_argument("--mode", default="all", choices=("all", "accuracy", "performance"))
    b.add_argument("--max_accuracy_drop", type=float, default=None, help="the gate's budget as a fraction "
                   f"({_range('tuning.accuracy_criterion')}; default: the config's tuning.accuracy_criterion)")
    _timing_flags(b)
    b.add_argument("--profile", action="store_true", help="add onnxruntime's per-op kernel times for every model and batch size")
    _dynamic_batch(b, "rewrite fixed-batch models (the zoo's batch of 1) to a symbolic batch in memory, so all run at "
                      "--batch_size (default: off)", False)
    b.add_argument("--report", default=None)
    _closing_flags(b, plots=True)
    b.set_defaults(func=cmd_benchmark)


def _timing_flags(b: argparse.ArgumentParser) -> None:
    b.add_argument("--batch_size", type=_int_list, default=None, help="images per timed inference; several comma-separated "
                   f"(e.g. 1,64) are timed in turn ({_range('benchmark.batch_size')} each; default: config benchmark.batch_size)")
    b.add_argument("--iterations", type=int, default=None,
                   help=f"timed inferences per model ({_range('benchmark.iterations')}; default: config benchmark.iterations)")
    b.add_argument("--warmup", type=int, default=None,
                   help=f"untimed inferences per model first ({_range('benchmark.warmup')}; default: config benchmark.warmup)")
    b.add_argument("--threads", type=int, default=None,
                   help=f"onnxruntime intra-op threads ({_range('benchmark.threads')}; default: config benchmark.threads, 1)")


def _validate_parser(sub) -> None:
    from quant.config import PORTABILITY_SAMPLES, SAMPLES, range_text

    v = sub.add_parser("validate", help="check an int8 model against its fp32 baseline: structure, input range, accuracy, "
                       "per-layer error, CPU portability, test data", allow_abbrev=False)
    _common(v, CONFIG_DOCUMENTED_HELP)
    v.add_argument("--baseline_model", required=True, help="the fp32 model the int8 model was made from")
    v.add_argument("--test_data", nargs="+", default=None, metavar="DIR",
                   help="test_data_set_N folders (or folders of them) to check; default: <model>_test_data/ if present")
    v.add_argument("--samples", type=int, default=SAMPLES.default,
                   help=f"test images for the per-layer error (range {range_text(SAMPLES)}; default {SAMPLES.default})")
    v.add_argument("--portability_samples", type=int, default=PORTABILITY_SAMPLES.default,
                   help="test images for the CPU-portability check against the exact integer reference "
                        f"(range {range_text(PORTABILITY_SAMPLES)}; default {PORTABILITY_SAMPLES.default}, ~10 ms each)")
    _tolerances(v)
    v.add_argument("--report", default=None)
    _closing_flags(v)
    v.set_defaults(func=cmd_validate)


def _package_parser(sub) -> None:
    from quant.config import leaf

    p = sub.add_parser("package", help="zoo-style NAME.tar.gz (NAME/model.onnx + test_data_set_N) and NAME.card.md", allow_abbrev=False)
    _common(p, CONFIG_DOCUMENTED_HELP)
    p.add_argument("--output_model", required=True, help="NAME.tar.gz to write; NAME.card.md (the model-card fragment) goes beside it")
    p.add_argument("--count", type=int, default=None,
                   help=f"test_data_set folders (range 1..{leaf('output.test_data_sets').max}; default: config output.test_data_sets, 3)")
    _closing_flags(p)
    p.set_defaults(func=cmd_package)


def _calib_parser(sub) -> None:
    c = sub.add_parser("calib", help="materialize the calibration set as a .npy and check its sha256", allow_abbrev=False)
    c.add_argument("--config", default=None, help=CONFIG_HELP)
    c.add_argument("--data_dir", default=None)
    c.add_argument("--output_dir", required=True, help="folder for calib-<sha256 prefix>.npy (created if missing)")
    c.add_argument("--add_to_manifest", metavar="NAME", default=None,
                   help="record this set under NAME in the manifest the config names (quantization.calibration.manifest)")
    _closing_flags(c, json=False)
    c.set_defaults(func=cmd_calib)


def _write_test_data_parser(sub) -> None:
    from quant.config import leaf

    w = sub.add_parser("write-test-data", help="write zoo-style test_data_set_N folders for a model", allow_abbrev=False)
    _common(w)
    w.add_argument("--output_dir", required=True, help="the test-data folder, replaced whole (it may hold only earlier test data)")
    w.add_argument("--count", type=int, default=None,  # the key's range, but 0 (no sets) leaves nothing to write
                   help=f"number of sets (range 1..{leaf('output.test_data_sets').max}; default: config output.test_data_sets)")
    _closing_flags(w, json=False)
    w.set_defaults(func=cmd_write_test_data)


def _check_test_data_parser(sub) -> None:
    k = sub.add_parser("check-test-data", help="run a model on zoo-style test_data_set_N folders and compare outputs", allow_abbrev=False)
    k.add_argument("--input_model", required=True)
    k.add_argument("--test_data", nargs="+", required=True, metavar="DIR", help="test_data_set_N folders or folders of them")
    k.add_argument("--config", default=None, help="for model.input_name (default: read from the model)")
    _tolerances(k)
    _closing_flags(k)
    k.set_defaults(func=cmd_check_test_data)


def _fetch_parser(sub) -> None:
    f = sub.add_parser("fetch", help="download MNIST and the zoo's mnist-12.onnx with checksum verification", allow_abbrev=False)
    f.add_argument("--data_dir", default=None, help="MNIST folder (default: $MNIST_DIR or the user cache)")
    f.add_argument("--models_dir", default=None, help="folder for mnist-12.onnx (default: the user cache)")
    _closing_flags(f, json=False)
    f.set_defaults(func=cmd_fetch)


def _config_parser(sub) -> None:
    g = sub.add_parser("config", help="print the default config (the packaged mnist.yaml) to start your own from", allow_abbrev=False)
    g.set_defaults(func=cmd_config)


# ------------------------------------------------------------------------------ sub-commands
def _progress(args) -> Callable[[str], None]:
    return quiet if getattr(args, "json", False) else log


def _print_report(doc: dict, args, exit_code: int = 0) -> None:
    """The report on stdout: Markdown, or with --json the report as JSON (plus the exit code)."""
    if getattr(args, "json", False):
        print(json.dumps({k: v for k, v in doc.items() if k not in ("markdown", "card_text")} | {"exit_code": exit_code}, indent=2))
    else:
        print(doc.get("markdown", doc.get("card_text", "")), end="" if doc.get("markdown", "").endswith("\n") else "\n")


def _reporting(func: Callable[[], dict], args) -> dict:
    """Run a workflow; a failed gate or check still prints its report before the one-line error."""
    try:
        return func()
    except AccuracyError as e:
        if isinstance(e.details, dict) and ("markdown" in e.details or "checks" in e.details):
            _print_report(e.details, args, e.exit_code)
        raise


def _report_options(args, write: bool | None = None):
    from quant.workflows.options import ReportOptions

    return ReportOptions(path=args.report, write=write, plots=not getattr(args, "no_plots", True))


def _tune_options(args):
    from quant.workflows.tune import TuneOptions

    return TuneOptions(objective=args.objective, dynamic_batch=args.dynamic_batch, verbose=args.verbose)


def cmd_tune(args) -> int:
    from quant.workflows.tune import tune_model

    say = _progress(args)
    doc = _reporting(lambda: tune_model(args.input_model, args.output_model, config=args.config, data_dir=args.data_dir,
                                        options=_tune_options(args), report=_report_options(args, write=True), log=say), args)
    _print_report(doc, args)
    if doc.get("reports"):
        say(f"[tune] reports: {doc['reports']['json']}, {doc['reports']['markdown']}")
    say(f"tune PASSED: int8 top-1 {100 * doc['int8']['accuracy']:.2f} % vs fp32 {100 * doc['fp32']['accuracy']:.2f} % "
        f"(criterion {doc['criterion']['kind']} {doc['criterion']['tolerance']:g}); wrote {args.output_model}")
    return 0


def _benchmark_options(args):
    from quant.workflows.benchmark import BenchmarkOptions

    sizes = args.batch_size or [None]
    return BenchmarkOptions(mode=args.mode, batch_size=sizes[0], extra_batch_sizes=tuple(sizes[1:]), iterations=args.iterations,
                            warmup=args.warmup, threads=args.threads, max_accuracy_drop=args.max_accuracy_drop,
                            dynamic_batch=args.dynamic_batch, profile=args.profile, progress=not args.json)


def cmd_benchmark(args) -> int:
    from quant.workflows.benchmark import benchmark_models

    say = _progress(args)
    given = [m for v in args.input_model for m in ([v] if os.path.isfile(v) else v.split(",")) if m]
    if not given:
        raise UsageError("--input_model: at least one model is required")
    doc = _reporting(lambda: benchmark_models(given, args.baseline_model, config=args.config, data_dir=args.data_dir,
                                              options=_benchmark_options(args), report=_report_options(args), log=say), args)
    _print_report(doc, args)
    if doc.get("reports"):
        say(f"[benchmark] reports: {doc['reports']['json']}, {doc['reports']['markdown']}")
    if doc.get("gate"):
        say(doc["gate"]["verdict"])
    else:
        say("no gate: " + ("--mode=performance measures no accuracy" if args.mode == "performance" else "no --baseline_model given"))
    return 0


def _validate_options(args):
    from quant.workflows.validate import ValidateOptions

    return ValidateOptions(test_data=args.test_data, samples=args.samples, portability_samples=args.portability_samples,
                           rtol=args.rtol, atol=args.atol)


def cmd_validate(args) -> int:
    from quant.workflows.validate import validate_model

    say = _progress(args)
    doc = _reporting(lambda: validate_model(args.input_model, args.baseline_model, config=args.config, data_dir=args.data_dir,
                                            options=_validate_options(args), report=_report_options(args), log=say), args)
    _print_report(doc, args)
    if doc.get("reports"):
        say(f"[validate] reports: {doc['reports']['json']}, {doc['reports']['markdown']}")
    counts = {}
    for c in doc["checks"]:
        counts[c["status"]] = counts.get(c["status"], 0) + 1
    say("validation PASSED: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def _package_options(args):
    from quant.workflows.package import PackageOptions

    return PackageOptions(count=args.count)


def cmd_package(args) -> int:
    from quant.workflows.package import package_model

    say = _progress(args)
    doc = package_model(args.input_model, args.output_model, config=args.config, data_dir=args.data_dir, options=_package_options(args),
                        log=say)
    _print_report(doc, args)
    return 0


def cmd_calib(args) -> int:
    from quant.workflows.calibrate import build_calibration_set

    print(build_calibration_set(args.output_dir, config=args.config, data_dir=args.data_dir,
                                add_to_manifest=args.add_to_manifest, log=log))
    return 0


def cmd_write_test_data(args) -> int:
    from quant.workflows.testdata import write_test_data

    print(write_test_data(args.input_model, args.output_dir, config=args.config, data_dir=args.data_dir, count=args.count, log=log))
    return 0


def cmd_check_test_data(args) -> int:
    from quant.workflows.testdata import check_test_data

    doc = _reporting(lambda: check_test_data(args.input_model, args.test_data, config=args.config, rtol=args.rtol, atol=args.atol), args)
    _print_report(doc, args)
    _progress(args)(doc["verdict"])
    return 0


def cmd_fetch(args) -> int:
    from quant.data import fetch

    print(fetch(args.data_dir, args.models_dir, log=log))
    return 0


def cmd_config(args) -> int:
    from quant.config import DEFAULT_CONFIG

    sys.stdout.write(DEFAULT_CONFIG.read_text())
    return 0


# ------------------------------------------------------------------------------ entry point
_received: list[int] = []  # stop signals seen by main()'s handlers, for errors a library made of them
main_started = False  # main() has installed its handlers (python -m quant's start-up handlers then stand aside)


_finished = False  # main() has its result: a stop signal arriving now changes nothing


def _raise_interrupted(signum, frame):
    """A stop signal ends the run once: a repeated one (a second Ctrl-C, SIGTERM after SIGINT) while the first is
    being handled changes nothing, so cleanup and the closing line are never cut short (the watcher ends a run
    that has not ended 2 s after the first: quant.stop)."""
    if _received or _finished:
        return
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def _ignore_late(signum, frame):
    """Once the run is over (its line being printed, handlers being restored) a stop signal changes nothing."""


def _stopped(signum: int, committed: bool) -> tuple[str, int]:
    """The closing line after a stop signal and its exit code: it says whether the outputs were written."""
    return closing_line(signum, committed), 128 + signum


def main(argv: list[str] | None = None) -> int:
    from quant import files, stop

    # SIGTERM (a service manager's stop, ``kill``) and SIGHUP (a closed terminal) end the run like Ctrl-C's
    # KeyboardInterrupt: cleanup runs, one line, exit 128 + signal. Installed first, so a signal during start-up
    # ends the same way; the watcher also stops onnxruntime's native runs at once (quant.stop)
    global main_started, _finished
    blocked = _block_stop_signals()  # until the handlers, the watcher and the try below are all in place
    del _received[:]
    _finished = False
    previous = handle_signals(_raise_interrupted)
    unraisable, sys.unraisablehook = sys.unraisablehook, _unraisable
    _excepthooks[:] = [sys.excepthook]
    sys.excepthook = _excepthook
    main_started = True  # python -m quant's start-up handlers stand aside from now on (quant.__main__)
    wakeup = stop.watch_signals()
    commits = files.commits()
    try:
        try:
            _unblock(blocked)  # a signal that came meanwhile is acted on here, inside the try
            code = _dispatch(argv, commits)
            _finished = True  # the run has said its last word: a later signal changes nothing
            return code
        except KeyboardInterrupt:  # a signal between the end of _dispatch and the line above
            handle_signals(_ignore_late)
            line, code = _stopped(signal.SIGINT, files.commits() > commits)
        except Interrupted as e:
            handle_signals(_ignore_late)
            line, code = _stopped(e.signum, e.written or files.commits() > commits)
        print(line, file=sys.stderr)
        return code
    finally:
        _finished = True
        handle_signals(_ignore_late)
        stop.unwatch_signals(wakeup)
        restore_signals(previous)
        sys.unraisablehook = unraisable
        sys.excepthook = _excepthooks[0]
        _unblock(blocked)


_excepthooks: list = []  # the sys.excepthook main() replaced


def _excepthook(kind, value, tb) -> None:
    """A stop signal's exception that C code printed instead of passing it on (PyErr_Print: an import a C
    extension makes while the import lock is contended printed "Traceback ... quant.errors.Interrupted: 15"
    before the closing line) is not printed: the watcher has the signal and ends the run (quant.stop).
    Anything else is printed as before."""
    if _received and issubclass(kind, (KeyboardInterrupt, Interrupted)):
        return
    (_excepthooks[0] if _excepthooks else sys.__excepthook__)(kind, value, tb)


def _unraisable(info) -> None:
    """A stop signal's exception raised where Python cannot pass it on (a weakref callback, ``__del__``: Python
    prints "Exception ignored in ..." and a traceback) is not printed: the watcher has the signal and ends the run
    (quant.stop). Anything else is printed as Python would."""
    if isinstance(info.exc_value, (KeyboardInterrupt, Interrupted)):
        return
    sys.__unraisablehook__(info)


def _block_stop_signals():
    """Block the stop signals in the main thread (they stay pending); the previous mask, or None elsewhere."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def _unblock(blocked) -> None:
    if blocked is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _dispatch(argv: list[str] | None, commits: int) -> int:
    from quant import files

    verbose = False
    try:
        for name in ("stdout", "stderr"):  # started with a closed stream (``>&-``): write nowhere instead of failing
            if getattr(sys, name) is None:
                setattr(sys, name, open(os.devnull, "w"))
        parser = build_parser()
        args = parser.parse_args(renamed(sys.argv[1:] if argv is None else list(argv), log))
        verbose = getattr(args, "verbose", False)
        _require_utf8(args)
        return args.func(args)
    except QuantError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {printable(e.message, LINE_LIMIT)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        handle_signals(_ignore_late)
        line, code = _stopped(signal.SIGINT, files.commits() > commits)
        print(line, file=sys.stderr)
        return code
    except Interrupted as e:
        handle_signals(_ignore_late)
        line, code = _stopped(e.signum, e.written or files.commits() > commits)
        print(line, file=sys.stderr)
        return code
    except BrokenPipeError:  # stdout closed early (``| head``): nothing more to say to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as e:
        if not _received:  # a stop signal a library turned into another error (ImportError "initialization failed"
            return _error(e, verbose)  # during start-up): said as the stop it was
        handle_signals(_ignore_late)
        line, code = _stopped(_received[0], files.commits() > commits)
        print(line, file=sys.stderr)
        return code


def _require_utf8(args) -> None:
    """Paths are written into UTF-8 reports and messages: a value holding bytes that are not UTF-8 (which Python
    keeps as surrogate escapes) is refused before any work, instead of failing after a whole tune."""
    from quant.data import ENV_DATA_DIR

    values = [(f"--{k}", v) for k, v in vars(args).items() if k not in ("func", "command")]
    values.append((f"${ENV_DATA_DIR}", os.environ.get(ENV_DATA_DIR)))
    for flag, value in values:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, str):
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise UsageError(f"{flag} {printable(v)}: holds bytes that are not UTF-8 (shown as \\udcXX); the toolkit "
                                     "writes paths into UTF-8 reports: rename it") from None


def _error(e: Exception, verbose: bool) -> int:
    """One line for an error that is no QuantError (the traceback too with --verbose)."""
    if verbose:
        traceback.print_exception(e)
    if isinstance(e, OSError):  # the system refused a path the run needs: disk full, name too long, I/O error
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {printable(where + str(e.strerror or e), LINE_LIMIT)}", file=sys.stderr)
        return EXIT_SYSTEM
    print(f"unexpected error: {type(e).__name__}: {printable(str(e), LINE_LIMIT)} (rerun with --verbose for the traceback)",
          file=sys.stderr)  # a bug
    return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
