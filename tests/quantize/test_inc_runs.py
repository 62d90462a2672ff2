"""neural-compressor's own inferences are stoppable and time-bounded while its loop runs (and only then), and a
failure to write its temporary workspace is named (exit 5), with the workspace removed."""

import errno
import os
import tempfile
import traceback

import numpy as np
import onnxruntime as ort
import pytest
from helpers import mnist12_like

from quant import stop
from quant.errors import ModelError, QuantError
from quant.quantize import inc

SPEC = inc.IncSpec("QOperator", True, False, True, 50, (), (), ("relative", 0.01), "basic", 0, 1, 1978)
X = np.zeros((1, 1, 28, 28), np.float32)


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    t = tmp_path / "tmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    return t


def _fake_fit(monkeypatch, body):
    """neural-compressor's fit() replaced by ``body(model)``, called like INC calls its own sessions."""
    import neural_compressor.quantization as q

    monkeypatch.setattr(q, "fit", lambda model, conf, calib_dataloader=None, eval_func=None: body(model))


def _plain_run(model):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"Input3": X})


def test_the_run_wrapper_is_installed_only_while_inc_runs(monkeypatch, private_tmp):
    base_run = ort.InferenceSession.run
    assert "run" not in ort.InferenceSession.__dict__  # inherited: put back means removed again
    seen = []

    def body(model):
        seen.append(ort.InferenceSession.run)
        assert len(_plain_run(model)[0][0]) == 10  # a run without RunOptions goes through the wrapper and works

    _fake_fit(monkeypatch, body)
    with pytest.raises(QuantError):  # fit() returned no model
        inc.tune(mnist12_like(), SPEC, None, lambda b: 0.5, log=lambda m: None)
    assert seen and seen[0] is not base_run
    assert ort.InferenceSession.run is base_run and "run" not in ort.InferenceSession.__dict__

    for exc in (RuntimeError("inside INC"), KeyboardInterrupt(), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))):
        def failing(model, exc=exc):
            seen.append(ort.InferenceSession.run)
            raise exc

        _fake_fit(monkeypatch, failing)
        with pytest.raises((QuantError, KeyboardInterrupt, OSError)):
            inc.tune(mnist12_like(), SPEC, None, lambda b: 0.5, log=lambda m: None)
        assert seen[-1] is not base_run
        assert ort.InferenceSession.run is base_run and "run" not in ort.InferenceSession.__dict__, exc
    assert list(private_tmp.iterdir()) == []  # the workspace removed every time


def test_a_run_of_inc_outlasting_the_time_bound_ends_in_exit_4_naming_the_model(monkeypatch, private_tmp):
    from test_stop_signals import loop_model

    slow = loop_model()
    monkeypatch.setattr(stop._state, "timeout", 0.5)

    def body(model):  # INC: its calibration session runs without RunOptions and its loop swallows the error
        try:
            sess = ort.InferenceSession(slow.SerializeToString(), providers=["CPUExecutionProvider"])
            sess.run(None, {"X": X})
        except Exception:  # noqa: BLE001 (as INC's loop does)
            traceback.print_exc()

    _fake_fit(monkeypatch, body)
    with pytest.raises(ModelError) as e:
        inc.tune(mnist12_like(), SPEC, None, lambda b: 0.5, log=lambda m: None, name="fp32.onnx")
    assert e.value.exit_code == 4
    assert str(e.value).startswith("fp32.onnx (neural-compressor's calibration): one inference ran longer than "
                                   "evaluation.timeout_seconds (0.5 s)"), e.value
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("swallowed", [False, True], ids=["raised", "swallowed-by-fit"])
def test_a_full_disk_while_inc_writes_its_workspace_is_named(monkeypatch, private_tmp, swallowed, capfd):
    def body(model):
        from neural_compressor.config import options

        target = os.path.join(options.workspace, "history.snapshot")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target if swallowed else None)
        except OSError:
            if not swallowed:
                raise
            traceback.print_exc()  # as fit() does with an exception of its loop

    _fake_fit(monkeypatch, body)
    with pytest.raises(OSError) as e:
        inc.tune(mnist12_like(), SPEC, None, lambda b: 0.5, log=lambda m: None)
    assert e.value.errno == errno.ENOSPC and e.value.filename.startswith(str(private_tmp / "mnist-quant-inc-"))
    assert e.value.strerror.startswith("No space left on device (neural-compressor's temporary workspace"), e.value
    assert list(private_tmp.iterdir()) == [] and "Traceback" not in capfd.readouterr().err


def test_a_temporary_folder_that_cannot_hold_the_workspace_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    _fake_fit(monkeypatch, lambda model: None)
    with pytest.raises(OSError) as e:
        inc.tune(mnist12_like(), SPEC, None, lambda b: 0.5, log=lambda m: None)
    assert e.value.filename == str(tmp_path / "missing") and "making neural-compressor's temporary workspace" in e.value.strerror


def test_incs_time_limit_raises_in_the_main_thread_without_a_signal_and_never_after_its_block():
    import signal
    import time

    expired = []
    with pytest.raises(KeyboardInterrupt), inc._time_limit(0.2, lambda: expired.append(True)):
        for _ in range(200):
            time.sleep(0.01)
    assert expired == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # no handler involved
    with inc._time_limit(0.2, lambda: expired.append(False)):
        pass
    time.sleep(0.4)  # the timer was cancelled with its block: nothing is raised now
    assert expired == [True]
    with inc._time_limit(0, lambda: expired.append(None)):  # 0: no limit (INC's meaning)
        time.sleep(0.01)
    assert expired == [True]


def test_a_search_that_evaluated_no_int8_candidate_says_so_and_records_no_nan():
    """The timeout can end INC's search after the fp32 trial only: the error says that no int8 candidate was
    evaluated, and its details (the failed tune's report) hold None, which JSON can carry, never NaN."""
    import json
    from types import SimpleNamespace

    from quant.errors import AccuracyError

    record = SimpleNamespace(trials=[inc.Trial(0, 0.989, 1.0)], failures=[], spec=SPEC)
    run = SimpleNamespace(timeouts=[], swallowed=[], expired=True)
    with pytest.raises(AccuracyError) as e:
        inc._outcome(None, record, run, "3.7.1")
    assert "no int8 candidate was evaluated vs fp32 98.90%" in str(e.value) and "nan" not in str(e.value).lower()
    assert "tuning.timeout (0 s) ended the search" in str(e.value)
    d = e.value.details
    assert d["best_accuracy"] is None and d["trials"] == 0
    json.dumps({k: v for k, v in d.items() if k != "per_trial"}, allow_nan=False)
