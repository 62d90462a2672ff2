"""Property: the command line, driven with stop signals at random moments and models carrying random hostile
metadata and names, never exits 1, never prints a traceback or a forged line, never changes a user's file and
never leaves a temporary file (hypothesis, derandomized; about 40 s)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import onnx
import pytest
from conftest import synth_config
from helpers import mnist12_like, save, write_mnist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = "mnist_quant.preprocessing"
HOSTILE = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(["evil\nPASS all checks", "x\r\nerror: forged", "\x1b[2J\x1b[31mred", "\u202egnp.exe", "a\x00b", "\x85\u2028",
                     "1/0", "{}", "[" * 5000, "y" * 200_000]),
)
METADATA = st.one_of(
    st.none(),
    HOSTILE,
    st.builds(lambda s, m: json.dumps({"scale": s, "mean": m, "std": 1.0, "layout": "NCHW"}),
              st.sampled_from(["1/255", "1/0", "1", "-1", "x"]), st.sampled_from([0.0, 1e308, -1e6])).map(
        lambda t: t.replace("1e+308", "1e999")),
)
COMMANDS = {
    "benchmark": lambda m, good, out, cfg, data: ["benchmark", f"--input_model={m}", f"--baseline_model={good}", "--mode=all",
                                                  "--iterations=200", "--warmup=0", f"--report={out / 'b.json'}", "--no_plots"],
    "validate": lambda m, good, out, cfg, data: ["validate", f"--input_model={m}", f"--baseline_model={good}", "--samples=10",
                                                 f"--report={out / 'v.json'}"],
    "write-test-data": lambda m, good, out, cfg, data: ["write-test-data", f"--input_model={m}", f"--output_dir={out / 'td'}"],
}
STOPS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("signal-fuzz")
    inputs = root / "inputs"
    inputs.mkdir()
    data = write_mnist(inputs / "mnist", n_train=60, n_test=60)
    cfg = synth_config(inputs)
    good = save(mnist12_like(), inputs / "good.onnx")
    return root, inputs, data, cfg, good


def _digest(folder):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@settings(max_examples=24, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cmd=st.sampled_from(sorted(COMMANDS)), producer=HOSTILE, metadata=METADATA, node_name=st.one_of(st.none(), HOSTILE),
       stop=st.one_of(st.none(), st.tuples(st.sampled_from(STOPS), st.floats(0.0, 3.0), st.booleans())), use_config=st.booleans())
def test_random_signals_and_hostile_model_text_never_exit_1_or_leave_files(world, cmd, producer, metadata, node_name, stop, use_config):
    root, inputs, data, cfg, good = world
    case = root / f"case{time.monotonic_ns()}"
    out, tmp = case / "out", case / "tmp"
    for d in (out, tmp):
        d.mkdir(parents=True)
    m = mnist12_like()
    m.producer_name = producer
    if metadata is not None:
        onnx.helper.set_model_props(m, {KEY: metadata})
    if node_name is not None:
        m.graph.node[0].name = node_name
    model = save(m, case / "m.onnx")
    args = COMMANDS[cmd](model, good, out, cfg, data) + [f"--data_dir={data}"] + ([f"--config={cfg}"] if use_config else [])
    before = _digest(inputs) | _digest(case)
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "quant", *args], cwd=case, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    if stop is not None:
        sig, delay, twice = stop
        time.sleep(delay)
        for _ in range(2 if twice else 1):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            time.sleep(0.03)
    stdout, stderr = p.communicate(timeout=120)
    err = stderr.decode("utf-8", "replace")
    rc = p.returncode
    allowed = {0, 2, 3, 4} | ({128 + stop[0], -stop[0]} if stop else set())
    assert rc in allowed, (args, rc, err[-2000:])
    assert "Traceback" not in err, (args, err[-3000:])
    for line in (err + stdout.decode("utf-8", "replace")).splitlines():  # model text never forges a line or sends escapes
        assert not line.startswith(("PASS all", "error: forged")) and "\x1b" not in line and "\u202e" not in line, (args, line[:200])
    assert len(err) < 100_000, (args, len(err))
    after = _digest(inputs) | _digest(case)
    assert {k: after.get(k) for k in before} == before, args  # nothing of the user's changed or deleted
    assert list(tmp.iterdir()) == [], (args, list(tmp.iterdir()))
    assert [p.name for p in case.rglob(".*")] == [], (args, rc)  # no staging or aside name left
    written = rc in (0, 3) or "after the outputs were written" in err
    if not written:
        assert list(out.iterdir()) == [], (args, rc, err[-500:])
