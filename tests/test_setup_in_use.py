"""The set-up of run_*.sh is safe while other commands run from the same checkout: a new environment is built
beside the old one (.venv-<key>) and .venv, a link, is switched with one rename; a command keeps the folder it
started from until it ends, and an old folder is removed only when no command holds it and no process has its
files mapped. A failed or interrupted set-up leaves .venv as it was and nothing half-built.

The set-up runs for real (bash, flock, venv layout) with a stand-in Python: ``-m venv`` makes a folder whose
``bin/python`` answers ``-m pip`` with a note (optionally slow, or failing) and runs this test's interpreter
otherwise, so the import check passes and no package is downloaded."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO

STUB = r"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" || exit 1
  printf '#!/bin/sh\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "[stub pip] $*" >&2; sleep "${STUB_PIP_SECONDS:-0}"; exit "${STUB_PIP_RC:-0}"; fi\nexec %s "$@"\n' > "$3/bin/python"
  chmod +x "$3/bin/python"
  echo "home = stub" > "$3/pyvenv.cfg"
  head -c 4096 /dev/zero > "$3/lib.so"
  exit 0
fi
exec %s "$@"
"""


def _repo_copy(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for f in ("scripts/env.sh", "run_tests.sh", "run_benchmark.sh", "run_tuning.sh", "pyproject.toml"):
        shutil.copy(REPO / f, repo / f)
    (repo / "requirements.lock").write_text("stub-package==1.0 --hash=sha256:" + "0" * 64 + "\n")
    stub = tmp_path / "python3"
    stub.write_text(STUB % (sys.executable, sys.executable))
    stub.chmod(0o755)
    return repo, stub


def _env(stub, **extra):
    return {k: v for k, v in os.environ.items() if k not in ("QUANT_PYTHON", "PYTHON")} | {"PYTHON": str(stub)} | extra


def _run(repo, stub, script="run_benchmark.sh", timeout=120, **extra):
    return subprocess.run(["bash", str(repo / script), "--help"], env=_env(stub, **extra), capture_output=True, text=True, timeout=timeout)


def _envs(repo):
    return sorted(p.name for p in repo.iterdir() if re.fullmatch(r"\.venv-[0-9a-f]{12}", p.name))


def _current(repo):
    return os.readlink(repo / ".venv")


def _holder(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kw)
    assert p.stdout.readline().strip() == "ready"
    return p


def _stop(p):
    p.kill()
    p.wait()


def _change_lock(repo):
    with open(repo / "requirements.lock", "a") as f:
        f.write("# a changed lock\n")


def test_first_use_makes_a_versioned_environment_and_the_documented_link(tmp_path):
    repo, stub = _repo_copy(tmp_path)
    r = _run(repo, stub)
    assert r.returncode == 0 and "usage: python -m quant benchmark" in r.stdout, r.stderr
    [env] = _envs(repo)
    assert _current(repo) == env and (repo / ".venv" / "bin" / "python").exists()
    assert r.stderr.count("[stub pip]") == 2 and "[setup] done" in r.stderr
    r = _run(repo, stub)  # ready: no second set-up
    assert r.returncode == 0 and "[setup]" not in r.stderr and _envs(repo) == [env]


def test_a_rebuild_while_a_command_runs_from_the_old_environment_builds_beside_it(tmp_path):
    """The set-up used to refuse (exit 2) while a command ran from .venv; now it builds the new environment beside
    it and switches the link; the running command's folder stays whole until it ends, and is removed after."""
    repo, stub = _repo_copy(tmp_path)
    assert _run(repo, stub).returncode == 0
    [old] = _envs(repo)
    holder = _holder(["bash", "-c", f'source "{repo}/scripts/env.sh"; quant_use_python || exit 9; echo ready; echo "$QUANT_PY" >&2; sleep 60'],
                     env=_env(stub), stderr=subprocess.PIPE)
    try:
        _change_lock(repo)
        r = _run(repo, stub)
        assert r.returncode == 0 and "usage: python -m quant benchmark" in r.stdout, r.stderr
        [new] = [e for e in _envs(repo) if e != old]
        assert _current(repo) == new and sorted(_envs(repo)) == sorted([old, new])
        assert (repo / old / "bin" / "python").exists() and (repo / old / "lib.so").exists()  # the running command's files
        assert _run(repo, stub).returncode == 0 and (repo / old).exists()  # still held: kept
    finally:
        _stop(holder)
    assert holder.stderr.read().strip() == str(repo / old / "bin" / "python")  # it ran its own folder, not the link
    r = _run(repo, stub)  # the next run finds the old folder free and removes it
    assert r.returncode == 0 and _envs(repo) == [new], r.stderr


def test_an_old_environment_a_process_has_mapped_is_kept_until_it_ends(tmp_path):
    repo, stub = _repo_copy(tmp_path)
    assert _run(repo, stub).returncode == 0
    [old] = _envs(repo)
    code = (f"import mmap; f = open({str(repo / '.venv' / 'lib.so')!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); "
            "print('ready', flush=True); import time; time.sleep(60)")
    holder = _holder([sys.executable, "-c", code])  # started by hand, through the link: no lock
    try:
        _change_lock(repo)
        r = _run(repo, stub)
        assert r.returncode == 0 and (repo / old / "lib.so").exists() and len(_envs(repo)) == 2, r.stderr
        assert _current(repo) == old and "is in use" in r.stderr  # the link it reads through is not switched under it
    finally:
        _stop(holder)
    assert _run(repo, stub).returncode == 0 and old not in _envs(repo) and _current(repo) != old


def test_concurrent_first_runs_build_once(tmp_path):
    repo, stub = _repo_copy(tmp_path)
    procs = [subprocess.Popen(["bash", str(repo / "run_benchmark.sh"), "--help"], env=_env(stub, STUB_PIP_SECONDS="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert sum(err.count("[stub pip]") for _, err in outs) == 2 and len(_envs(repo)) == 1


def test_a_failed_rebuild_leaves_the_old_environment_and_nothing_half_built(tmp_path):
    repo, stub = _repo_copy(tmp_path)
    assert _run(repo, stub).returncode == 0
    [old] = _envs(repo)
    _change_lock(repo)
    r = _run(repo, stub, STUB_PIP_RC="1")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].endswith("removed it, so the next run starts clean"), r.stderr
    assert _envs(repo) == [old] and _current(repo) == old and not list(repo.glob(".venv.link.*"))


def test_an_interrupted_rebuild_leaves_the_old_environment_and_nothing_half_built(tmp_path):
    repo, stub = _repo_copy(tmp_path)
    assert _run(repo, stub).returncode == 0
    [old] = _envs(repo)
    _change_lock(repo)
    p = subprocess.Popen(["bash", str(repo / "run_benchmark.sh"), "--help"], env=_env(stub, STUB_PIP_SECONDS="30"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in p.stderr:
        if "[stub pip]" in line:
            break
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C: the whole process group, as a terminal sends it
    _, err = p.communicate(timeout=60)
    assert p.returncode in (130, -signal.SIGINT) and "[setup] interrupted; removed the unfinished" in err, err  # a shell says 130
    assert _envs(repo) == [old] and _current(repo) == old


def test_a_folder_of_the_earlier_layout_is_replaced_when_free_and_left_while_in_use(tmp_path):
    repo, stub = _repo_copy(tmp_path)
    legacy = repo / ".venv"
    (legacy / "bin").mkdir(parents=True)
    (legacy / "bin" / "python").symlink_to(sys.executable)
    (legacy / "lib.so").write_bytes(b"\0" * 4096)
    (legacy / ".mnist-quant-installed").write_text("an older lock\n")  # the earlier layout's stamp
    holder = _holder(["bash", "-c", f'exec 8>>"{repo}/.venv.inuse"; flock -s 8; echo ready; sleep 60'])  # an earlier run_*.sh
    try:
        r = _run(repo, stub)
        assert r.returncode == 0 and "is in use" in r.stderr and "usage:" in r.stdout, r.stderr
        assert legacy.is_dir() and not legacy.is_symlink() and (legacy / "lib.so").exists() and len(_envs(repo)) == 1
    finally:
        _stop(holder)
    r = _run(repo, stub)
    assert r.returncode == 0 and legacy.is_symlink() and _current(repo) == _envs(repo)[0], r.stderr


def test_a_users_own_folders_beside_it_are_never_removed(tmp_path):
    repo, stub = _repo_copy(tmp_path)
    mine = [repo / ".venv-mine", repo / ".venv-0123456789ab"]  # the second: our name pattern, not our marker
    for d in mine:
        (d / "bin").mkdir(parents=True)
        (d / "notes.txt").write_text("mine")
    assert _run(repo, stub).returncode == 0
    _change_lock(repo)
    assert _run(repo, stub).returncode == 0
    assert all((d / "notes.txt").read_text() == "mine" for d in mine)


def test_the_documented_path_runs_the_current_environment(tmp_path):
    repo, stub = _repo_copy(tmp_path)
    assert _run(repo, stub).returncode == 0
    _change_lock(repo)
    assert _run(repo, stub).returncode == 0
    r = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", "print('ok')"], capture_output=True, text=True, timeout=60)
    assert r.stdout == "ok\n" and len(_envs(repo)) == 1 and time.time()


def test_a_venv_that_is_not_ours_is_never_replaced(tmp_path):
    """A file named .venv (some tools keep an environment's name in one) or a venv of the user's: the set-up
    used to delete whatever stood at .venv when its stamp did not match."""
    for make in ("file", "folder", "link"):
        repo, stub = _repo_copy(tmp_path / make)
        target = repo / ".venv"
        if make == "file":
            target.write_text("myenv\n")
        elif make == "folder":
            (target / "bin").mkdir(parents=True)
            (target / "pyvenv.cfg").write_text("home = /usr/bin\n")
        else:
            (tmp_path / "myenv").mkdir(exist_ok=True)
            target.symlink_to(tmp_path / "myenv")
        r = _run(repo, stub)
        assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "is not an environment this set-up made" in r.stderr
        if make == "link":
            assert os.readlink(target) == str(tmp_path / "myenv")
        else:
            assert (target.read_text() == "myenv\n") if make == "file" else (target / "pyvenv.cfg").exists()
        assert _envs(repo) == []


def test_a_checkout_the_set_up_cannot_write_is_one_line(tmp_path):
    from conftest import _drop_dac_capabilities

    repo, stub = _repo_copy(tmp_path)
    repo.chmod(0o555)
    try:
        r = subprocess.run(["bash", str(repo / "run_benchmark.sh"), "--help"], env=_env(stub), capture_output=True, text=True, timeout=60,
                           preexec_fn=_drop_dac_capabilities if os.geteuid() == 0 else None)
    finally:
        repo.chmod(0o755)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "is not writable" in r.stderr, r.stderr
    assert _envs(repo) == []
