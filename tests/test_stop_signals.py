"""Stop signals always stop, also while onnxruntime runs native code; every inference has a time bound;
signals during start-up, repeated signals and signals after the commit end in one truthful line."""

import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from conftest import REPO, synth_config, write_config
from helpers import mnist12_like, save
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def loop_model(trips: int = 10**12) -> onnx.ModelProto:
    """A valid MNIST-shaped classifier whose Loop of ``trips`` iterations never finishes in practice."""
    body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Identity", ["v_in"], ["v_out"])], "body",
                        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, []),
                         h.make_tensor_value_info("v_in", T.FLOAT, None)],
                        [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, None)])
    w = nh.from_array(np.random.default_rng(0).standard_normal((784, 10)).astype(np.float32), "W")
    inits = [w, nh.from_array(np.array(trips, dtype=np.int64), "M"), nh.from_array(np.array(True), "C"),
             nh.from_array(np.array([-1, 784], dtype=np.int64), "S")]
    g = h.make_graph([h.make_node("Loop", ["M", "C", "X"], ["Y"], body=body), h.make_node("Reshape", ["Y", "S"], ["F"]),
                      h.make_node("MatMul", ["F", "W"], ["out"])], "g",
                     [h.make_tensor_value_info("X", T.FLOAT, ["N", 1, 28, 28])], [h.make_tensor_value_info("out", T.FLOAT, ["N", 10])],
                     inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _start(args, cwd, **kw):
    return subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


def _benchmark_loop(tmp_path, synth_dir, extra=()):
    m = save(loop_model(), tmp_path / "loop.onnx")
    return ["-m", "quant", "benchmark", f"--input_model={m}", "--mode=accuracy", f"--config={synth_config(tmp_path)}",
            f"--data_dir={synth_dir}", f"--report={tmp_path / 'out' / 'b.json'}", *extra]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_stop_signal_ends_a_model_that_never_finishes_within_two_seconds(sig, tmp_path, synth_dir):
    """A Loop of 10^12 trips: Ctrl-C and SIGTERM were ignored for as long as onnxruntime ran (only SIGKILL ended it)."""
    (tmp_path / "out").mkdir()
    p = _start(_benchmark_loop(tmp_path, synth_dir), tmp_path)
    time.sleep(4)  # loaded, checked and inside session.run by now (the Loop never returns)
    assert p.poll() is None
    t0 = time.monotonic()
    os.killpg(p.pid, sig)
    out, err = p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == 128 + sig and took < 3, (p.returncode, took, err)
    said = "interrupted; no output written" if sig == signal.SIGINT else f"interrupted by {sig.name}; no output written"
    assert err.strip().splitlines()[-1] == said and "Traceback" not in err, err
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("cmd", ["tune", "benchmark", "validate"])
def test_an_inference_that_outlasts_evaluation_timeout_seconds_ends_in_exit_4(cmd, tmp_path, synth_dir):
    m = save(loop_model(), tmp_path / "loop.onnx")
    good = save(mnist12_like(), tmp_path / "good.onnx")
    cfg = synth_config(tmp_path, {"evaluation": {"timeout_seconds": 1}})
    common = [f"--config={cfg}", f"--data_dir={synth_dir}"]
    args = {"tune": ["tune", f"--input_model={m}", f"--output_model={tmp_path / 'q.onnx'}"],
            "benchmark": ["benchmark", f"--input_model={m}", "--mode=accuracy", f"--report={tmp_path / 'b.json'}"],
            "validate": ["validate", f"--input_model={m}", f"--baseline_model={good}", f"--report={tmp_path / 'v.json'}"]}[cmd]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "quant", *args, *common], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 4, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {m}: one inference ran longer than evaluation.timeout_seconds (1 s)") and "Traceback" not in r.stderr
    assert time.monotonic() - t0 < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx", "loop.onnx", "mnist", "synth.yaml"]


