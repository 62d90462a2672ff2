"""``python -m quant package``: a zoo-style NAME.tar.gz (model + test data) and its model-card fragment."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("package", help="zoo-style NAME.tar.gz (NAME/model.onnx + test_data_set_N) and NAME.card.md", allow_abbrev=False)
    p.add_argument("--input_model", required=True, help="the (int8) model to package")
    p.add_argument("--output", required=True, help="NAME.tar.gz to write; NAME.card.md (the model-card fragment) is written beside it")
    p.add_argument("--config", default=None, help="YAML config for the preprocessing of the test data and the top-1 measurement "
                   "(default: what the model's metadata documents, else the built-in defaults)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--count", type=int, default=None, help="test_data_set folders (range 1..1000; default: config output.test_data_sets, 3)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=cmd_package)


def cmd_package(args) -> int:
    from .cliutil import command_line, log
    from .config import check_value
    from .package import package_model

    if args.count is not None:
        check_value("output.test_data_sets", args.count, "--count")
        if args.count < 1:
            from .errors import UsageError

            raise UsageError(f"--count {args.count}: must be >= 1 (a zoo package holds test_data_set folders)")
    s = package_model(args.input_model, args.output, config=args.config, data_dir=args.data_dir, count=args.count, log=log,
                      command=command_line())
    print(s["card_text"], end="")
    return 0
