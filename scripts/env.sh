# Sourced by run_tuning.sh, run_benchmark.sh and run_tests.sh: picks the Python to use.
#   $QUANT_PYTHON if set; else the repo's .venv, created and installed from pyproject.toml on first
#   use (and re-installed when pyproject.toml changes).
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
quant_python() {
  if [ -n "${QUANT_PYTHON:-}" ]; then echo "$QUANT_PYTHON"; return 0; fi
  local venv="$_repo/.venv" stamp want
  want="$(sha256sum "$_repo/pyproject.toml" | cut -d' ' -f1)"
  stamp="$venv/.mnist-quant-installed"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] creating $venv and installing mnist-quant from pyproject.toml (first run only)..." >&2
    "${PYTHON:-python3}" -m venv "$venv" >&2 || return 1
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$_repo[test,plots]" >&2 || return 1
    echo "$want" > "$stamp"
  fi
  echo "$venv/bin/python"
}
