# Sourced by run_tuning.sh, run_benchmark.sh and run_tests.sh: picks the Python to use.
#   $QUANT_PYTHON if set (an environment of your own, used as it is); else a virtual environment of the repo,
#   created on first use from requirements.lock (exact versions + hashes) and built anew whenever the lock,
#   pyproject.toml or the Python version changes. Python: $PYTHON, else the first of python3, python3.13,
#   python3.12, python3.11 that is a supported version (keep in step with pyproject.toml).
#
#   Layout: each environment lives in its own folder .venv-<key> (key: a hash of the lock, pyproject.toml and
#   the Python version) and .venv is a symbolic link to the current one, so .venv/bin/python is always the
#   current environment's Python. A set-up builds the new folder beside the old ones and then switches the link
#   with one rename (mv -T: no moment without a .venv). Set-ups run one at a time (.venv.lock).
#
#   A command started by run_*.sh runs the folder's own bin/python (not the link) and holds a shared lock on
#   its .mnist-quant-inuse file for its lifetime (quant_use_python); the link is not switched while any process
#   has files of its current folder mapped (one started through the link, .venv/bin/python by hand, finds its
#   modules through it): a set-up never changes the files under a running command (a benchmark running from a rebuilt .venv died with
#   "No module named 'numpy.ma'"). An old folder is removed after a set-up or a later run, and only when no
#   command holds it (an exclusive lock) and no process started otherwise (.venv/bin/python by hand) has files
#   of it mapped. Only folders named .venv-<12 hex> holding our marker are ever removed.
#
#   A failed or interrupted set-up removes the folder it was building and leaves .venv as it was, so the next
#   run starts clean. A .venv folder of the earlier layout (a real folder with our stamp) is replaced by the link
#   once no command uses it; until then commands run from the new folder. Anything else at .venv (a file, a folder
#   of the user's) is never replaced: the set-up stops with one line (exit 2).
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

_STAMP=.mnist-quant-installed   # inside an environment: what it was built from (written last)
_INUSE=.mnist-quant-inuse       # inside an environment: shared-locked by every command running from it

_setup_venv() {  # $1 python, $2 environment folder; runs with the set-up lock held
  local py="$1" venv="$2" t0=$SECONDS
  rm -rf "$venv"
  echo "[setup] creating $venv with $("$py" -c 'import platform; print("Python", platform.python_version())') and installing requirements.lock (first run only, about 1-2 min)" >&2
  "$py" -m venv "$venv" >&2 || return 1
  : > "$venv/$_INUSE" || return 1
  # exact versions with hashes, no resolver: the same packages on every machine and Python
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-deps --require-hashes --progress-bar on \
    -r "$_repo/requirements.lock" 2>&1 | grep --line-buffered -v '^Ignoring ' >&2
  [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$_repo" >&2 || return 1
  "$venv/bin/python" -c "import quant, onnxruntime, onnx, numpy, yaml" >&2 || return 1
  echo "[setup] done in $(( SECONDS - t0 )) s; $venv is $(du -sh "$venv" | cut -f1)" >&2
}

_venv_mapped_by_others() {  # a process not started by run_*.sh (.venv/bin/python run by hand) with files of the folder mapped
  local real maps
  real="$(cd "$1" 2>/dev/null && pwd -P)" || return 1
  for maps in /proc/[0-9]*/maps; do
    case "$maps" in "/proc/$$/maps"|"/proc/$BASHPID/maps") continue ;; esac
    if grep -qsF -- "$real/" "$maps" 2>/dev/null; then echo "${maps#/proc/}" | cut -d/ -f1; return 0; fi
  done
  return 1
}

_want() {  # $1 python: what an environment for it must have been built from
  echo "$(cat "$_repo/requirements.lock" "$_repo/pyproject.toml" | sha256sum | cut -d' ' -f1) $("$1" -c 'import sys; print(sys.version)' | head -1)"
}

_ready() {  # $1 folder, $2 want: a complete environment built from that
  [ -x "$1/bin/python" ] && [ -f "$1/$_INUSE" ] && [ "$(cat "$1/$_STAMP" 2>/dev/null)" = "$2" ]
}

_ours() {  # $1 a path .venv-*: an environment folder this script made (never a folder of the user's)
  [[ "${1##*/}" =~ ^\.venv-[0-9a-f]{12}$ ]] && [ -d "$1" ] && [ ! -L "$1" ] && [ -f "$1/$_INUSE" ]
}

_replaceable() {  # $1 the .venv path: absent, our link, or a folder of the earlier layout (with our stamp)
  if [ -L "$1" ]; then [[ "$(readlink "$1")" =~ ^\.venv-[0-9a-f]{12}$ ]]; return; fi
  [ ! -e "$1" ] || { [ -d "$1" ] && [ -f "$1/$_STAMP" ]; }
}

