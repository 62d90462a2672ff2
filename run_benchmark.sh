#!/usr/bin/env bash
# Benchmark an int8 model against fp32 (the zoo recipe's interface, extended):
#   bash run_benchmark.sh --input_model=INT8.onnx --config=mnist.yaml --mode=accuracy|performance|all \
#       [--baseline_model=FP32.onnx] [--batch_size=N] [--iterations=N] [--warmup=N] [--threads=N] \
#       [--max_accuracy_drop=FRACTION] [--report=PATH] [--data_dir=DIR]
set -euo pipefail
source "$(dirname "$0")/scripts/env.sh"
quant_use_python || exit $?  # holds its environment until the command below ends
py="$QUANT_PY"
exec "$py" -m quant benchmark "$@"
