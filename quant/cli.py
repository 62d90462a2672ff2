"""Command line: ``python -m quant {tune,benchmark,validate,check-test-data,write-test-data,fetch,calib,config} ...``
(the zoo's flag style).

Exit codes: 0 success; 1 unexpected error (a bug); 2 usage or config error; 3 accuracy goal not met;
4 invalid input model or data; 5 the system refused a path (disk full, name too long); 130 Ctrl-C,
129 SIGHUP, 143 SIGTERM. Errors print one line on stderr (a traceback
only with --verbose).
"""

from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import traceback
from pathlib import Path

from . import __version__
from .cliutil import LINE_LIMIT, command_line as _command_line, log as _log
from .errors import (EXIT_INTERRUPTED, EXIT_SYSTEM, EXIT_UNEXPECTED, EXIT_USAGE, Interrupted, QuantError, UsageError,
                     handle_signals, printable, restore_signals)


PATH_FLAGS = {"--input_model", "--baseline_model", "--output_model", "--config", "--data_dir", "--report", "--models_dir",
              "--out_dir", "--output_dir", "--test_data", "--output"}


def _path(value: str) -> str:
    if not value.strip():  # "" would mean the working folder to pathlib: never what was meant
        raise argparse.ArgumentTypeError("expected a path, got an empty value")
    return value


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


COMMON_HELP = {
    "--input_model": "ONNX model to read",
    "--config": "YAML config (default: the built-in defaults, identical to mnist.yaml; see python -m quant config)",
    "--data_dir": "MNIST folder (else config dataset.root, $MNIST_DIR, the user cache)",
    "--report": "report path; .json and .md are written (default: tune beside the output model; benchmark and validate "
                "<model>.<kind>.json/.md in the working folder)",
    "--verbose": "neural-compressor's full logging, and a traceback on errors (the exit code stays the same)",
    "--mode": "performance: size and latency; accuracy: size, accuracy and the gate; all: everything",
    "--no_plots": "skip the PNG figures beside the report (default: written when matplotlib is installed, "
                  "pip install 'mnist-quant[plots]')",
}


