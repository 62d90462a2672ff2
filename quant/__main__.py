import sys

try:
    from quant.cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C while Python starts the toolkit, before main() handles signals
    print("interrupted; no output written", file=sys.stderr)
    code = 130
sys.exit(code)
