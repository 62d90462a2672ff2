import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, synth_config
from helpers import (
    DEFAULT_MNIST12_INT8_SHA256,
    api_options,
    mnist12_like,
    pattern_linear,
    save,
)

from quant import config
from quant.graph import models
from quant.quantize import inc
from quant.workflows.tune import TuneOptions, tune_model


def _tune(tmp_path, model, data_dir, overrides=None, name="int8.onnx", **kw):
    src = save(model, tmp_path / "fp32.onnx")
    out = tmp_path / name
    doc = tune_model(str(src), str(out), config=synth_config(tmp_path, overrides), data_dir=str(data_dir), log=lambda m: None,
                     **api_options(TuneOptions, {"reports": True, **kw}))
    return out, doc


def test_tune_mnist12_topology_gives_qoperator_model(tmp_path, synth_dir):
    out, doc = _tune(tmp_path, mnist12_like(), synth_dir, {"quantization": {"format": "QOperator", "kernel_aware": False},
                                                           "model": {"dynamic_batch": False},
                                                           "tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 3}})
    m = onnx.load(out)
    ops = {n.op_type for n in m.graph.node}
    assert {"QLinearConv", "QLinearMatMul", "QuantizeLinear", "DequantizeLinear"} <= ops
    assert doc["int8"]["bytes"] == out.stat().st_size < doc["fp32"]["bytes"]
    assert doc["int8"]["ops"]["int8"]["QLinearConv"] == 2
    rep = json.loads((tmp_path / "int8.report.json").read_text())
    for k in ("passed", "accuracy_drop"):
        assert k in rep
    assert rep["fp32"]["accuracy"] == doc["fp32"]["accuracy"] and "accuracy" in rep["int8"]
    assert rep["calibration"]["source"].startswith("ad hoc") and len(rep["calibration"]["sha256"]) == 64
    assert (tmp_path / "int8.report.md").read_text().startswith("# Tuning report")
    # every trial records its quantizable layers' precision: all fp32 in trial 0, all int8 here (kernel_aware off)
    per = rep["tuning"]["per_trial"]
    assert [t["trial"] for t in per] == list(range(rep["tuning"]["trials"] + 1)) and per[0]["int8_layers"] == []
    assert len(per[0]["fp32_layers"]) == 3 and per[-1]["fp32_layers"] == [] and set(per[-1]["int8_layers"]) == set(per[0]["fp32_layers"])
    if importlib.util.find_spec("matplotlib"):  # the trials figure beside the report, listed in it
        assert rep["plots"] == {"trials": str(tmp_path / "int8.report.trials.png")}
        assert (tmp_path / "int8.report.trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "- plots: " in (tmp_path / "int8.report.md").read_text()


def _node(op, inputs, name):
    return onnx.helper.make_node(op, inputs, [name + "_out"], name=name)


def test_layer_precisions_reads_qdq_and_qoperator_candidates():
    """What INC hands the eval function: QDQ keeps the op type with a DequantizeLinear weight, QOperator has
    int8 kernels named <layer>_quant; a layer without either is fp32."""
    g = onnx.helper.make_graph([_node("DequantizeLinear", ["wq", "s", "z"], "w_dq"), _node("Conv", ["x", "w_dq_out"], "ConvA_quant"),
                                _node("Conv", ["ConvA_quant_out", "w"], "ConvB"), _node("QLinearMatMul", ["a"] * 8, "FC_quant"),
                                _node("Gemm", ["FC_quant_out", "w2"], "Head"), _node("Relu", ["Head_out"], "Relu")], "g", [], [])
    assert inc.layer_precisions(onnx.helper.make_model(g)) == (["ConvB", "Head"], ["ConvA", "FC"])


def test_no_plots_writes_no_figure(tmp_path, synth_dir):
    out, doc = _tune(tmp_path, pattern_linear("N", "flat"), synth_dir, {"preprocessing": {"layout": "flat"}, "tuning": {"max_trials": 1}},
                     plots=False)
    assert "plots" not in doc and not list(tmp_path.glob("*.png")) and out.exists()


def test_tune_qdq_format(tmp_path, synth_dir):
    out, doc = _tune(tmp_path, pattern_linear("N", "flat"), synth_dir,
                     {"preprocessing": {"layout": "flat"}, "quantization": {"format": "QDQ"}, "tuning": {"max_trials": 2}})
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "QLinearMatMul" not in ops and ops.count("DequantizeLinear") >= 2
    assert doc["int8"]["ops"]["int8"].get("QGemm") == 1  # MatMul + Add fused into one Gemm, run by onnxruntime as QGemm
    assert doc["int8"]["accuracy"] >= 0.99 * doc["fp32"]["accuracy"] and doc["fp32"]["accuracy"] == 1.0


def test_same_seed_gives_byte_identical_models(tmp_path, synth_dir):
    o = {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}}
    a, doc_a = _tune(tmp_path, mnist12_like(), synth_dir, o, "a.onnx")
    b, doc_b = _tune(tmp_path, mnist12_like(), synth_dir, o, "b.onnx")
    assert a.read_bytes() == b.read_bytes()
    assert doc_a["int8"]["accuracy"] == doc_b["int8"]["accuracy"]


@pytest.mark.parametrize("op_type", ["MatMul", "Gemm"])
def test_keep_fp32_op_types_reaches_the_fused_gemm(tmp_path, synth_dir, op_type):
    # mnist12_like's MatMul + Add become one Gemm named "MatMul"; keeping either op type keeps that layer fp32
    out, doc = _tune(tmp_path, mnist12_like(), synth_dir,
                     {"quantization": {"op_types_to_keep_fp32": [op_type]}, "tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    assert doc["int8"]["ops"]["fp32"].get("Gemm") == 1 and "QGemm" not in doc["int8"]["ops"]["int8"]
    assert doc["int8"]["ops"]["int8"].get("QLinearConv") == 1
    last = doc["tuning"]["per_trial"][-1]  # the layers INC's candidate left fp32: the plan's Conv1 and the kept Gemm
    assert last["fp32_layers"] == ["Conv1", "MatMul"] and last["int8_layers"] == ["Conv2"]


def test_real_mnist12_meets_issue_figures(tuned_mnist12):
    out, r = tuned_mnist12
    rep = json.loads(out.with_name("mnist-12-int8.report.json").read_text())
    assert rep["passed"] is True
    assert rep["fp32"]["accuracy"] == pytest.approx(0.9890, abs=1e-4)
    assert rep["int8"]["accuracy"] >= 0.9880
    assert rep["int8"]["accuracy"] >= rep["fp32"]["accuracy"] - 0.0005  # issue 12: >= fp32 - 0.05 pp
    assert rep["int8"]["tied_top1_images"] == 0  # float logits: no tie rule involved
    # issue 12's 10,000-byte goal holds for the graph; issue 14's provenance metadata (~180 bytes) comes on top
    bare = onnx.load(str(out))
    assert len(bare.metadata_props) == 2
    del bare.metadata_props[:]
    assert len(bare.SerializeToString()) <= 10000 and rep["int8"]["bytes"] <= 10200 and rep["fp32"]["bytes"] == 26143
    # as onnxruntime runs it: the second conv and the FC layer in int8, the first conv (1 input channel) in fp32
    assert rep["int8"]["ops"]["int8"]["QLinearConv"] == 1 and rep["int8"]["ops"]["int8"]["QGemm"] == 1
    assert rep["int8"]["ops"]["fp32"]["Conv"] == 1
    assert list(rep["precision_plan"]["keep_fp32"]) == ["Convolution28"]
    assert rep["preparation"]["dynamic_batch"] is True and rep["preparation"]["input_shape"][0] == "N"
    assert rep["calibration"]["name"] == "train-100-seed9527" and rep["calibration"]["split"] == "train"
    assert rep["environment"]["neural_compressor"] == "3.7.1"
    assert rep["quantization"]["reduce_range"] is True
    assert rep["quantization"]["inc_options_pinned"] == {"reduce_range": True, "excluded_precisions": ["bf16", "fp16"]}
    assert "[tune] trial 1: int8 top-1" in r.stderr and "# Tuning report" in r.stdout


@pytest.mark.realdata
def test_real_tuning_is_reproducible(tuned_mnist12, models_dir, mnist_dir, tmp_path):
    out, _ = tuned_mnist12
    again = tmp_path / "again.onnx"
    tune_model(str(models_dir / "mnist-12.onnx"), str(again), config="mnist.yaml", data_dir=str(mnist_dir), log=lambda m: None)
    assert again.read_bytes() == out.read_bytes()


@pytest.mark.realdata
def test_tuned_model_computes_like_fp32(tuned_mnist12, models_dir, splits):
    from quant.config import preprocessing
    from quant.runtime import evaluation, sessions

    out, _ = tuned_mnist12
    x = preprocessing.apply(splits["test"].images[:500], 1 / 255, 0, 1, "NCHW")
    f = evaluation.predict(sessions.make_session((models_dir / "mnist-12.onnx").read_bytes()), x, "Input3")
    q = evaluation.predict(sessions.make_session(out.read_bytes()), x, "Input3")
    assert np.mean(np.argmax(f, 1) == np.argmax(q, 1)) >= 0.99
    assert models.signature(onnx.load(out), str(out)).input_shape == ("N", 1, 28, 28)
    x64 = np.resize(x, (64, 1, 28, 28))  # the default model takes any batch
    assert sessions.make_session(out.read_bytes()).run(None, {"Input3": x64})[0].shape == (64, 10)


def test_latency_aware_objective_times_stock_fast_candidates_and_records_the_choice(tmp_path, synth_dir):
    out, doc = _tune(tmp_path, mnist12_like(batch=1), synth_dir,
                     {"tuning": {"objective": "performance", "accuracy_criterion": {"absolute": 0.9}}})
    la = doc["latency_aware"]
    kept = [c["keep_fp32"] for c in la["candidates"]]
    assert kept[0] == ["Conv1"] and la["candidates"][0]["default"]  # the default plan is always a candidate
    assert ["Conv1", "Conv2"] in kept or ["Conv1", "MatMul"] in kept  # plus one more layer in fp32
    assert all(set(c["latency_ratios"]) == {"1", "64"} for c in la["candidates"])  # dynamic batch: both batch sizes timed
    chosen = [c for c in la["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["keep_fp32"] == la["nodes_kept_fp32"]
    default = la["candidates"][0]
    assert chosen[0] is default or chosen[0]["score"] < default["score"] * 0.97  # never slower than the default
    assert la["ratio"].startswith("paired: ")  # the report says how candidates were scored
    assert la["beats_fp32"] == (chosen[0]["score"] < 1)
    m = onnx.load(out)
    # no session hints (fast in any plain onnxruntime session): the only metadata is the provenance (issue 14)
    assert sorted(p.key for p in m.metadata_props) == ["mnist_quant.calibration_sha256", "mnist_quant.preprocessing"]
    conv_fp32 = [n.name for n in m.graph.node if n.op_type == "Conv" and not any(i.endswith(".dq") for i in n.input)]
    assert set(conv_fp32) == {x for x in la["nodes_kept_fp32"] if x.startswith("Conv")}
    assert doc["tuning"]["objective"] == "performance" and "latency-aware choice" in (tmp_path / "int8.report.md").read_text()


def test_objective_override_and_bad_value(tmp_path, synth_dir):
    from quant.errors import UsageError

    with pytest.raises(UsageError, match="--objective 'fast'"):
        tune_model(str(save(mnist12_like(), tmp_path / "m.onnx")), str(tmp_path / "o.onnx"), config=synth_config(tmp_path),
                   data_dir=str(synth_dir), log=lambda m: None, options=TuneOptions(objective="fast"))
    with pytest.raises(Exception, match="tuning.objective: must be one of accuracy, performance; got 'latency'"):
        config.from_dict({"tuning": {"objective": "latency"}}, "c.yaml")
    assert config.from_dict({"tuning": {"objective": "performance"}}).tuning.objective == "performance"
    from quant.workflows import tune

    mine = config.load(synth_config(tmp_path))  # a Config object given to the API: the override works on a copy
    used = tune._resolve_config(mine, "performance")
    assert used.tuning.objective == "performance" and mine.tuning.objective == "accuracy"
    assert used.notes[-1].startswith("tuning.objective = 'performance' (not from the file")




def _as_host(monkeypatch, vnni: bool, bf16: bool):
    """Make INC's CpuInfo report another CPU (and FORCE_BF16 follow bf16), as INC would see it there."""
    with inc.inc_compat():
        from neural_compressor.utils.utility import CpuInfo
    cls = type(CpuInfo())
    monkeypatch.setattr(cls, "vnni", property(lambda self: vnni))
    monkeypatch.setattr(cls, "bf16", property(lambda self: bf16))
    if bf16:
        monkeypatch.setenv("FORCE_BF16", "1")
    else:
        monkeypatch.delenv("FORCE_BF16", raising=False)


def _tune_on_host(tmp_path, synth_dir, monkeypatch, vnni, bf16, name, reduce_range="config"):
    _as_host(monkeypatch, vnni, bf16)
    cfg = config.load(synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}}))
    if reduce_range is None:  # left to INC: no reduce_range passed at all (not a value a config accepts)
        pinned = inc.pinned_options
        monkeypatch.setattr(inc, "pinned_options", lambda c: {k: v for k, v in pinned(c).items() if k != "reduce_range"})
    src = save(mnist12_like(), tmp_path / "fp32.onnx")
    tune_model(str(src), str(tmp_path / name), config=cfg, data_dir=str(synth_dir), log=lambda m: None)
    return (tmp_path / name).read_bytes()


def test_the_host_cpu_does_not_change_the_bytes(tmp_path, synth_dir, monkeypatch):
    vnni_bf16 = _tune_on_host(tmp_path, synth_dir, monkeypatch, True, True, "a.onnx")
    avx2 = _tune_on_host(tmp_path, synth_dir, monkeypatch, False, False, "b.onnx")
    assert vnni_bf16 == avx2


def test_the_pin_is_what_makes_them_equal(tmp_path, synth_dir, monkeypatch):
    """Control: left to INC (reduce_range None), the two hosts write different models."""
    vnni = _tune_on_host(tmp_path, synth_dir, monkeypatch, True, False, "a.onnx", reduce_range=None)
    avx2 = _tune_on_host(tmp_path, synth_dir, monkeypatch, False, False, "b.onnx", reduce_range=None)
    assert vnni != avx2


@pytest.mark.parametrize("reduce_range,qmax", [(True, 127), (False, 255)])
def test_reduce_range_sets_the_input_quantizer_range(tmp_path, synth_dir, reduce_range, qmax):
    out, doc = _tune(tmp_path, mnist12_like(), synth_dir, {"quantization": {"reduce_range": reduce_range, "kernel_aware": False},
                                                           "tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    m = onnx.load(out)
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    scale = float(onnx.numpy_helper.to_array(next(t for t in m.graph.initializer if t.name == q.input[1])))
    # synthetic inputs span [0, 1] under the default preprocessing: the calibrated max maps onto qmax
    assert scale * qmax == pytest.approx(1.0, rel=1e-5)
    assert doc["quantization"]["reduce_range"] is reduce_range


def test_inc_compat_supplies_what_is_missing_and_restores(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("pkg_resources", "onnx.mapping") else real_find_spec(name, *a))
    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)
    monkeypatch.delitem(sys.modules, "onnx.mapping", raising=False)
    if hasattr(onnx, "mapping"):
        monkeypatch.delattr(onnx, "mapping")
    with inc.inc_compat() as supplied:
        assert supplied == ["pkg_resources", "onnx.mapping"]
        from pkg_resources import parse_version
        assert parse_version("1.10") > parse_version("1.9")
        t2n = onnx.mapping.TENSOR_TYPE_TO_NP_TYPE
        assert t2n[onnx.TensorProto.UINT8] == np.dtype("uint8") and t2n[onnx.TensorProto.INT8] == np.dtype("int8")
        for t, dt in t2n.items():  # agrees with onnx's own dtype table
            assert dt == np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t))
        assert onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[np.dtype("float32")] == onnx.TensorProto.FLOAT
    assert "pkg_resources" not in sys.modules and "onnx.mapping" not in sys.modules and not hasattr(onnx, "mapping")


def test_inc_compat_leaves_real_modules_alone(monkeypatch):
    fake = type(sys)("pkg_resources")
    monkeypatch.setitem(sys.modules, "pkg_resources", fake)
    with inc.inc_compat() as supplied:
        assert "pkg_resources" not in supplied and sys.modules["pkg_resources"] is fake
    assert sys.modules["pkg_resources"] is fake


@pytest.mark.realdata
def test_default_model_bytes_are_the_published_ones(tuned_mnist12):
    out, _ = tuned_mnist12
    from quant.files import sha256_bytes

    assert sha256_bytes(out.read_bytes()) == DEFAULT_MNIST12_INT8_SHA256
    assert DEFAULT_MNIST12_INT8_SHA256 in (REPO / "README.md").read_text()


def test_inc_timeout_stays_a_timeout_not_an_interrupt(tmp_path, synth_dir, monkeypatch):
    """INC ends a tuning.timeout through _thread.interrupt_main (a simulated SIGINT): it must end as the
    accuracy result INC returns (a model or exit 3), never as the user's Ctrl-C (exit 130)."""
    import time

    from quant.errors import AccuracyError
    from quant.runtime import evaluation

    real = evaluation.Evaluator.__call__

    def slow(self, model_bytes, name="model"):
        time.sleep(0.8)
        return real(self, model_bytes, name)

    monkeypatch.setattr(evaluation.Evaluator, "__call__", slow)
    try:
        _tune(tmp_path, mnist12_like(), synth_dir, {"tuning": {"timeout": 1, "max_trials": 50, "accuracy_criterion": {"absolute": 0.0}}})
    except AccuracyError:
        pass



def test_int8_candidates_that_do_not_run_are_not_called_an_accuracy_miss(tmp_path, synth_dir, monkeypatch):
    """INC catches an exception of the evaluation and ends its loop; when its fp32 baseline ran but no int8
    candidate did, the run used to end as "no int8 model met the criterion ... best int8 top-1 nan%"
    (exit 3). It is the model's problem that onnxruntime gave (exit 4), or a failure of its own (exit 1),
    naming the int8 candidate, and INC's copy of the traceback is not printed without --verbose."""
    from quant.errors import ModelError, QuantError
    from quant.runtime import evaluation

    real = evaluation.Evaluator.__call__

    def after_the_baseline(exc):
        calls = []

        def call(self, model_bytes, name="model"):
            calls.append(name)
            if len(calls) == 1:  # INC's fp32 baseline
                return real(self, model_bytes, name)
            raise exc(name)
        return call, calls

    call, calls = after_the_baseline(lambda name: ModelError(f"{name}: onnxruntime cannot load it: INVALID_GRAPH"))
    monkeypatch.setattr(evaluation.Evaluator, "__call__", call)
    with pytest.raises(ModelError, match=r"fp32\.onnx \(int8\): onnxruntime cannot load it: INVALID_GRAPH \(neural-compressor's int8 candidate") as e:
        _tune(tmp_path, mnist12_like(), synth_dir, {"tuning": {"max_trials": 2}})
    assert e.value.exit_code == 4 and len(calls) >= 2

    call, calls = after_the_baseline(lambda name: ValueError("bad shape"))
    monkeypatch.setattr(evaluation.Evaluator, "__call__", call)
    with pytest.raises(QuantError, match="int8 candidate could not be evaluated: ValueError: bad shape") as e:
        _tune(tmp_path, mnist12_like(), synth_dir, {"tuning": {"max_trials": 2}}, name="b.onnx")
    assert e.value.exit_code == 1 and not (tmp_path / "b.onnx").exists()


def test_a_failure_inside_neural_compressor_is_named_not_called_an_accuracy_miss(tmp_path, synth_dir, monkeypatch, capfd):
    """fit() catches an exception of its own loop (here: calibration), prints its traceback and reports
    "no model met the goal": the run used to end as exit 3 "best int8 top-1 nan%" after a traceback.
    It ends as exit 1 naming the exception, with no traceback printed (--verbose prints it)."""
    from quant.data import calib
    from quant.errors import AccuracyError, QuantError

    def broken(self):
        raise ValueError("calibration batch went missing")

    monkeypatch.setattr(calib.CalibDataLoader, "__iter__", broken)
    with pytest.raises(QuantError, match="neural-compressor failed during tuning: ValueError: calibration batch went missing") as e:
        _tune(tmp_path, mnist12_like(), synth_dir, {"tuning": {"max_trials": 2}})
    assert not isinstance(e.value, AccuracyError) and e.value.exit_code == 1
    assert "Traceback" not in capfd.readouterr().err

def test_the_api_logs_through_logging_and_writes_only_what_is_asked(tmp_path, synth_dir, caplog):
    import logging

    src = save(mnist12_like(), tmp_path / "fp32.onnx")
    work = tmp_path / "work"
    work.mkdir()
    cfg = synth_config(tmp_path, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 2}})
    with caplog.at_level(logging.INFO, logger="quant"):
        doc = tune_model(str(src), str(work / "int8.onnx"), config=cfg, data_dir=str(synth_dir))
    assert sorted(p.name for p in work.iterdir()) == ["int8.onnx", "int8_test_data"]  # the model and the config's test data
    assert doc["reports"] is None and doc["markdown"].startswith("# Tuning report")
    assert any(r.name == "quant" and r.getMessage().startswith("[tune] fp32 baseline") for r in caplog.records)
    from quant.workflows import benchmark

    bench = benchmark.benchmark_models([str(work / "int8.onnx")], str(src), config=cfg, data_dir=str(synth_dir),
                                       options=benchmark.BenchmarkOptions(mode="accuracy"))
    assert bench["reports"] is None and sorted(p.name for p in work.iterdir()) == ["int8.onnx", "int8_test_data"]
    assert not list(tmp_path.glob("*.benchmark.*")) and not list(Path.cwd().glob("int8.benchmark.*"))