def test_the_inference_time_bound_is_a_checked_config_key(tmp_path):
    from conftest import run_cli

    for bad in (0, -1, ".nan"):
        cfg = write_config(tmp_path / "c.yaml", {"evaluation": {"timeout_seconds": bad}})
        r = run_cli("benchmark", f"--input_model={save(mnist12_like(), tmp_path / 'm.onnx')}", f"--config={cfg}")
        assert r.returncode == 2 and "evaluation.timeout_seconds" in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_signals_during_start_up_and_repeated_signals_never_print_a_traceback(sig, tmp_path, synth_dir):
    (tmp_path / "out").mkdir()
    args = _benchmark_loop(tmp_path, synth_dir)
    for delay in (0.15, 0.3, 0.5, 0.8, 1.2, 2.0, 3.5):
        p = _start(args, tmp_path)
        time.sleep(delay)
        os.killpg(p.pid, sig)
        time.sleep(0.02)
        try:
            os.killpg(p.pid, sig)  # a second one while the first is being handled
        except ProcessLookupError:
            pass
        out, err = p.communicate(timeout=30)
        assert p.returncode in (128 + sig, -sig), (delay, p.returncode, err)  # -sig: before Python set up its handlers
        assert "Traceback" not in err and "Error" not in err, (delay, err)
        assert p.returncode < 0 or err.strip().splitlines()[-1].startswith("interrupted"), (delay, err)
    assert list((tmp_path / "out").iterdir()) == []


_BLOCKED_STDOUT = """
import sys, time
from quant import cli
class Blocked:
    def write(self, s):
        print("[test] printing after the commit", file=sys.stderr, flush=True)
        time.sleep(60)
    def flush(self):
        pass
sys.stdout = Blocked()
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_signal_after_the_commit_says_the_outputs_were_written(tmp_path, synth_dir):
    """Said "no output written" although the outputs had been replaced (stdout blocked by a paused terminal)."""
    m = save(mnist12_like(), tmp_path / "m.onnx")
    dest = tmp_path / "sets"
    p = _start(["-c", _BLOCKED_STDOUT, "write-test-data", f"--input_model={m}", f"--config={synth_config(tmp_path)}",
                f"--data_dir={synth_dir}", f"--output_dir={dest}"], REPO)
    for line in p.stderr:
        if "[test] printing after the commit" in line:
            os.killpg(p.pid, signal.SIGTERM)
            break
    err = p.communicate(timeout=30)[1]
    assert p.returncode == 143 and err.strip().splitlines()[-1] == "interrupted by SIGTERM after the outputs were written", err
    assert sorted(x.name for x in dest.iterdir()) == ["test_data_set_0", "test_data_set_1", "test_data_set_2"]


def test_threads_the_address_space_cannot_hold_are_refused_not_a_deadlock(tmp_path, synth_dir):
    """--threads=256 under a 4 GB address-space limit hung with 340 threads and ignored SIGTERM."""
    m = save(mnist12_like(), tmp_path / "m.onnx")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    r = subprocess.run([sys.executable, "-m", "quant", "benchmark", f"--input_model={m}", f"--config={synth_config(tmp_path)}",
                        f"--data_dir={synth_dir}", "--threads=256", "--iterations=2", "--warmup=0", f"--report={tmp_path / 'b.json'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --threads 256: the address-space limit (ulimit -v") and "use fewer threads" in last, r.stderr
    assert not (tmp_path / "b.json").exists()


def _handles(pid: int, sig: int) -> bool:
    """The process has a handler of its own for ``sig`` (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def test_a_stop_signal_at_any_moment_of_start_up_ends_in_one_line_and_128_plus_n(tmp_path, synth_dir):
    """Before cli.main() installed its handlers, SIGTERM ended the process silently (143 by the signal) and SIGINT
    with a KeyboardInterrupt traceback. python -m quant sets handlers before it imports anything: once its code
    runs (SigCgt shows SIGTERM caught when the signal is sent), any stop signal ends in the one closing line and
    128 + n. Before that, in the interpreter's own start-up, Python's defaults apply (SIGTERM/SIGHUP end it
    silently; SIGINT is Python's own KeyboardInterrupt traceback while it imports its site module, runpy or the
    package, exit 1 or killed by the signal)."""
    import random

    (tmp_path / "out").mkdir()
    rng = random.Random(7)
    runs = {"benchmark": _benchmark_loop(tmp_path, synth_dir), "config": ["-m", "quant", "config"]}
    seen = set()
    for i in range(36):
        cmd = "config" if i % 3 == 2 else "benchmark"
        sig = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)[i % 3]
        delay, wait_for_handlers = rng.uniform(0, 0.3), i % 2 == 0
        p = _start(runs[cmd], tmp_path)
        if wait_for_handlers:
            t0 = time.monotonic()
            while not _handles(p.pid, signal.SIGTERM) and p.poll() is None and time.monotonic() - t0 < 30:
                time.sleep(0.0005)
        time.sleep(delay)
        ours = _handles(p.pid, signal.SIGTERM)  # our handlers were in place when the signal was sent
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
        case = (cmd, sig.name, round(delay, 3), ours, p.returncode, err[-1500:])
        said = "interrupted; no output written" if sig == signal.SIGINT else f"interrupted by {sig.name}; no output written"
        if p.returncode == 0:
            assert cmd == "config" and err == "", case  # finished before the signal came
        elif ours:  # also after the run (config printed): a late signal is ignored, or said as a stop
            assert p.returncode == 128 + sig and err.splitlines() == [said], case
        else:  # the interpreter's own start-up, before any code of ours ran
            assert (p.returncode == 128 + sig and err.splitlines() == [said]) or (p.returncode == -sig and err == "") or (
                sig == signal.SIGINT and p.returncode in (1, -sig) and err.rstrip().endswith("KeyboardInterrupt")), case
        seen.add((p.returncode, ours))
    assert {(130, True), (143, True), (129, True)} <= seen, seen
    assert list((tmp_path / "out").iterdir()) == []


