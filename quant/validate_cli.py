"""``python -m quant validate``, ``check-test-data`` and ``write-test-data``."""

from __future__ import annotations

import sys
from pathlib import Path

from .config import check_flag, check_value, leaf, range_text


def _tolerances(p) -> None:
    from .config import ATOL, DEFAULT_ATOL, DEFAULT_RTOL, RTOL

    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL, help=f"relative tolerance (range {range_text(RTOL)}; default {DEFAULT_RTOL:g})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"absolute tolerance (range {range_text(ATOL)}; default {DEFAULT_ATOL:g})")


def add_parsers(sub, common) -> None:
    from .config import PORTABILITY_SAMPLES, SAMPLES

    v = sub.add_parser("validate", help="check an int8 model against its fp32 baseline: structure, input range, accuracy, "
                       "per-layer error, test data", allow_abbrev=False)
    common(v)
    v.add_argument("--baseline_model", required=True, help="the fp32 model the int8 model was made from")
    v.add_argument("--test_data", nargs="+", default=None, metavar="DIR",
                   help="test_data_set_N folders (or folders of them) to check; default: <model>_test_data/ if present")
    v.add_argument("--samples", type=int, default=SAMPLES.default,
                   help=f"test images for the per-layer error (range {range_text(SAMPLES)}; default {SAMPLES.default})")
    v.add_argument("--portability_samples", type=int, default=PORTABILITY_SAMPLES.default,
                   help="test images for the CPU-portability check against the exact integer reference "
                        f"(range {range_text(PORTABILITY_SAMPLES)}; default {PORTABILITY_SAMPLES.default}, ~10 ms each)")
    v.add_argument("--json", action="store_true",
                   help="quiet: print only a JSON summary (verdict per check, exit code, report paths) on stdout; "
                        "no progress lines, no Markdown; exit codes unchanged")
    _tolerances(v)
    v.set_defaults(func=cmd_validate)

    c = sub.add_parser("check-test-data", help="run a model on zoo-style test_data_set_N folders and compare outputs", allow_abbrev=False)
    c.add_argument("--input_model", required=True)
    c.add_argument("--test_data", nargs="+", required=True, metavar="DIR", help="test_data_set_N folders or folders of them")
    c.add_argument("--config", default=None, help="for model.input_name (default: detected)")
    _tolerances(c)
    c.add_argument("--verbose", action="store_true")
    c.set_defaults(func=cmd_check_test_data)

    w = sub.add_parser("write-test-data", help="write zoo-style test_data_set_N folders for a model", allow_abbrev=False)
    w.add_argument("--input_model", required=True)
    w.add_argument("--config", default=None)
    w.add_argument("--data_dir", default=None)
    w.add_argument("--output_dir", default=None, help="default: <model>_test_data in the working folder (never beside someone else's model unless asked)")
    w.add_argument("--count", type=int, default=None,  # the key's range, but 0 (no sets) leaves nothing to write
                   help=f"number of sets (range 1..{leaf('output.test_data_sets').max}; default: config output.test_data_sets)")
    w.add_argument("--verbose", action="store_true")
    w.set_defaults(func=cmd_write_test_data)


def _check_tol(args) -> None:
    from .config import ATOL, RTOL

    check_flag(RTOL, args.rtol, "--rtol")
    check_flag(ATOL, args.atol, "--atol")


def summary(doc: dict, exit_code: int) -> dict:
    """What ``validate --json`` prints: the verdicts, not the evidence (that is in the JSON report)."""
    return {"passed": doc["passed"], "exit_code": exit_code,
            "input_model": doc["input_model"], "baseline_model": doc["baseline_model"],
            "checks": [{"name": c["name"], "status": c["status"], "verdict": c["verdict"]} for c in doc["checks"]],
            "reports": doc["reports"]}


def cmd_validate(args) -> int:
    import json

    from .cliutil import command_line as _command_line, log as _log
    from .errors import AccuracyError
    from .validation import validate_model

    try:  # validate_model range-checks --samples, --portability_samples, --rtol and --atol itself
        doc = validate_model(args.input_model, args.baseline_model, config=args.config, data_dir=args.data_dir,
                             report_path=args.report, test_data=args.test_data, samples=args.samples,
                             portability_samples=args.portability_samples, rtol=args.rtol,
                             atol=args.atol, log=(lambda _m: None) if args.json else _log, command=_command_line(), reports=True)
    except AccuracyError as e:
        if "markdown" in e.details:
            print(json.dumps(summary(e.details, e.exit_code), indent=2) if args.json else e.details["markdown"])
        raise
    if args.json:
        print(json.dumps(summary(doc, 0), indent=2))
        return 0
    print(doc["markdown"])
    _log(f"[validate] reports: {doc['reports']['json']}, {doc['reports']['markdown']}")
    return 0


def cmd_check_test_data(args) -> int:
    from . import config, models, testdata
    from .errors import AccuracyError

    _check_tol(args)
    cfg = config.load(args.config)
    m = models.load(args.input_model, "input model")
    sig = models.signature(m.proto, m.path, cfg.model.input_name)
    sets = testdata.find_sets(args.test_data)
    res = testdata.check_sets(m.raw, sets, sig.input_name, sig.output_name, args.rtol, args.atol, m.path)
    for r in res:
        print(f"{'PASS' if r.passed else 'FAIL'}  {r.folder}  max |diff| {r.max_abs_diff:.4g}  same top-1 {r.same_argmax}"
              + (f"  ({r.detail})" if r.detail else ""))
    bad = [r for r in res if not r.passed]
    if bad:
        raise AccuracyError(f"{len(bad)} of {len(res)} test data sets differ beyond rtol {args.rtol:g}, atol {args.atol:g} "
                            f"(largest difference {max(r.max_abs_diff for r in bad):.4g} in {bad[0].folder})")
    print(f"{len(res)} test data set(s) reproduced within rtol {args.rtol:g}, atol {args.atol:g}", file=sys.stderr)
    return 0


def cmd_write_test_data(args) -> int:
    from . import models, testdata
    from .cliutil import log as _log
    from .errors import UsageError
    from .fsio import Outputs, check_distinct
    from .inputs import config_file, data_files, load_config, load_splits, test_inputs

    if args.count is not None:
        check_value("output.test_data_sets", args.count, "--count")
    cfg = load_config(args.config)
    count = cfg.output.test_data_sets if args.count is None else args.count
    if count < 1:
        raise UsageError(f"--count {count}: must be >= 1")
    dest = Path(args.output_dir) if args.output_dir else Path(testdata.default_dir(args.input_model).name)
    check_distinct(reads=[("--input_model", args.input_model), ("--config", config_file(cfg)), *data_files(cfg, args.data_dir)], writes=[],
                   replaced=[("--output_dir", dest)])
    testdata.check_replaceable(dest, "--output_dir")
    m = models.load(args.input_model, "input model")
    sig = models.signature(m.proto, m.path, cfg.model.input_name, cfg.preprocessing.layout)
    test = load_splits(cfg, args.data_dir, splits=("test",), log=_log)["test"]
    x = test_inputs(cfg, test)[testdata.pick_indices(len(test.labels), count, cfg.quantization.calibration.seed)]
    with Outputs() as out:
        n = testdata.write_sets(m.raw, sig.input_name, sig.output_name, x, out.folder(dest, testdata.foreign_entries), m.path)
        out.commit()
    _log(f"[test-data] wrote {n} test_data_set folders")
    print(dest)
    return 0
