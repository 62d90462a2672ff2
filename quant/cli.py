"""Command line: ``python -m quant {tune,benchmark,validate,check-test-data,write-test-data,fetch,calib,config} ...``
(the zoo's flag style).

Exit codes: 0 success; 1 unexpected error; 2 usage or config error; 3 accuracy goal not met;
4 invalid input model or data; 130 interrupted. Errors print one line on stderr (a traceback
only with --verbose).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from .cliutil import command_line as _command_line, log as _log
from .errors import EXIT_INTERRUPTED, EXIT_UNEXPECTED, EXIT_USAGE, QuantError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _common(p: argparse.ArgumentParser, model_required: bool = True) -> None:
    p.add_argument("--input_model", required=model_required, help="ONNX model to read")
    p.add_argument("--config", default=None, help="YAML config (default: the built-in defaults, identical to mnist.yaml)")
    p.add_argument("--data_dir", default=None, help="MNIST folder (else config dataset.root, $MNIST_DIR, the user cache)")
    p.add_argument("--report", default=None, help="report path; .json and .md are written (default: beside the model)")
    p.add_argument("--verbose", action="store_true", help="INC's full logging and tracebacks on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m quant", description="Produce and validate int8 ONNX MNIST classifiers.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("tune", help="tune an fp32 model into int8 with neural-compressor", allow_abbrev=False)
    _common(t)
    t.add_argument("--output_model", required=True, help="where the int8 model is written (atomically)")
    t.add_argument("--objective", choices=("accuracy", "performance"), default=None,
                   help="override tuning.objective (performance = latency-aware search)")
    t.add_argument("--dynamic_batch", action=argparse.BooleanOptionalAction, default=None,
                   help="give the int8 model a symbolic batch dimension (default: config model.dynamic_batch, true)")
    t.set_defaults(func=cmd_tune)

    f = sub.add_parser("fetch", help="download MNIST and the zoo's mnist-12.onnx with checksum verification", allow_abbrev=False)
    f.add_argument("--data_dir", default=None, help="MNIST folder (default: $MNIST_DIR or the user cache)")
    f.add_argument("--models_dir", default=None, help="folder for mnist-12.onnx (default: the user cache)")
    f.add_argument("--verbose", action="store_true")
    f.set_defaults(func=cmd_fetch)

    k = sub.add_parser("config", help="print the default config (the packaged mnist.yaml) to start your own from", allow_abbrev=False)
    k.set_defaults(func=cmd_config)

    c = sub.add_parser("calib", help="materialize the calibration set into calib_data/ and check its sha256", allow_abbrev=False)
    c.add_argument("--config", default=None, help="YAML config (default: the built-in defaults)")
    c.add_argument("--data_dir", default=None, help="MNIST folder (else config dataset.root, $MNIST_DIR, the user cache)")
    c.add_argument("--out_dir", default=None, help="folder for the .npy (default: calib_data/ in the working folder)")
    c.add_argument("--add_to_manifest", metavar="NAME", default=None,
                   help="record this set under NAME in the manifest the config names (quantization.calibration.manifest)")
    c.add_argument("--verbose", action="store_true")
    c.set_defaults(func=cmd_calib)

    from . import benchmark_cli, validate_cli

    benchmark_cli.add_parser(sub)
    validate_cli.add_parsers(sub, _common)
    return parser


def cmd_tune(args) -> int:
    from .pipeline import tune_model

    doc = tune_model(args.input_model, args.output_model, config=args.config, data_dir=args.data_dir,
                     report_path=args.report, verbose=args.verbose, log=_log, command=_command_line(),
                     dynamic_batch=args.dynamic_batch, objective=args.objective)
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
    from . import calib, config, data

    cfg = config.load(args.config)
    root = data.ensure_data_dir(args.data_dir, cfg.dataset.root, download=cfg.dataset.download, log=_log)
    cs = calib.build(cfg, data.load_split(root, "train", verify=cfg.dataset.verify_md5))
    out = calib.save_array(cs, Path(args.out_dir) if args.out_dir else Path("calib_data"))
    _log(f"[calib] {cs.definition['count']} {cs.definition['split']} images, {cs.definition['source']}; sha256 {cs.sha256} checked")
    if args.add_to_manifest:
        if cfg.quantization.calibration.manifest is None:  # never write into the installed package
            raise UsageError("--add_to_manifest: set quantization.calibration.manifest to a manifest file of yours "
                             "(the built-in one is part of the package)")
        mpath = calib.manifest_path(cfg)
        entries = [e for e in (calib.read_manifest(mpath) if mpath.exists() else []) if e.get("name") != args.add_to_manifest]
        calib.write_manifest(mpath, entries + [calib.manifest_entry(cs, args.add_to_manifest)])
        _log(f"[calib] recorded as {args.add_to_manifest!r} in {mpath}")
    print(out)
    return 0


def cmd_config(args) -> int:
    from .config import DEFAULT_CONFIG

    sys.stdout.write(DEFAULT_CONFIG.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    try:
        return args.func(args)
    except QuantError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: one line unless --verbose
        if verbose:
            traceback.print_exc()
        print(f"unexpected error: {type(e).__name__}: {e} (rerun with --verbose for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
