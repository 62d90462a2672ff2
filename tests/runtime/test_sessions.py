"""quant.runtime.sessions: the options every session is made with, the one-line load error."""

import onnxruntime as ort
import pytest

from quant.errors import ModelError
from quant.runtime import sessions


def test_unloadable_model_message():
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        sessions.make_session(b"\x08\x07", name="x.onnx")


def test_options_differ_from_onnxruntime_defaults_only_where_asked(tmp_path):
    default, got = ort.SessionOptions(), sessions.Options().session_options()
    assert got.intra_op_num_threads == 1 and got.log_severity_level == 4
    assert got.graph_optimization_level == default.graph_optimization_level and not got.enable_profiling
    assert got.optimized_model_filepath == default.optimized_model_filepath
    so = sessions.Options(3, "basic", profile_prefix=str(tmp_path / "p")).session_options()
    assert so.intra_op_num_threads == 3 and so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert so.enable_profiling and so.profile_file_prefix == str(tmp_path / "p")
