"""The set-up of run_*.sh never deletes a .venv another command runs from: a rebuild it needs is refused
in one line (exit 2) while a command started by run_*.sh holds the .venv, or a process has its files mapped."""

import os
import shutil
import subprocess
import sys
import time

from conftest import REPO


def _repo_copy(tmp_path):
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for f in ("scripts/env.sh", "run_tests.sh", "run_benchmark.sh", "pyproject.toml"):
        shutil.copy(REPO / f, repo / f)
    (repo / "requirements.lock").write_text("no-such-package-mnist-quant==0.0.1 --hash=sha256:" + "0" * 64 + "\n")
    venv = repo / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "lib.so").write_bytes(b"\0" * 4096)
    (venv / ".mnist-quant-installed").write_text("an older lock\n")  # the stamp no longer matches: a rebuild is due
    return repo, venv


def _env():
    return {k: v for k, v in os.environ.items() if k not in ("QUANT_PYTHON", "PYTHON")} | {"PYTHON": sys.executable}


def _holder(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kw)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_a_rebuild_is_refused_while_a_command_runs_from_the_venv(tmp_path):
    repo, venv = _repo_copy(tmp_path)
    holder = _holder(["bash", "-c", f'source "{repo}/scripts/env.sh"; quant_hold_venv; echo ready; sleep 60'], env=_env())
    try:
        t0 = time.monotonic()
        r = subprocess.run(["bash", str(repo / "run_benchmark.sh"), "--help"], env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"error: {venv} must be rebuilt") and "a command is running from it" in r.stderr, r.stderr
        assert time.monotonic() - t0 < 30 and (venv / "bin" / "python").exists() and (venv / "lib.so").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_rebuild_is_refused_while_a_process_has_the_venvs_files_mapped(tmp_path):
    repo, venv = _repo_copy(tmp_path)
    code = f"import mmap; f = open({str(venv / 'lib.so')!r}, 'rb'); m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ); print('ready', flush=True); import time; time.sleep(60)"
    holder = _holder([sys.executable, "-c", code])
    try:
        r = subprocess.run(["bash", str(repo / "run_benchmark.sh"), "--help"], env=_env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and f"(PID {holder.pid})" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert (venv / "lib.so").exists()
    finally:
        holder.kill()
        holder.wait()
    # nobody uses it any more: the rebuild goes ahead (and fails on this copy's uninstallable lock, removing it)
    r = subprocess.run(["bash", str(repo / "run_benchmark.sh"), "--help"], env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "removed it, so the next run starts clean" in r.stderr, r.stderr[-2000:]
    assert not venv.exists()
