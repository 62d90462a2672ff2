# Sourced by run_tuning.sh, run_benchmark.sh and run_tests.sh: picks the Python to use.
#   $QUANT_PYTHON if set (an environment of your own, used as it is); else the repo's .venv, created
#   on first use from requirements.lock (exact versions + hashes) and rebuilt from scratch whenever the
#   lock, pyproject.toml or the Python version changes. A failed or interrupted setup removes the
#   half-built .venv, so the next run starts clean. Python: $PYTHON, else the first of python3,
#   python3.13, python3.12, python3.11 that is a supported version (keep in step with pyproject.toml).
#   A command started by run_*.sh holds a shared lock on .venv.inuse for its lifetime (quant_hold_venv);
#   a rebuild needs that lock exclusively and is refused (exit 2, one line) while any command runs from
#   the .venv (a benchmark running from it died with "No module named 'numpy.ma'" when it was rebuilt).
_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUANT_PY_MIN=11 QUANT_PY_MAX=13   # Python 3.11 .. 3.13 (pyproject.toml: requires-python)

_supported() {  # exit 0 when "$1" runs a supported Python 3 version
  "$1" -c "import sys; sys.exit(not (sys.version_info[0] == 3 and $QUANT_PY_MIN <= sys.version_info[1] <= $QUANT_PY_MAX))" 2>/dev/null
}

_pick_python() {
  local c
  if [ -n "${PYTHON:-}" ]; then
    if _supported "$PYTHON"; then echo "$PYTHON"; return 0; fi
    local v; v="$("$PYTHON" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "not runnable")"
    echo "error: PYTHON=$PYTHON is Python $v; mnist-quant needs Python 3.$QUANT_PY_MIN-3.$QUANT_PY_MAX (docs/troubleshooting.md)" >&2
    return 1
  fi
  for c in python3 python3.13 python3.12 python3.11; do
    if command -v "$c" >/dev/null 2>&1 && _supported "$c"; then command -v "$c"; return 0; fi
  done
  echo "error: no supported Python found (python3 is $(python3 -c 'import platform; print(platform.python_version())' 2>/dev/null || echo missing)); mnist-quant needs Python 3.$QUANT_PY_MIN-3.$QUANT_PY_MAX: install one or set PYTHON=/path/to/python3.X" >&2
  return 1
}

_setup_venv() {  # $1 python, $2 venv folder; runs with the setup lock held
  local py="$1" venv="$2" t0=$SECONDS
  rm -rf "$venv"
  echo "[setup] creating $venv with $("$py" -c 'import platform; print("Python", platform.python_version())') and installing requirements.lock (first run only, about 1-2 min)" >&2
  "$py" -m venv "$venv" >&2 || return 1
  # exact versions with hashes, no resolver: the same packages on every machine and Python
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-deps --require-hashes --progress-bar on \
    -r "$_repo/requirements.lock" 2>&1 | grep --line-buffered -v '^Ignoring ' >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$_repo" >&2 || return 1
  "$venv/bin/python" -c "import quant, onnxruntime, onnx, numpy, yaml" >&2 || return 1
  echo "[setup] done in $(( SECONDS - t0 )) s; $venv is $(du -sh "$venv" | cut -f1)" >&2
}

quant_hold_venv() {  # in the calling shell, before quant_python: held until the command it execs ends
  [ -n "${QUANT_PYTHON:-}" ] && return 0
  exec 8>>"$_repo/.venv.inuse"
  flock -s 8  # waits while a set-up rebuilds the .venv
}

_venv_mapped_by_others() {  # a process not started by run_*.sh (.venv/bin/python run by hand) with files of the venv mapped
  local real maps
  real="$(cd "$1" 2>/dev/null && pwd -P)" || return 1
  for maps in /proc/[0-9]*/maps; do
    case "$maps" in "/proc/$$/maps"|"/proc/$BASHPID/maps") continue ;; esac
    if grep -qsF -- "$real/" "$maps" 2>/dev/null; then echo "${maps#/proc/}" | cut -d/ -f1; return 0; fi
  done
  return 1
}

quant_python() {
  if [ -n "${QUANT_PYTHON:-}" ]; then echo "$QUANT_PYTHON"; return 0; fi
  local venv="$_repo/.venv" stamp="$_repo/.venv/.mnist-quant-installed" py want
  py="$(_pick_python)" || return 2
  want="$(cat "$_repo/requirements.lock" "$_repo/pyproject.toml" | sha256sum | cut -d' ' -f1) $("$py" -c 'import sys; print(sys.version)' | head -1)"
  if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then echo "$venv/bin/python"; return 0; fi
  (
    # one setup at a time; a second command waits for the first and then finds the venv ready
    exec 9>"$_repo/.venv.lock"
    flock 9
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi
    if [ -e "$venv" ]; then  # never delete a .venv another command runs from
      flock -u 8 2>/dev/null || true  # this command's own shared lock (quant_hold_venv): taken again below
      exec 7>>"$_repo/.venv.inuse"
      local pid=""
      if ! flock -n -x 7 || pid="$(_venv_mapped_by_others "$venv")"; then
        echo "error: $venv must be rebuilt (requirements.lock, pyproject.toml or the Python changed) but a command is running from it${pid:+ (PID $pid)}; run again when it has finished, or set QUANT_PYTHON" >&2
        exit 2
      fi
    fi
    trap 'rm -rf "$venv"; echo "[setup] interrupted; removed the unfinished $venv" >&2; exit 130' INT TERM HUP
    if ! _setup_venv "$py" "$venv"; then
      rm -rf "$venv"
      echo "error: setting up $venv failed (see above); removed it, so the next run starts clean" >&2
      exit 1
    fi
    echo "$want" > "$stamp"
    flock -u 7 2>/dev/null || true
    flock -s 8 2>/dev/null || true  # the caller's shared lock again (same open file as the caller's fd 8)
  )
  local rc=$?
  [ "$rc" -eq 0 ] || return "$rc"
  echo "$venv/bin/python"
}
