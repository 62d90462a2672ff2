"""Fixtures. Real-data tests read $MNIST_DIR and $QUANT_MODELS_DIR; they skip with a stated reason
when those are absent, and FAIL instead of skipping when $QUANT_REQUIRE_REAL_DATA=1 (set by CI)."""

from __future__ import annotations

import functools
import inspect
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The commands honour a stop signal they were started with ignored (nohup: SIGHUP; a script's background job:
# SIGINT). A test run started that way would hand it on to every command a test stops: the tests start theirs
# with the default dispositions.
for _s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    if signal.getsignal(_s) is signal.SIG_IGN:
        signal.signal(_s, signal.default_int_handler if _s == signal.SIGINT else signal.SIG_DFL)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quant import config  # noqa: E402
from quant.data import CANONICAL_MD5  # noqa: E402

REAL_DATA_FIXTURES = {"mnist_dir", "models_dir", "splits", "tuned_mnist12", "classifiers"}
# a test runs neural-compressor's tuning loop when it calls tune (command line, script or API) or a helper that does
RUNS_INC = re.compile(r"""["']tune["']|run_tuning\.sh|tune_model\(|\b_tune\(|\b_tune_on_host\(|\binc\.tune\(""")
# a test of the command line starts the tool (or a shell script) in a child process; hypothesis drives many of them
RUNS_CLI = re.compile(r"run_cli\(|subprocess\.|_command\(|@given|\bscript=")


# test files of a minute or more on 2 cores, longest first (the documentation runs every README and docs command)
LONGEST_FIRST = {name: i for i, name in enumerate(("test_readme.py", "test_classifiers.py", "test_install.py", "test_signal_fuzz.py",
                                                    "test_hardening.py", "test_interface.py", "test_validate.py"))}


CALLED = re.compile(r"\b([A-Za-z_]\w*)\(")


@functools.lru_cache(maxsize=None)
def _source(fn) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""


def _reached_source(item) -> str:
    """The test's source with that of the test-module functions it calls (a ``_start`` helper that spawns the
    command) and of its fixtures, three calls deep: a test is in the tier of what it runs, not of its own lines."""
    fn = getattr(item, "function", None)
    if fn is None:
        return ""
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    todo = [(fn, 0)] + [(d.func, 0) for name in getattr(item, "fixturenames", ()) for d in defs.get(name, ())]
    seen, parts = set(), []
    while todo:
        f, depth = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        src = _source(f)
        parts.append(src)
        if depth < 3:
            scope = getattr(inspect.getmodule(f), "__dict__", {})
            for name in set(CALLED.findall(src)):
                g = scope.get(name)
                if inspect.isfunction(g) and not g.__module__.startswith("quant"):
                    todo.append((g, depth + 1))
    return "\n".join(parts)


def pytest_collection_modifyitems(config, items):
    """The tiers, marked here: ``realdata`` (reads the real MNIST files or zoo models), ``inc`` (runs
    neural-compressor's tuning loop) and ``cli`` (runs the command line in child processes). The fast tier,
    the inner loop for a change, is ``pytest -m "not realdata and not inc and not cli"``; CI runs everything."""
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.realdata)
        source = _reached_source(item)
        if not source:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if RUNS_INC.search(source) or "tune" in params.values():
            item.add_marker(pytest.mark.inc)
        if RUNS_CLI.search(source) or item.get_closest_marker("hypothesis") is not None:
            item.add_marker(pytest.mark.cli)
    # the longest files first, so that with several workers (run_tests.sh) none of them starts last and runs alone
    items.sort(key=lambda item: LONGEST_FIRST.get(item.path.name, len(LONGEST_FIRST)))


def _need(reason: str):
    if os.environ.get("QUANT_REQUIRE_REAL_DATA") == "1":
        pytest.fail(f"real data required ($QUANT_REQUIRE_REAL_DATA=1) but {reason}")
    pytest.skip(reason)


def _env_dir(var: str, what: str, required: list[str]) -> Path:
    d = os.environ.get(var)
    if not d:
        _need(f"${var} is not set (point it at a folder with {what})")
    p = Path(d).resolve()  # tests run commands from other folders
    missing = [r for r in required if not (p / r).is_file()]
    if missing:
        _need(f"${var}={d} lacks {missing}")
    return p


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return _env_dir("MNIST_DIR", "the four MNIST IDX files", [f"{s}.gz" for s in CANONICAL_MD5])


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return _env_dir("QUANT_MODELS_DIR", "the zoo's mnist-*.onnx", ["mnist-12.onnx", "mnist-12-int8.onnx"])


@pytest.fixture(scope="session")
def splits(mnist_dir):
    from quant.data import load_split

    return {s: load_split(mnist_dir, s, verify=True) for s in ("train", "test")}


def _drop_dac_capabilities() -> None:
    """Runs in the child before exec. Root bypasses file permission bits (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH); dropping both from the bounding set makes the exec'd program subject to
    them like any user, so "unreadable file" and "folder not writable" can be tested as root."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, script: str | None = None, timeout: int = 300,
            unprivileged: bool = False):
    """Run ``python -m quant ARGS`` (or a repo shell script) in a subprocess; returns CompletedProcess.

    ``unprivileged``: when running as root, the child loses the capabilities that bypass file
    permissions, so chmod'ed files and folders behave as they would for a normal user."""
    e = dict(os.environ)
    e["QUANT_PYTHON"] = sys.executable
    e.update(env or {})
    cmd = ["bash", str(REPO / script), *args] if script else [sys.executable, "-m", "quant", *args]
    pre = _drop_dac_capabilities if unprivileged and os.geteuid() == 0 else None
    return subprocess.run(cmd, cwd=cwd or REPO, env=e, capture_output=True, text=True, timeout=timeout, preexec_fn=pre)


def write_config(path: Path, overrides: dict | None = None, base: str | None = None) -> Path:
    """A YAML config: mnist.yaml's content (or ``base``) with nested ``overrides`` applied."""
    import yaml

    doc = yaml.safe_load((REPO / "mnist.yaml").read_text()) if base is None else yaml.safe_load(base)

    def merge(d, o):
        for k, v in o.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict) and k != "accuracy_criterion":
                merge(d[k], v)
            else:
                d[k] = v

    merge(doc, overrides or {})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tuned_mnist12(tmp_path_factory, mnist_dir, models_dir):
    """The real mnist-12 tuned once with the default mnist.yaml through run_tuning.sh."""
    out = tmp_path_factory.mktemp("tuned") / "mnist-12-int8.onnx"
    r = run_cli(f"--input_model={models_dir / 'mnist-12.onnx'}", "--config=mnist.yaml", f"--output_model={out}",
                f"--data_dir={mnist_dir}", script="run_tuning.sh")
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.fixture
def synth_dir(tmp_path) -> Path:
    from helpers import write_mnist

    return write_mnist(tmp_path / "mnist")


def synth_config(tmp_path: Path, overrides: dict | None = None) -> Path:
    """Config for synthetic data: md5 checks off, no manifest, no download."""
    o = {"dataset": {"verify_md5": False, "download": False}, "quantization": {"calibration": {"manifest": None, "sampling_size": 50}}}
    for k, v in (overrides or {}).items():
        if isinstance(v, dict) and isinstance(o.get(k), dict):
            o[k] = {**o[k], **v}
        else:
            o[k] = v
    return write_config(tmp_path / "synth.yaml", o)


@pytest.fixture
def default_config():
    return config.defaults()
