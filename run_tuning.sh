#!/usr/bin/env bash
# Tune an fp32 ONNX MNIST model into int8 (the zoo recipe's interface):
#   bash run_tuning.sh --input_model=mnist-12.onnx --config=mnist.yaml --output_model=mnist-12-int8.onnx [--data_dir=DIR] [--report=PATH]
set -euo pipefail
source "$(dirname "$0")/scripts/env.sh"
quant_use_python || exit $?  # holds its environment until the command below ends
py="$QUANT_PY"
exec "$py" -m quant tune "$@"
