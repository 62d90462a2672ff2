"""--threads N is compared with every limit that could make onnxruntime wait forever for its pool threads:
the address space, the user's process limit and the cgroup's pids limit (fake /proc and /sys trees)."""

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REPO, synth_config
from helpers import mnist12_like, save, write_mnist

from quant.errors import UsageError
from quant.runtime import threads


def _proc(tmp_path, processes, cgroup="0::/\n", uid_map=None):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "status").write_text("Name:\tpython\nVmSize:\t  1000 kB\n")
    (proc / "self" / "cgroup").write_text(cgroup)
    if uid_map is not None:
        (proc / "self" / "uid_map").write_text(uid_map)
    for pid, (uid, n) in processes.items():
        (proc / str(pid)).mkdir()
        (proc / str(pid) / "status").write_text(f"Name:\tx\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nThreads:\t{n}\n")
    (proc / "999").mkdir()  # a process that ended between listing and reading: no status
    return proc


def _cgroup(root, rel, top, current):
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "pids.max").write_text(f"{top}\n")
    (d / "pids.current").write_text(f"{current}\n")


def test_threads_of_the_user_are_summed_over_processes(tmp_path):
    proc = _proc(tmp_path, {1: (0, 1), 10: (1000, 5), 11: (1000, 7), 12: (1001, 50)})
    assert threads.user_threads(1000, proc) == 12
    assert threads.user_threads(0, proc) == 1


def test_the_process_limit_counts_the_users_running_threads(tmp_path, monkeypatch):
    proc = _proc(tmp_path, {10: (1000, 90)})
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(resource, "getrlimit", lambda r: (100, 100) if r == resource.RLIMIT_NPROC else (resource.RLIM_INFINITY,) * 2)
    threads.check_threads(9, proc, tmp_path / "sys")  # 90 running + 8 new + 2 spare = 100
    with pytest.raises(UsageError) as e:
        threads.check_threads(10, proc, tmp_path / "sys")
    assert str(e.value).startswith("--threads 10: the process limit (ulimit -u, 100 threads for this user, 90 running) "
                                   "leaves room for about 9 thread(s)") and "use fewer threads" in str(e.value)


def test_root_of_the_initial_namespace_is_not_held_to_the_process_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(resource, "getrlimit", lambda r: (10, 10) if r == resource.RLIMIT_NPROC else (resource.RLIM_INFINITY,) * 2)
    threads.check_threads(64, _proc(tmp_path / "a", {1: (0, 200)}, uid_map="         0          0 4294967295\n"), tmp_path / "sys")
    with pytest.raises(UsageError, match="ulimit -u"):  # root inside a user namespace is an ordinary user to the kernel
        threads.check_threads(64, _proc(tmp_path / "b", {1: (0, 2)}, uid_map="0 100000 65536\n"), tmp_path / "sys")


@pytest.mark.parametrize("layout", ["v2", "v1", "hybrid"])
def test_the_tightest_cgroup_pids_limit_of_the_process_and_its_ancestors_counts(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(resource, "getrlimit", lambda r: (resource.RLIM_INFINITY,) * 2)
    sys_root = tmp_path / "sys"
    if layout == "v2":
        proc = _proc(tmp_path, {}, cgroup="0::/system.slice/job.scope\n")
        base = sys_root / "fs" / "cgroup"
    elif layout == "hybrid":  # v1 controllers at /sys/fs/cgroup, the unified hierarchy below it
        proc = _proc(tmp_path, {}, cgroup="12:memory:/x\n0::/system.slice/job.scope\n")
        (sys_root / "fs" / "cgroup" / "memory").mkdir(parents=True)
        base = sys_root / "fs" / "cgroup" / "unified"
    else:
        proc = _proc(tmp_path, {}, cgroup="12:memory:/x\n8:pids:/system.slice/job.scope\n1:name=systemd:/y\n")
        base = sys_root / "fs" / "cgroup" / "pids"
    _cgroup(base, "system.slice/job.scope", "max", 3)
    _cgroup(base, "system.slice", 40, 20)  # the parent's limit is the tight one: 20 left
    _cgroup(base, ".", "max", 500)
    assert threads.pids_room(proc, sys_root) == (20, 40, 20)
    threads.check_threads(19, proc, sys_root)  # 18 new + 2 spare = 20
    with pytest.raises(UsageError) as e:
        threads.check_threads(20, proc, sys_root)
    assert str(e.value).startswith("--threads 20: the cgroup's pids limit (pids.max 40, 20 in use) leaves room for about 19 thread(s)")


def test_no_cgroup_files_or_no_limit_means_no_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda r: (resource.RLIM_INFINITY,) * 2)
    proc = _proc(tmp_path, {}, cgroup="0::/gone\n")
    assert threads.pids_room(proc, tmp_path / "sys") is None
    _cgroup(tmp_path / "sys" / "fs" / "cgroup", "gone", "max", 10)
    assert threads.pids_room(proc, tmp_path / "sys") is None
    threads.check_threads(256, proc, tmp_path / "sys")
    (proc / "self" / "cgroup").unlink()
    threads.check_threads(256, proc, tmp_path / "sys")


def test_one_thread_is_never_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda r: (1, 1))
    threads.check_threads(1, tmp_path / "none", tmp_path / "none")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to run the command as another user")
def test_threads_the_process_limit_cannot_serve_are_refused_on_the_command_line():
    """RLIMIT_NPROC does not bind root, so the command runs as nobody (its own files in a world-readable folder)."""
    work = Path(tempfile.mkdtemp(prefix="mnist-quant-nproc-"))
    try:
        work.chmod(0o777)
        m = save(mnist12_like(), work / "m.onnx")
        data = write_mnist(work / "mnist", n_train=60, n_test=60)
        cfg = synth_config(work)
        for p in work.rglob("*"):
            p.chmod(0o777 if p.is_dir() else 0o666)

        def limit():
            resource.setrlimit(resource.RLIMIT_NPROC, (6, 6))

        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", HOME=str(work))
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "quant", "benchmark",
                            f"--input_model={m}", f"--config={cfg}", f"--data_dir={data}", "--threads=8", "--iterations=2",
                            "--warmup=0", "--mode=performance", f"--report={work / 'b.json'}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120, preexec_fn=limit)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("error: --threads 8: the process limit (ulimit -u, 6 threads for this user") and "use fewer threads" in last, r.stderr
        assert "Traceback" not in r.stderr and not (work / "b.json").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)