@pytest.mark.parametrize("outer,kernel_aware", [("r2", True), ("a2", True), ("a2", False)])
def test_a_model_whose_if_body_reads_an_outer_activation_tunes_and_runs(outer, kernel_aware, tmp_path, synth_dir):
    """Rewrites, INC and the finishing steps keep what an If body reads. The body reads the second Relu's
    output (r2) or its input (a2): the plan keeps that Relu fp32 (with kernel_aware: false too), since INC
    drops a Relu after an int8 conv: r2 was then gone (onnxruntime refused the candidate), and with a2 read
    twice its range kept the negative values, so the main path ran without its ReLU (the pool's output went
    negative). The conv keeps all 14x14 rows (crop_unread_outputs skips it), the written file passes the
    ONNX checker (INC had sorted the If before its body's producer) and the body's term is the fp32 one."""
    import onnxruntime as ort
    from helpers import read_in_if_body

    fp32 = read_in_if_body(mnist12_like(), outer, initializer=False)
    out, doc = _tune(tmp_path, fp32, synth_dir, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 3},
                                                 "quantization": {"kernel_aware": kernel_aware}})
    assert doc["passed"] and "Relu2" in doc["precision_plan"]["keep_fp32"]
    assert not any("conv outputs no pool reads" in s and "Conv2" in s for s in doc["preparation"]["steps"]), doc["preparation"]
    m = onnx.load(out)
    onnx.checker.check_model(m)
    defined = {o for n in m.graph.node for o in n.output} | {t.name for t in m.graph.initializer}
    assert outer in models.subgraph_reads(m) and {outer, "p2"} <= defined
    x = np.random.default_rng(0).random((6, 1, 28, 28), dtype=np.float32)
    got = {}
    for key, proto in (("fp32", fp32), ("int8", m)):  # the If's term and the second pool's output, image by image
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        probe.graph.output.extend([onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in ("term", "p2")])
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        runs = [sess.run(["term", "p2"], {"Input3": x[i:i + 1]}) for i in range(len(x))]
        got[key] = [np.concatenate([r[j] for r in runs]) for j in (0, 1)]
    (t32, p32), (t8, p8) = got["fp32"], got["int8"]
    assert p32.min() >= 0 and p8.min() >= 0, p8.min()  # the ReLU before the pool is still there
    assert np.all(t32 > 0.05) and np.abs(t8 - t32).max() < 0.2 * np.abs(t32).min(), (t32, t8)