def _common(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    p.add_argument("--input_model", required=model_required)
    p.add_argument("--config", default=None)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--report", default=None)
    p.add_argument("--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m quant", description="Produce and validate int8 ONNX MNIST classifiers.", allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"mnist-quant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("tune", help="tune an fp32 model into int8 with neural-compressor", allow_abbrev=False)
    _common(t)
    t.add_argument("--output_model", required=True, help="where the int8 model is written (atomically)")
    t.add_argument("--objective", choices=("accuracy", "performance"), default=None,
                   help="override tuning.objective (performance = latency-aware search)")
    t.add_argument("--dynamic_batch", action=argparse.BooleanOptionalAction, default=None,
                   help="give the int8 model a symbolic batch dimension (default: config model.dynamic_batch, true)")
    t.add_argument("--no_plots", action="store_true")
    t.set_defaults(func=cmd_tune)

    f = sub.add_parser("fetch", help="download MNIST and the zoo's mnist-12.onnx with checksum verification", allow_abbrev=False)
    f.add_argument("--data_dir", default=None, help="MNIST folder (default: $MNIST_DIR or the user cache)")
    f.add_argument("--models_dir", default=None, help="folder for mnist-12.onnx (default: the user cache)")
    f.add_argument("--verbose", action="store_true")
    f.set_defaults(func=cmd_fetch)

    k = sub.add_parser("config", help="print the default config (the packaged mnist.yaml) to start your own from", allow_abbrev=False)
    k.set_defaults(func=cmd_config)

    c = sub.add_parser("calib", help="materialize the calibration set into calib_data/ and check its sha256", allow_abbrev=False)
    c.add_argument("--config", default=None)
    c.add_argument("--data_dir", default=None)
    c.add_argument("--out_dir", default=None, help="folder for the .npy (default: calib_data/ in the working folder)")
    c.add_argument("--add_to_manifest", metavar="NAME", default=None,
                   help="record this set under NAME in the manifest the config names (quantization.calibration.manifest)")
    c.add_argument("--verbose", action="store_true")
    c.set_defaults(func=cmd_calib)

    from . import benchmark_cli, package_cli, validate_cli

    benchmark_cli.add_parser(sub)
    validate_cli.add_parsers(sub, _common)
    package_cli.add_parser(sub)
    return parser


def cmd_tune(args) -> int:
    from .pipeline import tune_model

    doc = tune_model(args.input_model, args.output_model, config=args.config, data_dir=args.data_dir, reports=True,
                     report_path=args.report, verbose=args.verbose, log=_log, command=_command_line(),
                     dynamic_batch=args.dynamic_batch, objective=args.objective, plots=not args.no_plots)
    print(doc["markdown"])
    _log(f"[tune] reports: {doc['reports']['json']}, {doc['reports']['markdown']}")
    return 0


def cmd_fetch(args) -> int:
    from . import data

    root = data.ensure_data_dir(args.data_dir, None, download=True, log=_log)
    for split in ("train", "test"):
        s = data.load_split(root, split, verify=True)
        _log(f"[fetch] {split}: {len(s.labels)} images, md5 verified, in {root}")
    models_dir = Path(args.models_dir) if args.models_dir else data.default_cache_dir() / "models"
    path = data.fetch_model("mnist-12.onnx", models_dir, log=_log)
    print(path)
    return 0


def cmd_calib(args) -> int:
    from . import calib, config, data, inputs
    from .fsio import Outputs, check_distinct, check_writable_target

    cfg = config.load(args.config)
    folder = Path(args.out_dir) if args.out_dir else Path("calib_data")
    default_missing = not args.out_dir and not folder.exists()  # created, after the work, only when the default is used
    check_writable_target(folder if default_missing else folder / "calib-0123456789ab.npy", "--out_dir")
    mpath = calib.manifest_path(cfg)
    if args.add_to_manifest:
        if mpath.resolve() == calib.BUILTIN_MANIFEST.resolve():  # never write into the installed package
            raise UsageError("--add_to_manifest: set quantization.calibration.manifest to a manifest file of yours "
                             "(the built-in one is part of the package)")
        check_writable_target(mpath, "quantization.calibration.manifest")
    root = data.ensure_data_dir(args.data_dir, cfg.dataset.root, download=cfg.dataset.download, log=_log)
    cs = calib.build(cfg, data.load_split(root, "train", verify=cfg.dataset.verify_md5))
    manifest = ("quantization.calibration.manifest", mpath)
    check_distinct(reads=[("--config", inputs.config_file(cfg)), *inputs.data_files(cfg, args.data_dir)]
                   + ([] if args.add_to_manifest else [manifest]),
                   writes=[("the calibration array", calib.array_path(cs, folder))] + ([manifest] if args.add_to_manifest else []))
    _log(f"[calib] {cs.definition['count']} {cs.definition['split']} images, {cs.definition['source']}; sha256 {cs.sha256} checked")
    if default_missing:
        folder.mkdir()
    try:
        with Outputs() as staged:  # the array and the manifest entry, committed together
            out = calib.save_array(cs, folder, staged)
            if args.add_to_manifest:
                entries = [e for e in (calib.read_manifest(mpath) if mpath.exists() else []) if e.get("name") != args.add_to_manifest]
                calib.write_manifest(mpath, entries + [calib.manifest_entry(cs, args.add_to_manifest)], staged)
            staged.commit()
    except BaseException:
        if default_missing and not any(folder.iterdir()):
            folder.rmdir()
        raise
    if args.add_to_manifest:
        _log(f"[calib] recorded as {args.add_to_manifest!r} in {mpath}")
    print(out)
    return 0


def cmd_config(args) -> int:
    from .config import DEFAULT_CONFIG

    sys.stdout.write(DEFAULT_CONFIG.read_text())
    return 0


_received: list[int] = []  # stop signals seen by main()'s handlers, for errors a library made of them


def _raise_interrupted(signum, frame):
    _received.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def _ignore_late(signum, frame):
    """Once the run is over (its line being printed, handlers being restored) a stop signal changes nothing."""


def _stopped(signum: int, committed: bool) -> tuple[str, int]:
    """The closing line after a stop signal and its exit code: it says whether the outputs were written."""
    if committed:
        return f"interrupted by {signal.Signals(signum).name} after the outputs were written", 128 + signum
    if signum == signal.SIGINT:
        return "interrupted; no output written", EXIT_INTERRUPTED
    return Interrupted(signum).message, 128 + signum


def main(argv: list[str] | None = None) -> int:
    from . import fsio, stop

    # SIGTERM (a service manager's stop, ``kill``) and SIGHUP (a closed terminal) end the run like Ctrl-C's
    # KeyboardInterrupt: cleanup runs, one line, exit 128 + signal. Installed first, so a signal during start-up
    # ends the same way; the watcher also stops onnxruntime's native runs at once (quant.stop)
    del _received[:]
    previous = handle_signals(_raise_interrupted)
    wakeup = stop.watch_signals()
    commits = fsio.commits()
    try:
        try:
            return _dispatch(argv, commits)
        except KeyboardInterrupt:  # a second signal while the first one's line was being printed
            handle_signals(_ignore_late)
            line, code = _stopped(signal.SIGINT, fsio.commits() > commits)
        except Interrupted as e:
            handle_signals(_ignore_late)
            line, code = _stopped(e.signum, e.written or fsio.commits() > commits)
        print(line, file=sys.stderr)
        return code
    finally:
        handle_signals(_ignore_late)
        stop.unwatch_signals(wakeup)
        restore_signals(previous)


def _dispatch(argv: list[str] | None, commits: int) -> int:
    from . import fsio

    verbose = False
    try:
        for name in ("stdout", "stderr"):  # started with a closed stream (``>&-``): write nowhere instead of failing
            if getattr(sys, name) is None:
                setattr(sys, name, open(os.devnull, "w"))
        parser = build_parser()
        args = parser.parse_args(argv)
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
        line, code = _stopped(signal.SIGINT, fsio.commits() > commits)
        print(line, file=sys.stderr)
        return code
    except Interrupted as e:
        handle_signals(_ignore_late)
        line, code = _stopped(e.signum, e.written or fsio.commits() > commits)
        print(line, file=sys.stderr)
        return code
    except BrokenPipeError:  # stdout closed early (``| head``): nothing more to say to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as e:
        if not _received:  # a stop signal a library turned into another error (ImportError "initialization failed"
            return _error(e, verbose)  # during start-up): said as the stop it was
        handle_signals(_ignore_late)
        line, code = _stopped(_received[0], fsio.commits() > commits)
        print(line, file=sys.stderr)
        return code


def _require_utf8(args) -> None:
    """Paths are written into UTF-8 reports and messages: a value holding bytes that are not UTF-8 (which Python
    keeps as surrogate escapes) is refused before any work, instead of failing after a whole tune."""
    from .data import ENV_DATA_DIR

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
