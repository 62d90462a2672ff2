"""``python -m quant benchmark`` (and run_benchmark.sh): flags of the zoo recipe's benchmark script."""

from __future__ import annotations

import sys


def _range(key: str) -> str:
    """Help text for a flag overriding config ``key``: the key's range (:func:`quant.config.check_value` enforces it)."""
    from .config import leaf, range_text

    return f"range {range_text(leaf(key))}"


def add_parser(sub) -> None:
    b = sub.add_parser("benchmark", help="size, accuracy and latency of int8 vs fp32; accuracy gate", allow_abbrev=False)
    b.add_argument("--input_model", required=True, action="append",
                   help="model to measure; several may be given comma-separated or by repeating the flag (a value that names "
                   "an existing file is taken whole, so a path with a comma works: --input_model=my,model.onnx)")
    b.add_argument("--baseline_model", default=None, help="fp32 model to compare against (measured in the same run)")
    b.add_argument("--config", default=None)
    b.add_argument("--mode", default="performance", choices=("performance", "accuracy", "all"))
    b.add_argument("--batch_size", default=None, help="images per timed inference; several comma-separated (e.g. 1,64) are timed "
                   f"in turn ({_range('benchmark.batch_size')} each; default: config benchmark.batch_size)")
    b.add_argument("--iterations", type=int, default=None,
                   help=f"timed inferences per model ({_range('benchmark.iterations')}; default: config benchmark.iterations)")
    b.add_argument("--warmup", type=int, default=None,
                   help=f"untimed inferences per model first ({_range('benchmark.warmup')}; default: config benchmark.warmup)")
    b.add_argument("--threads", type=int, default=None,
                   help=f"onnxruntime intra-op threads ({_range('benchmark.threads')}; default: config benchmark.threads, 1)")
    b.add_argument("--max_accuracy_drop", type=float, default=None, help="gate budget as a fraction "
                   f"({_range('tuning.accuracy_criterion')}; default: the config's tuning.accuracy_criterion)")
    b.add_argument("--data_dir", default=None)
    b.add_argument("--report", default=None)
    b.add_argument("--no_plots", action="store_true")
    b.add_argument("--profile", action="store_true", help="add onnxruntime's per-op kernel times for every model and batch size")
    b.add_argument("--dynamic_batch", action="store_true",
                   help="rewrite fixed-batch models (the zoo's batch of 1) to a symbolic batch in memory, so all run at --batch_size")
    b.add_argument("--verbose", action="store_true")
    b.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args) -> int:
    from .benchmark import benchmark_models
    from .cliutil import command_line as _command_line, log as _log
    from .errors import AccuracyError, UsageError

    import os

    # each value: a file that exists is taken whole (its name may hold a comma), else a comma-separated list
    inputs = [m for v in args.input_model for m in ([v] if os.path.isfile(v) else v.split(",")) if m]
    sizes = None
    if args.batch_size is not None:
        try:
            sizes = [int(v) for v in args.batch_size.split(",")]
        except ValueError:
            raise UsageError(f"--batch_size {args.batch_size!r}: expected an integer or comma-separated integers") from None
    try:
        doc = benchmark_models(inputs, args.baseline_model, config=args.config, mode=args.mode, data_dir=args.data_dir,
                               batch_size=sizes[0] if sizes else None, iterations=args.iterations, warmup=args.warmup, threads=args.threads,
                               max_accuracy_drop=args.max_accuracy_drop, report_path=args.report, log=_log,
                               command=_command_line(), plots=not args.no_plots,
                               dynamic_batch=args.dynamic_batch, extra_batch_sizes=tuple(sizes[1:]) if sizes else (),
                               profile=args.profile, reports=True, progress=True)
    except AccuracyError as e:
        if "markdown" in e.details:
            print(e.details["markdown"])
        raise
    print(doc["markdown"])
    _log(f"[benchmark] reports: {doc['reports']['json']}, {doc['reports']['markdown']}")
    if doc.get("gate"):
        print(doc["gate"]["verdict"], file=sys.stderr)
    return 0