def slow_on_dim_images(threshold: float = 0.9, trips: int = 10**12) -> onnx.ModelProto:
    """mnist12_like behind a Loop that passes the input through: no trip when the batch's brightest pixel reaches
    ``threshold`` (the test split, written at 255), ``trips`` when it is dimmer (a train split written at 200). The
    fp32 baseline runs at once; neural-compressor's calibration, on train images, never ends."""
    m = mnist12_like(batch="N")
    g = m.graph
    body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Identity", ["v_in"], ["v_out"])], "body",
                        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c_in", T.BOOL, []),
                         h.make_tensor_value_info("v_in", T.FLOAT, None)],
                        [h.make_tensor_value_info("c_out", T.BOOL, []), h.make_tensor_value_info("v_out", T.FLOAT, None)])
    g.initializer.extend([nh.from_array(np.array(threshold, np.float32), "thr"), nh.from_array(np.array(trips, np.int64), "trips"),
                          nh.from_array(np.array(True), "cond")])
    for n in g.node:
        n.input[:] = ["passed" if x == "Input3" else x for x in n.input]
    pre = [h.make_node("ReduceMax", ["Input3"], ["mx"], keepdims=0, name="Max"), h.make_node("Less", ["mx", "thr"], ["dim"], name="Dim"),
           h.make_node("Cast", ["dim"], ["dim64"], to=T.INT64, name="CastDim"), h.make_node("Mul", ["dim64", "trips"], ["n"], name="Trips"),
           h.make_node("Loop", ["n", "cond", "Input3"], ["passed"], body=body, name="Wait")]
    nodes = pre + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m


def _tune_slow_calibration(tmp_path, overrides=None):
    from helpers import write_mnist

    m = save(slow_on_dim_images(), tmp_path / "slow.onnx")
    data = write_mnist(tmp_path / "mnist", train_brightness=200)
    for d in ("out", "tmp", "home"):
        (tmp_path / d).mkdir()
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), HOME=str(tmp_path / "home"))
    return _start(["-m", "quant", "tune", f"--input_model={m}", f"--output_model={tmp_path / 'out' / 'q.onnx'}",
                   f"--config={synth_config(tmp_path, overrides)}", f"--data_dir={data}"], tmp_path, env=env)


