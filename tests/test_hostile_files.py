"""Hostile input files through the command line (issue 13): a FIFO, a device, a sparse 2 GiB file, a gzip
bomb, an IDX header whose size overflows int64, a path with a 300-byte name, oversized external data. Each
ends in a few seconds with its exit code (4 for models and data, 2 for configs) and exactly one line on
stderr naming the file: never a hang, a MemoryError, a traceback or exit 1 (see quant/files.py)."""

import gzip
import os
import subprocess
import sys
import tempfile
import time

import pytest
from conftest import REPO, run_cli, synth_config
from helpers import mnist12_like, pattern_linear, save
from test_data import gzip_bomb, idx_header
from test_models import save_external

LONG = "x" * 300  # NAME_MAX is 255 bytes


def _check(r, seconds: float, code: int, path, words: str):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.endswith("\n") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"error: {path}") and words in r.stderr, r.stderr
    assert seconds < 30, seconds  # a few seconds of start-up on a loaded CI machine; a hang ends at run_cli's timeout


def _run(*args, **kw):
    t0 = time.monotonic()
    r = run_cli(*args, timeout=60, **kw)
    return r, time.monotonic() - t0


def _benchmark(tmp_path, model=None, config=None, data_dir=None):
    """``benchmark --mode=performance`` on a good model, config and synthetic MNIST unless one is given."""
    from helpers import write_mnist

    model = model or save(mnist12_like(), tmp_path / "m.onnx")
    config = config or synth_config(tmp_path)
    data_dir = data_dir or write_mnist(tmp_path / "mnist", n_train=20, n_test=20)
    return _run("benchmark", "--mode=performance", f"--input_model={model}", f"--config={config}", f"--data_dir={data_dir}",
                "--iterations=2", "--warmup=0", "--no_plots", f"--report={tmp_path / 'b.json'}")


def _special(kind: str, tmp_path, name: str):
    """(path, words) for a hostile file called ``name`` in tmp_path."""
    if kind == "FIFO":
        os.mkfifo(tmp_path / name)  # no writer: a plain open() would block forever
        return tmp_path / name, "is a FIFO (named pipe), expected a regular file"
    if kind == "/dev/zero":
        return "/dev/zero", "is a character device, expected a regular file"  # reading would never end
    if kind == "300-byte name":
        return tmp_path / LONG / name, "cannot be opened: a name in its path is longer than the system allows"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["FIFO", "/dev/zero", "300-byte name"])
def test_hostile_model(kind, tmp_path):
    model, words = _special(kind, tmp_path, "m.onnx")
    _check(*_benchmark(tmp_path, model=model), 4, model, f"input model file {words}")
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize("kind", ["FIFO", "/dev/zero", "300-byte name"])
def test_hostile_config(kind, tmp_path):
    config, words = _special(kind, tmp_path, "c.yaml")
    _check(*_benchmark(tmp_path, config=config), 2, config, f"config file {words}")


def test_hostile_test_data_input(tmp_path):
    m = save(mnist12_like(), tmp_path / "m.onnx")
    (tmp_path / "td" / "test_data_set_0").mkdir(parents=True)
    fifo, words = _special("FIFO", tmp_path / "td" / "test_data_set_0", "input_0.pb")
    _check(*_run("check-test-data", f"--input_model={m}", "--test_data", str(tmp_path / "td")), 4, fifo, f"test data file {words}")


def test_hostile_data_folder(tmp_path):
    d = tmp_path / LONG
    _check(*_benchmark(tmp_path, data_dir=d), 4, d, "(from --data_dir): cannot open the MNIST folder (File name too long)")


def _mnist_with(tmp_path, kind: str):
    """A synthetic MNIST folder whose test images file is replaced by a hostile one: (folder, file, words)."""
    from helpers import write_mnist

    root = write_mnist(tmp_path / "mnist", n_train=20, n_test=20)
    gz = root / "t10k-images-idx3-ubyte.gz"
    gz.unlink()
    if kind == "FIFO":
        return (root, *_special("FIFO", root, gz.name))
    if kind == "sparse 2 GiB":
        raw = root / "t10k-images-idx3-ubyte"  # the raw (not gzip) name
        with open(raw, "wb") as f:
            f.write(idx_header(10000, 28, 28))
            f.truncate(2 << 30)  # no disk used, never read
        return root, raw, "MNIST file is 2147483648 bytes, over the 67108864 byte limit"
    if kind == "gzip bomb":  # 1 MB inflating to 1 GiB behind a canonical test-images header
        gzip_bomb(gz, idx_header(10000, 28, 28), 1024)
        return root, gz, "has trailing bytes: header says (10000, 28, 28) = 7840000 bytes of data"
    if kind == "int64-overflow header":
        gz.write_bytes(gzip.compress(idx_header(*[0xFFFFFFFF] * 4) + bytes(64)))
        return root, gz, "= 340282366604025813516997721482669850625 bytes of data, over the 67108864 byte limit"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["FIFO", "sparse 2 GiB", "gzip bomb", "int64-overflow header"])
def test_hostile_mnist_file(kind, tmp_path):
    """md5 checks are off (synthetic files): the bounds alone must hold."""
    root, path, words = _mnist_with(tmp_path, kind)
    _check(*_benchmark(tmp_path, data_dir=root), 4, path, words)


def _peak_rss(*args) -> tuple[subprocess.CompletedProcess, int]:
    """``python -m quant ARGS`` and the child's own peak resident memory in bytes (os.wait4's rusage; the
    test process's RUSAGE_CHILDREN would mix in every earlier child)."""
    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-m", "quant", *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, text=True)
        t0 = time.monotonic()
        while not (done := os.wait4(p.pid, os.WNOHANG))[0]:
            if time.monotonic() - t0 > 60:
                p.kill()
                os.wait4(p.pid, 0)
                pytest.fail(f"hung: {args}")
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(done[1])
        err.seek(0)
        return subprocess.CompletedProcess(args, p.returncode, "", err.read()), done[2].ru_maxrss * 1024


def test_gzip_bomb_costs_no_more_memory_than_the_declared_size(tmp_path):
    """The same run with the bomb and with a tiny bad file: the bomb adds about its declared 7.8 MB, not 1 GiB."""
    runs = {}
    for kind in ("gzip bomb", "int64-overflow header"):
        root, path, words = _mnist_with(tmp_path / kind.replace(" ", "_"), kind)
        m = save(mnist12_like(), tmp_path / "m.onnx")
        runs[kind] = _peak_rss("benchmark", "--mode=performance", f"--input_model={m}", f"--config={synth_config(tmp_path)}",
                               f"--data_dir={root}", "--iterations=2", "--warmup=0", "--no_plots", f"--report={tmp_path / 'b.json'}")
        assert runs[kind][0].returncode == 4 and words in runs[kind][0].stderr, runs[kind][0].stderr
    assert runs["gzip bomb"][1] < runs["int64-overflow header"][1] + (100 << 20), {k: v[1] for k, v in runs.items()}


def test_external_data_over_the_limit(tmp_path):
    path = save_external(pattern_linear(), tmp_path / "a")
    weights = tmp_path / "a" / "weights.bin"
    with open(weights, "r+b") as f:
        f.truncate(2 << 30)  # sparse: no disk used, never read
    r = _run("check-test-data", f"--input_model={path}", "--test_data", str(tmp_path))
    _check(*r, 4, weights, f"external data of input model {path} is 2147483648 bytes, over the 268435456 byte limit")
