#!/usr/bin/env bash
# Run the test suite. Real-data tests read $MNIST_DIR and $QUANT_MODELS_DIR, which default to
# ../shared/data/mnist and ../shared/models when those exist. Extra arguments go to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/scripts/env.sh"
quant_use_python || exit $?  # holds its environment until the command below ends
py="$QUANT_PY"
if [ -z "${MNIST_DIR:-}" ] && [ -d "$here/../shared/data/mnist" ]; then export MNIST_DIR="$here/../shared/data/mnist"; fi
if [ -z "${QUANT_MODELS_DIR:-}" ] && [ -d "$here/../shared/models" ]; then export QUANT_MODELS_DIR="$here/../shared/models"; fi
cd "$here"
exec "$py" -m pytest "$@"