_switch() {  # $1 key: .venv -> .venv-<key> with one rename; a .venv folder of the earlier layout (with our stamp) only when unused
  local link="$_repo/.venv" tmp="$_repo/.venv.link.$$" pid=""
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    exec 7>>"$_repo/.venv.inuse"  # the earlier layout's lock, held shared by its run_*.sh commands
    if ! flock -n -x 7 || pid="$(_venv_mapped_by_others "$link")"; then
      echo "[setup] $link (a folder of the earlier layout) is in use${pid:+ (PID $pid)}; this command runs from .venv-$1, and .venv becomes a link to it on a run after that command has ended" >&2
      exec 7>&-
      return 0
    fi
    # its stamp goes last: a set-up interrupted meanwhile leaves a folder the next one still knows as ours
    find "$link" -mindepth 1 -maxdepth 1 ! -name "$_STAMP" -exec rm -rf {} + && rm -rf "$link" || return 0
    exec 7>&-
  fi
  local current
  current="$(readlink "$link" 2>/dev/null)" || current=""
  [ "$current" = ".venv-$1" ] && return 0
  # a process started through the link (.venv/bin/python by hand) finds its modules through it: switched once it has ended
  if [ -n "$current" ] && pid="$(_venv_mapped_by_others "$_repo/$current")"; then
    echo "[setup] $link ($current) is in use (PID $pid); this command runs from .venv-$1, and .venv becomes a link to it on a run after that process has ended" >&2
    return 0
  fi
  rm -f "$_repo"/.venv.link.*  # a set-up killed (SIGKILL) between making its link and moving it
  ln -s ".venv-$1" "$tmp" && mv -T "$tmp" "$link"
}

_collect() {  # $1 the current key: remove the other environments no command holds
  local d
  for d in "$_repo"/.venv-*; do
    [ "$d" = "$_repo/.venv-$1" ] && continue
    _ours "$d" || continue
    (
      exec 7<"$d/$_INUSE" || exit 0
      flock -n -x 7 || exit 0                       # a command runs from it
      _venv_mapped_by_others "$d" >/dev/null && exit 0  # a process started by hand uses it
      rm -f "$d/$_STAMP"                            # no longer ready: a command that locks it meanwhile looks again
      # the marker goes last: a removal interrupted meanwhile leaves a folder the next one still knows as ours
      find "$d" -mindepth 1 -maxdepth 1 ! -name "$_INUSE" -exec rm -rf {} + && rm -rf "$d"
    ) 2>/dev/null
  done
}

_others() {  # exit 0 when an environment other than .venv-<$1> is there to collect
  local d
  for d in "$_repo"/.venv-*; do
    [ "$d" != "$_repo/.venv-$1" ] && _ours "$d" && return 0
  done
  return 1
}

_venv_dir() {  # prints the folder of the environment for the chosen Python, set up first when needed
  local py want key dir
  py="$(_pick_python)" || return 2
  want="$(_want "$py")"
  key="$(printf '%s' "$want" | sha256sum | cut -c1-12)"
  dir="$_repo/.venv-$key"
  if _ready "$dir" "$want" && [ "$(readlink "$_repo/.venv" 2>/dev/null)" = ".venv-$key" ]; then
    if _others "$key"; then  # an older environment left by a set-up while a command held it: remove it if it is free now
      ( exec 9>"$_repo/.venv.lock" && flock -n 9 && _collect "$key" ) 2>/dev/null
    fi
    echo "$dir"
    return 0
  fi
  if [ ! -w "$_repo" ]; then
    echo "error: $_repo is not writable: the set-up cannot make its environment there (.venv-$key); make it writable, or set QUANT_PYTHON to a Python with the requirements installed" >&2
    return 2
  fi
  (
    # one set-up at a time; a second command waits for the first and then finds the environment ready
    exec 9>"$_repo/.venv.lock" || exit 2
    flock 9
    if ! _replaceable "$_repo/.venv"; then  # never replace what is not ours
      echo "error: $_repo/.venv is not an environment this set-up made (a file, a folder without $_STAMP, or a link elsewhere); move it away, or use it with QUANT_PYTHON=$_repo/.venv/bin/python" >&2
      exit 2
    fi
    if ! _ready "$dir" "$want"; then
      trap 'rm -rf "$dir"; echo "[setup] interrupted; removed the unfinished $dir" >&2; exit 130' INT TERM HUP
      if ! _setup_venv "$py" "$dir"; then
        rm -rf "$dir"
        echo "error: setting up $dir failed (see above); removed it, so the next run starts clean" >&2
        exit 1
      fi
      trap - INT TERM HUP
      echo "$want" > "$dir/$_STAMP"
    fi
    _switch "$key"
    _collect "$key"
  ) || return $?
  echo "$dir"
}

quant_use_python() {  # in the calling shell: sets QUANT_PY and holds its environment until the command it execs ends
  if [ -n "${QUANT_PYTHON:-}" ]; then QUANT_PY="$QUANT_PYTHON"; return 0; fi
  local dir try
  for try in 1 2 3; do
    dir="$(_venv_dir)" || return $?
    { exec 8<"$dir/$_INUSE"; } 2>/dev/null || continue  # removed meanwhile: look again
    flock -s 8
    if [ -f "$dir/$_STAMP" ]; then QUANT_PY="$dir/bin/python"; return 0; fi
    exec 8<&-
  done
  echo "error: the environment under $_repo kept changing while this command started; run it again" >&2
  return 2
}

quant_python() {  # prints the Python to use (set up first when needed); holds nothing (quant_use_python does)
  if [ -n "${QUANT_PYTHON:-}" ]; then echo "$QUANT_PYTHON"; return 0; fi
  local dir
  dir="$(_venv_dir)" || return $?
  echo "$dir/bin/python"
}