@pytest.mark.parametrize("kernel_aware", [True, False])
def test_keeping_fp32_a_pool_whose_output_an_if_body_reads_tunes_instead_of_aborting(kernel_aware, tmp_path, synth_dir):
    """INC's candidate then has DequantizeLinear -> MaxPool -> p2 with p2 read by the If body: onnxruntime
    1.31 aborts the whole process loading that (quant.graph.controlflow). Each candidate is evaluated mended, the
    written model is mended (a QuantizeLinear/DequantizeLinear pair on the body's read) and loads in a
    plain process."""
    import subprocess
    import sys

    from helpers import read_in_if_body

    from quant.graph import controlflow

    fp32 = read_in_if_body(mnist12_like(), "p2", initializer=False)
    out, doc = _tune(tmp_path, fp32, synth_dir, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 3},
                                                 "quantization": {"nodes_to_keep_fp32": ["Pool2"], "kernel_aware": kernel_aware}})
    assert doc["passed"] and any("body's read" in s and "p2" in s for s in doc["finishing"]), doc["finishing"]
    m = onnx.load(out)
    producer = {o: n for n in m.graph.node for o in n.output}
    (read,) = models.subgraph_reads(m) & set(producer)  # the body reads the pair's output, not p2
    dq = producer[read]
    assert dq.op_type == "DequantizeLinear" and producer[dq.input[0]].op_type == "QuantizeLinear" and producer[dq.input[0]].input[0] == "p2"
    assert controlflow.hazards(m) == []
    unmended = onnx.ModelProto()
    unmended.CopyFrom(m)
    for b in (a.g for n in unmended.graph.node for a in n.attribute if a.HasField("g")):
        for bn in b.node:
            bn.input[:] = ["p2" if i == read else i for i in bn.input]
    keep = [n for n in unmended.graph.node if read not in n.output and dq.input[0] not in n.output]  # and the pair goes
    del unmended.graph.node[:]
    unmended.graph.node.extend(keep)
    assert controlflow.hazards(unmended), "the test no longer builds the shape onnxruntime aborts on"
    r = subprocess.run([sys.executable, "-c", f"import onnxruntime as o; o.InferenceSession({str(out)!r}, providers=['CPUExecutionProvider'])"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_relu6_after_an_int8_conv_still_clips_in_the_int8_model(tmp_path, synth_dir):
    """neural-compressor removes a Clip after a quantized layer and leaves the clamping to the
    QuantizeLinear, whose uint8 saturation is twice the bound with the default 7-bit ranges: a LeNet-style
    model's ReLU6 let values up to 9.45 through. The plan keeps such a Clip fp32, so the int8 model clips."""
    import onnxruntime as ort
    from helpers import pattern_images

    fp32 = mnist12_like()
    x = pattern_images(np.arange(50) % 10, np.random.default_rng(3)).astype(np.float32).reshape(-1, 1, 28, 28) / 255

    def values(model, tensor):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run([tensor], {"Input3": x[i:i + 1]})[0] for i in range(len(x))])

    hi = float(np.percentile(values(fp32, "a2"), 99)) / 2  # a bound the data crosses
    relu = next(n for n in fp32.graph.node if n.name == "Relu2")
    relu.op_type, relu.name = "Clip", "Clip2"
    relu.input.extend(["lo", "hi"])
    fp32.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(v, np.float32), k) for k, v in (("lo", 0), ("hi", hi))])
    out, doc = _tune(tmp_path, fp32, synth_dir, {"tuning": {"accuracy_criterion": {"absolute": 0.9}, "max_trials": 3}})
    m = onnx.load(out)
    clipped = next(n.input[0] for n in m.graph.node if n.op_type == "MaxPool" and n.output[0] == "p2")  # r2, or what INC put there
    assert values(fp32, "r2").max() == pytest.approx(hi) and values(m, clipped).max() <= hi * (1 + 1e-6)
    assert doc["passed"] and "upper bound" in doc["precision_plan"]["keep_fp32"]["Clip2"]
    assert "Conv2" in doc["precision_plan"]["int8_candidates"] and any(n.op_type == "Clip" for n in m.graph.node)


