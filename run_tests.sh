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
# the test files are spread over min(4, CPUs) workers (pytest-xdist; a file's tests stay on one worker, so
# its fixtures are made once); QUANT_TEST_WORKERS=1, or -n / -p no:xdist among the arguments, runs them here
workers="${QUANT_TEST_WORKERS:-$(n="$(nproc 2>/dev/null || echo 1)"; echo $(( n < 4 ? n : 4 )))}"
for a in "$@"; do
  case "$a" in -n|-n?*|--numprocesses|--numprocesses=*|no:xdist|-pno:xdist) workers=1 ;; esac
done
xdist=()
if [ "$workers" -gt 1 ] && "$py" -c "import xdist" 2>/dev/null; then
  xdist=(-n "$workers" --dist loadfile)
fi
exec "$py" -m pytest ${xdist[@]+"${xdist[@]}"} "$@"