def _left_behind(tmp_path):
    return [p for d in ("out", "tmp", "home") for p in (tmp_path / d).iterdir()] + list(tmp_path.glob(".*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_during_neural_compressors_calibration_ends_within_three_seconds(sig, tmp_path):
    """INC's calibration runs in sessions of its own, which the shared RunOptions did not reach: a signal there
    ended the run only by the forced exit, and its runs had no time bound. While INC runs, its runs use them."""
    p = _tune_slow_calibration(tmp_path)
    for line in p.stderr:
        if line.startswith("[tune] fp32 baseline"):
            break
    time.sleep(1.5)  # INC is calibrating now: its session runs the Loop on the dim train images
    assert p.poll() is None and [x.name[:16] for x in (tmp_path / "tmp").iterdir()] == ["mnist-quant-inc-"]
    t0 = time.monotonic()
    os.killpg(p.pid, sig)
    _, rest = p.communicate(timeout=30)
    took = time.monotonic() - t0
    said = "interrupted; no output written" if sig == signal.SIGINT else f"interrupted by {sig.name}; no output written"
    assert p.returncode == 128 + sig and rest.splitlines() == [said], (p.returncode, rest)
    assert took < 3, took
    assert _left_behind(tmp_path) == []


def test_neural_compressors_own_inferences_have_the_time_bound(tmp_path):
    p = _tune_slow_calibration(tmp_path, {"evaluation": {"timeout_seconds": 1}})
    _, err = p.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert p.returncode == 4 and "Traceback" not in err, err
    assert last.startswith(f"error: {tmp_path / 'slow.onnx'} (neural-compressor's calibration): one inference ran longer than "
                           "evaluation.timeout_seconds (1 s)"), err
    assert _left_behind(tmp_path) == []


def test_a_stop_signal_the_command_was_started_with_ignored_stays_ignored(tmp_path, synth_dir):
    """nohup ignores SIGHUP so that a run survives its terminal: the command's handlers used to take it over, and a
    closed terminal ended a nohup'ed tune. A signal not ignored still stops it (here SIGTERM, after the SIGHUP)."""
    (tmp_path / "out").mkdir()

    def ignore_hup():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    p = _start(_benchmark_loop(tmp_path, synth_dir), tmp_path, preexec_fn=ignore_hup)
    time.sleep(4)  # inside the Loop that never ends
    os.killpg(p.pid, signal.SIGHUP)
    time.sleep(2.5)  # more than the forced exit's 2 s
    assert p.poll() is None
    os.killpg(p.pid, signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 143 and err.strip().splitlines()[-1] == "interrupted by SIGTERM; no output written", err
    assert list((tmp_path / "out").iterdir()) == []


def test_neural_compressors_timeout_ends_its_calibration_as_a_timeout_not_a_stop(tmp_path):
    """INC delivered tuning.timeout as a simulated Ctrl-C (_thread.interrupt_main), which reached the stop watcher
    like a real one, and could not end a calibration run stuck in native code. The timeout now ends that run and
    INC's loop: exit 3 saying so, no "interrupted" line, nothing left."""
    p = _tune_slow_calibration(tmp_path, {"tuning": {"timeout": 2}})
    _, err = p.communicate(timeout=120)
    last = err.strip().splitlines()[-1]
    assert p.returncode == 3 and "Traceback" not in err and "interrupted" not in err, err
    assert last.startswith("error: no int8 model met the relative 0.01 accuracy criterion after 0 trial(s)"), err
    assert "; tuning.timeout (2 s) ended the search" in last, err
    assert _left_behind(tmp_path) == []


def test_a_stop_exception_that_c_code_prints_is_silent_and_every_other_error_is_printed(capsys, monkeypatch):
    """C code that cannot pass an exception on prints it (PyErr_Print, through sys.excepthook): once main() has a stop
    signal, its Interrupted/KeyboardInterrupt printed there would stand before the closing line; nothing else is hidden."""
    from quant import cli
    from quant.errors import Interrupted

    monkeypatch.setattr(cli, "_excepthooks", [sys.__excepthook__])
    monkeypatch.setattr(cli, "_received", [signal.SIGTERM])
    cli._excepthook(Interrupted, Interrupted(signal.SIGTERM), None)
    cli._excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
    assert capsys.readouterr().err == ""
    cli._excepthook(ValueError, ValueError("a real error"), None)
    assert "ValueError: a real error" in capsys.readouterr().err
    monkeypatch.setattr(cli, "_received", [])  # no stop signal: printed as Python would
    cli._excepthook(Interrupted, Interrupted(signal.SIGTERM), None)
    assert "Interrupted" in capsys.readouterr().err