def test_a_tune_that_misses_the_criterion_reports_its_trials_where_a_report_path_points(tmp_path):
    """Calibrated on dim images and tested on noisy ones with 8-bit ranges, no int8 model meets the criterion
    (exit 3): no model and no test data are written, but the error carries the report (every trial) and the
    report files are written where the report path points."""
    from helpers import write_mnist

    from quant.errors import AccuracyError

    d = write_mnist(tmp_path / "m", train_brightness=20, test_noise=200)
    cfg = synth_config(tmp_path, {"preprocessing": {"layout": "flat"}, "quantization": {"reduce_range": False}, "tuning": {"max_trials": 1}})
    src = save(pattern_linear("N", "flat"), tmp_path / "fp32.onnx")
    out, rep = tmp_path / "int8.onnx", tmp_path / "r" / "failed.json"
    with pytest.raises(AccuracyError) as e:
        tune_model(str(src), str(out), config=cfg, data_dir=str(d), log=lambda m: None,
                   **api_options(TuneOptions, {"reports": True, "report_path": str(rep)}))
    doc = e.value.details
    assert e.value.exit_code == 3 and "no int8 model met" in e.value.message
    assert doc["kind"] == "tune" and doc["passed"] is False and doc["int8"] is None and doc["failure"] == e.value.message
    assert doc["tuning"]["trials"] >= 1 and doc["tuning"]["per_trial"][0]["trial"] == 0
    assert doc["best_int8_accuracy"] == max(t["accuracy"] for t in doc["tuning"]["per_trial"][1:])
    assert doc["markdown"].startswith("# Tuning report") and "**FAILED**: no int8 model met" in doc["markdown"]
    assert json.loads(rep.read_text())["tuning"]["per_trial"] == doc["tuning"]["per_trial"]
    assert (tmp_path / "r" / "failed.md").read_text() == doc["markdown"] and doc["reports"]["json"] == str(rep)
    assert not out.exists() and not (tmp_path / "int8_test_data").exists() and not list((tmp_path / "r").glob("*.png"))
    # without a report path (the command line's default of reports beside the model): the report in the error only
    with pytest.raises(AccuracyError) as e:
        tune_model(str(src), str(out), config=cfg, data_dir=str(d), log=lambda m: None, **api_options(TuneOptions, {"reports": True}))
    assert e.value.details["reports"] is None and e.value.details["markdown"].startswith("# Tuning report")
    assert not out.exists() and not list(tmp_path.glob("int8.report.*"))
