"""validate: structure, input range, accuracy, per-layer error, test data (synthetic and real)."""

import json
import re

import numpy as np
import onnx
import pytest
from conftest import run_cli, write_config
from helpers import mnist12_like, pattern_linear, read_in_if_body, save
from onnx import TensorProto, helper, numpy_helper

from quant.graph import models
from quant.workflows import validate


def with_qdq(model: onnx.ModelProto, scale: float, zero_point: int = 0, tensor: str | None = None) -> onnx.ModelProto:
    """Insert QuantizeLinear -> DequantizeLinear (uint8, per tensor) on ``tensor`` (default: the input)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    t = tensor or m.graph.input[0].name
    for n in m.graph.node:
        for i, name in enumerate(n.input):
            if name == t:
                n.input[i] = f"{t}_dq"
    m.graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), f"{t}_scale"),
                                numpy_helper.from_array(np.array(zero_point, np.uint8), f"{t}_zp")])
    q = [helper.make_node("QuantizeLinear", [t, f"{t}_scale", f"{t}_zp"], [f"{t}_q"], name=f"Quantize_{t}"),
         helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_scale", f"{t}_zp"], [f"{t}_dq"], name=f"Dequantize_{t}")]
    nodes = list(m.graph.node)
    at = next((i + 1 for i, n in enumerate(nodes) if t in n.output), 0)
    del m.graph.node[:]
    m.graph.node.extend(nodes[:at] + q + nodes[at:])
    onnx.checker.check_model(m)
    return m


def with_input_qdq(model: onnx.ModelProto, scale: float, zero_point: int = 0) -> onnx.ModelProto:
    return with_qdq(model, scale, zero_point)


def test_input_quantization_reads_the_calibrated_range():
    q = validate.input_quantization(with_input_qdq(pattern_linear(), 1.0), "input")
    assert q["range"] == [0.0, 255.0] and q["dtype"] == "uint8" and q["node"] == "Quantize_input"
    q = validate.input_quantization(with_input_qdq(pattern_linear(), 2 / 255, 128), "input")
    assert q["range"] == pytest.approx([-128 * 2 / 255, 127 * 2 / 255])
    assert validate.input_quantization(pattern_linear(), "input") is None


@pytest.mark.parametrize("peak,bits,qrange", [(64, 7, [0.0, 127.0]), (127, 8, [0.0, 255.0]), (None, 8, [0.0, 255.0])])
def test_weight_bits_tell_7bit_models_and_their_calibrated_range(peak, bits, qrange):
    """Symmetric int8 weights peak at 127 with full ranges and at 64 with reduce_range (7-bit)."""
    m = with_input_qdq(pattern_linear(), 1.0)
    if peak is not None:
        w = np.array([[peak, -3], [5, -peak + 1]], dtype=np.int8)
        m.graph.initializer.append(numpy_helper.from_array(w, "w_q"))
        m.graph.node.append(helper.make_node("QLinearMatMul", ["x_q", "s", "z", "w_q", "s", "z", "s", "z"], ["y_q"]))
    assert validate.weight_bits(m) == (None if peak is None else bits)
    q = validate.input_quantization(m, "input")
    assert q["bits"] == bits and q["range"] == qrange


def test_range_check_fails_a_model_calibrated_for_raw_pixels_fed_0_to_1():
    x = np.linspace(0, 1, 784 * 10, dtype=np.float32).reshape(10, 784)
    q = validate.input_quantization(with_input_qdq(pattern_linear(), 1.0), "input")
    seen = []
    c = validate.range_check(q, x, {"scale": "1/255", "mean": 0.0, "std": 1.0}, 0.5,
                               lambda xx: seen.append(float(xx.max())) or 0.97)
    assert c.status == "fail"
    assert "INPUT RANGE MISMATCH" in c.summary and "covers [0, 255]" in c.summary and "feeds [0, 1]" in c.summary
    assert "2 of 256 levels" in c.summary and "50.00% as configured and 97.00%" in c.summary
    assert seen == [pytest.approx(255.0)]  # accuracy re-measured with the data mapped onto [0, 255]
    assert c.details["used_fraction"] == pytest.approx(1 / 255)


def test_range_check_fails_clipping_and_passes_a_matching_range():
    q = validate.input_quantization(with_input_qdq(pattern_linear(), 1 / 255), "input")
    raw = np.linspace(0, 255, 7840, dtype=np.float32).reshape(10, 784)
    c = validate.range_check(q, raw, {"scale": "1", "mean": 0.0, "std": 1.0}, 0.1, lambda xx: 0.99)
    assert c.status == "fail" and "fall outside it and are clipped" in c.summary
    ok = validate.range_check(q, raw / 255, {"scale": "1/255", "mean": 0.0, "std": 1.0}, 0.99, lambda xx: 0 / 0)
    assert ok.status == "pass" and "100% of the range" in ok.summary
    assert validate.range_check(None, raw, {}, 0.9, None).status == "skip"


def test_layer_errors_on_a_qdq_model_match_the_fp32_twin_and_flag_the_worst():
    fp32 = mnist12_like()
    x = np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32)
    good = validate.layer_errors(fp32, with_input_qdq(fp32, 1 / 255), x, "Input3", 1, 1)
    assert len(good) == 1 and good[0]["fp32_twin"] == "Input3" and good[0]["sqnr_db"] > 40 and good[0]["flag"] == "worst"
    coarse = validate.layer_errors(fp32, with_input_qdq(fp32, 0.5), x, "Input3", 1, 1)
    assert coarse[0]["sqnr_db"] < 20 and coarse[0]["flag"] == "worst, low"


def test_structure_check_compares_io_with_the_baseline(tmp_path):
    base = models.load(save(mnist12_like(), tmp_path / "b.onnx"))
    same = models.load(save(with_qdq(with_input_qdq(mnist12_like(), 1 / 255), 0.05, tensor="c1"), tmp_path / "q.onnx"))
    c = validate.structure_check(same, base)
    assert c.status == "pass" and "ONNX checker passed; opset 12" in c.summary
    assert c.details["ops"]["int8"] == {"QLinearConv": 1}  # what onnxruntime runs: the DQ -> Conv -> Q group fused
    other = mnist12_like()
    other.graph.output[0].name = "scores"
    other.graph.node[-1].output[0] = "scores"
    c = validate.structure_check(models.load(save(with_qdq(with_input_qdq(other, 1 / 255), 0.05, tensor="c1"), tmp_path / "o.onnx")), base)
    assert c.status == "fail" and "outputs names ['scores'] != baseline ['Plus214_Output_0']" in c.summary
    c = validate.structure_check(base, base)
    assert c.status == "fail" and "no op runs in int8" in c.summary


def test_tied_outputs_count_and_both_tie_rules():
    out = np.array([[1, 3, 3], [2, 1, 0], [0, 5, 5], [4, 4, 4]], np.float32)
    c = validate.tied_check(out, np.array([2, 0, 1, 0]))
    assert c.status == "info" and c.details["tied_images"] == 3
    assert c.details["accuracy_first_max"] == 0.75  # argmax takes class 1, 0, 1, 0
    assert c.details["accuracy_any_max"] == 1.0
    assert "3 of 4 test images have an exactly tied top-1" in c.summary and "moves accuracy by 25.00 pp" in c.summary
    assert c.details["most_classes_tied"] == 3 and "up to 3 classes share the maximum" in c.summary
    assert validate.tied_check(np.eye(3, dtype=np.float32), np.arange(3)).details["tied_images"] == 0


@pytest.mark.parametrize("diff,differing,flips,ok_here,ok_exact,status", [
    (0.0, 0, 0, 990, 990, "pass"),      # bit-exact
    (0.04, 2, 0, 990, 990, "pass"),     # last bits of an fp32 layer
    (2.6, 1000, 1, 989, 990, "warn"),   # saturation on this CPU, accuracy within the budget
    (0.04, 2, 1, 990, 990, "warn"),     # small, but a top-1 changed
    (6.0, 1000, 40, 960, 990, "fail"),  # accuracy depends on the CPU by more than the budget (1 %)
])
def test_portability_verdict_rules(diff, differing, flips, ok_here, ok_exact, status):
    from quant.runtime.reference import Agreement

    a = Agreement(1000, diff, differing, flips, 30.0, ok_here, ok_exact)
    c = validate.portability_verdict(a, 0.01, "avx2")
    assert c.status == status and "this CPU (avx2)" in c.summary and f"{differing} differ" in c.summary
    assert c.details["accuracy_here"] == ok_here / 1000 and c.details["cpu_int8_flags"] == "avx2"


def test_a_portability_warning_names_saturation_only_when_the_weights_can_saturate():
    """A PyTorch-style model with 7-bit weights must not be told its difference is 16-bit saturation, which
    its weights (within +-64) cannot reach: the warning then names onnxruntime's requantization rounding."""
    from onnx import numpy_helper

    from quant.runtime.reference import Agreement

    a = Agreement(1000, 0.019, 951, 3, 30.0, 990, 990)
    assert "saturate), so outputs differ" in validate.portability_verdict(a, 0.01, "avx2").summary
    c = validate.portability_verdict(a, 0.01, "avx2", saturates=False)
    assert c.status == "warn" and "no 16-bit sum can saturate" in c.summary and "rounding" in c.summary
    m = mnist12_like()
    m.graph.initializer.append(numpy_helper.from_array(np.array([64, -64, 3], np.int8), "w7"))
    assert not validate.can_saturate(m)
    m.graph.initializer.append(numpy_helper.from_array(np.array([65, 0], np.int8), "w8"))
    assert validate.can_saturate(m)


def test_portability_check_skips_an_op_without_reference(monkeypatch):
    from quant.runtime import reference

    def no_ref(*a, **k):
        raise reference.Unsupported("no exact reference for com.microsoft QLinearSigmoid (node s)")

    monkeypatch.setattr(reference, "compare", no_ref)
    c = validate.portability_check(mnist12_like(), None, "Input3", np.zeros((1, 1, 28, 28), np.float32), np.zeros(1), 0.01)
    assert c.status == "skip" and "QLinearSigmoid" in c.summary and "CPU int8 flags here" in c.summary


def test_an_op_left_between_dq_and_q_by_onnxruntime_runs_in_fp32(tmp_path):
    """onnxruntime's own QDQ models add an int8 bias to a uint8 activation (DQ -> Add <- DQ -> Q): onnxruntime
    cannot fuse that into an int8 op, so the executed graph runs the Add in fp32 (a file-level guess said int8)."""
    f = numpy_helper.from_array
    inits = [f(np.array(0.1, np.float32), "s"), f(np.array(0, np.uint8), "z"), f(np.array(0.01, np.float32), "bs"),
             f(np.array(0, np.int8), "bz"), f(np.arange(4, dtype=np.int8).reshape(1, 4), "bq")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"]), helper.make_node("Add", ["xd", "bd"], ["a"], name="bias"),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["aq"]), helper.make_node("DequantizeLinear", ["aq", "s", "z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    m = helper.make_model(g, ir_version=8, opset_imports=[helper.make_opsetid("", 13)])
    from quant.runtime import sessions

    executed = sessions.onnxruntime_graph(m.SerializeToString())
    assert models.precision_summary(executed)["fp32"] == {"Add": 1}


# ------------------------------------------------------------------------------------- real data
def _validate(model, models_dir, mnist_dir, tmp_path, *extra):
    return run_cli("validate", f"--input_model={model}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", "--config=mnist.yaml",
                   f"--data_dir={mnist_dir}", f"--report={tmp_path / 'v.json'}", *extra)


def test_validate_fails_the_zoo_int8_with_the_range_message(models_dir, mnist_dir, tmp_path):
    r = _validate(models_dir / "mnist-12-int8.onnx", models_dir, mnist_dir, tmp_path)
    assert r.returncode == 3, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: validation FAILED: input range: INPUT RANGE MISMATCH")
    assert "covers [0, 255]" in err and "feeds [0, 1]" in err and "7-bit" not in err
    # the figures depend on this CPU's int8 kernels (98.92 % on VNNI, 98.91 % on AVX2 for raw pixels): bounds only
    as_configured, in_range = map(float, re.search(r"int8 top-1 is ([\d.]+)% as configured and ([\d.]+)% when", err).groups())
    assert as_configured < 60 and in_range > 98.5
    doc = json.loads((tmp_path / "v.json").read_text())
    status = {c["name"]: c["status"] for c in doc["checks"]}
    portable = status.pop("CPU portability")
    assert status == {"structure": "pass", "documented preprocessing": "pass", "input range": "fail", "accuracy": "fail",
                      "tied outputs": "info", "per-layer error": "info", "test data": "skip"}
    assert portable in ("pass", "warn")  # 8-bit ranges: exact on VNNI, may saturate on AVX2 (here: inputs of 1-2 levels)
    layers = next(c for c in doc["checks"] if c["name"] == "per-layer error")["details"]["layers"]
    assert layers[0]["op"] == "QuantizeLinear" and layers[0]["levels_used"] == 2 and layers[0]["sqnr_db"] < 20
    assert layers[0]["fp32_twin"] == "Input3" and layers[0]["matched_by"] == "name"
    assert "## Per-layer error" in r.stdout and "**FAIL**" in r.stdout


def test_validate_passes_our_int8_and_checks_its_test_data(tuned_mnist12, models_dir, mnist_dir, tmp_path):
    out, _ = tuned_mnist12
    assert sorted(p.name for p in (out.parent / "mnist-12-int8_test_data").iterdir()) == [f"test_data_set_{i}" for i in range(3)]
    r = _validate(out, models_dir, mnist_dir, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    doc = json.loads((tmp_path / "v.json").read_text())
    checks = {c["name"]: c for c in doc["checks"]}
    assert all(c["status"] in ("pass", "info") for k, c in checks.items() if k != "input range")
    # 7-bit ranges: onnxruntime computes the exact integer result on every CPU (first conv fp32: last bits only)
    assert checks["CPU portability"]["details"]["top1_disagreements"] == 0
    assert checks["tied outputs"]["details"]["tied_images"] == 0  # float logits
    # the default model's first conv (1 input channel) runs in fp32, so its input is not quantized
    assert checks["input range"]["status"] == "skip" and "the first layer runs in fp32" in checks["input range"]["summary"]
    assert "3 of 3 test_data_set folders reproduced" in checks["test data"]["summary"]
    layers = checks["per-layer error"]["details"]["layers"]
    # QDQ: the activations entering the int8 conv and leaving it (its pool, transpose and reshape keep the
    # conv's quantized values: no re-quantization of their own; the FC output is float)
    assert [(r_["tensor"], r_["fp32_twin"]) for r_ in layers] == [
        ("Pooling66_Output_0.q", "Pooling66_Output_0"), ("Plus112_Output_0.q", "ReLU114_Output_0")]
    # the conv's output stands for the Relu's (a uint8 zero point 0 clamps at 0): found by value, and said so;
    # the conv computes only the 12x12 rows its 3x3/3 pool reads, compared with the fp32 twin's leading 12x12
    assert [r_["matched_by"].split(" ")[0] for r_ in layers] == ["name", "value"]
    assert "its leading 12x12 of 14x14" in layers[1]["matched_by"] and layers[1]["shape"] == [16, 12, 12]
    assert min(r_["sqnr_db"] for r_ in layers) > 25 and sum(r_["flag"].startswith("worst") for r_ in layers) == 1
    # the zoo's test data contract: the zoo int8 model does not reproduce our reference outputs
    bad = run_cli("check-test-data", f"--input_model={models_dir / 'mnist-12-int8.onnx'}", "--test_data",
                  str(out.parent / "mnist-12-int8_test_data"))
    assert bad.returncode == 3


@pytest.mark.parametrize("case,args,code,words", [
    ("missing model", ["--input_model=nope.onnx"], 4, "nope.onnx: input model file not found"),
    ("int8 baseline", ["--baseline_model={zoo_int8}"], 4, "is already quantized"),
    ("layout contradiction", ["--config={nhwc}"], 2, "preprocessing.layout is NHWC (['N', 28, 28, 1]) but"),
    ("bad samples", ["--samples=0"], 2, "--samples 0: must be >= 1"),
    ("bad portability samples", ["--portability_samples=10001"], 2, "--portability_samples 10001: must be <= 10000"),
    ("missing baseline flag", ["--baseline_model"], 2, "expected one argument"),
])
def test_validate_bad_inputs(case, args, code, words, models_dir, mnist_dir, tmp_path):
    from conftest import write_config

    nhwc = write_config(tmp_path / "nhwc.yaml", {"preprocessing": {"layout": "NHWC"}})
    base = {"--input_model": str(models_dir / "mnist-12-int8.onnx"), "--baseline_model": str(models_dir / "mnist-12.onnx"),
            "--config": "mnist.yaml", "--data_dir": str(mnist_dir), "--report": str(tmp_path / "v.json")}
    for a in args:
        k, _, v = a.partition("=")
        base[k] = v.format(zoo_int8=models_dir / "mnist-12-int8.onnx", nhwc=nhwc, tmp=tmp_path) if v else None
    argv = [f"{k}={v}" if v is not None else k for k, v in base.items()]
    r = run_cli("validate", *argv)
    assert r.returncode == code, (case, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "v.json").exists() and not (tmp_path / "v.md").exists()
    # one error line; a config that contradicts what the model documents is also warned about first
    assert len([line for line in r.stderr.strip().splitlines() if not line.startswith("[warning] ")]) == 1


def test_a_7bit_model_calibrated_on_raw_pixels_is_named_as_such(models_dir, mnist_dir, tmp_path):
    """The 2022 recipe's mistake made with 7-bit ranges (INC's default on CPUs without VNNI): input
    scale 255/127 = 2.008 represents [0, 512], but the model was calibrated for [0, 255]."""
    raw = write_config(tmp_path / "raw.yaml", {"preprocessing": {"scale": 1},  # the recipe's form: every layer int8, QOperator
                                               "quantization": {"format": "QOperator", "kernel_aware": False}})
    out = tmp_path / "raw-int8.onnx"
    t = run_cli(f"--input_model={models_dir / 'mnist-12.onnx'}", f"--config={raw}", f"--output_model={out}",
                f"--data_dir={mnist_dir}", script="run_tuning.sh")
    assert t.returncode == 0, t.stderr
    r = _validate(out, models_dir, mnist_dir, tmp_path)
    assert r.returncode == 3, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert "scale 2.008, zero point 0, uint8, 7-bit: integers 0..127) covers [0, 255]" in err
    assert "calibrated for inputs in [0, 255]" in err and "512" not in err


# ---------------------------------------------------------------------- other producers' int8 models
def _ort_producer():
    """examples/ort_quantize_static.py (onnxruntime's quantize_static), as docs/validate.md runs it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "ort_quantize_static.py"
    spec = importlib.util.spec_from_file_location("ort_quantize_static", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# 7-bit weights (reduce_range): the products cannot saturate 16-bit sums, so each model computes the
# exact integer result on every CPU and its verdicts do not depend on the machine
PRODUCERS = {
    "QDQ": ({}, {"QLinearConv": 2, "QLinearMatMul": 1}),
    "QDQ per-channel": ({"per_channel": True}, {"QLinearConv": 2, "QLinearMatMul": 1}),
    "QOperator QGemm": ({"fmt": "QOperator", "gemm": True}, {"QLinearConv": 2, "QGemm": 1}),
    "QDQ QGemm float output": ({"gemm": True, "float_gemm_output": True}, {"QLinearConv": 2, "QGemm": 1}),
    "QDQ int8 activations, asymmetric weights": ({"activations": "int8", "symmetric_weights": False},
                                                 {"QLinearConv": 2, "QLinearMatMul": 1}),
}


@pytest.fixture(scope="module")
def ort_calibration(mnist_dir):
    return _ort_producer(), _ort_producer().calibration_images(str(mnist_dir))


@pytest.mark.parametrize("kind", PRODUCERS)
def test_validate_passes_onnxruntime_quantize_static_models(kind, ort_calibration, models_dir, mnist_dir, tmp_path):
    producer, x = ort_calibration
    kwargs, int8_ops = PRODUCERS[kind]
    model = tmp_path / "ort.onnx"
    producer.quantize(str(models_dir / "mnist-12.onnx"), str(model), x, reduce_range=True, **kwargs)
    r = _validate(model, models_dir, mnist_dir, tmp_path, "--json", "--portability_samples=300")
    assert r.returncode == 0, (kind, r.stdout, r.stderr)
    assert r.stderr == ""  # --json is quiet
    verdicts = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert verdicts["structure"]["verdict"].startswith("PASS structure: ONNX checker passed")
    doc = json.loads((tmp_path / "v.json").read_text())
    checks = {c["name"]: c for c in doc["checks"]}
    ops = checks["structure"]["details"]["ops"]
    assert {k: v for k, v in ops["int8"].items() if k in int8_ops} == int8_ops, ops
    assert "Add" not in ops["int8"]  # a bias Add left between DQ and Q runs in fp32 (reported as such)
    # onnxruntime quantizes activations with full 8-bit ranges even with reduce_range (weights only)
    assert checks["input range"]["status"] == "pass" and checks["input range"]["details"]["quantizer"]["bits"] == 8
    assert "covers [0, 1]" in checks["input range"]["summary"]
    assert checks["accuracy"]["status"] == "pass" and checks["accuracy"]["details"]["int8"] > 0.985
    layers = checks["per-layer error"]["details"]["layers"]
    assert layers and all(r_["sqnr_db"] > 25 for r_ in layers)
    assert any(r_["matched_by"] == "name" for r_ in layers)
    portable = checks["CPU portability"]
    assert portable["details"]["images"] == 300 and portable["details"]["top1_disagreements"] == 0
    if "asymmetric" not in kind:  # zero points on the weights take the products beyond 7 bits
        assert portable["status"] == "pass" and portable["details"]["images_differing"] == 0


def test_validate_json_on_failure_keeps_the_exit_code(models_dir, mnist_dir, tmp_path):
    r = _validate(models_dir / "mnist-12-int8.onnx", models_dir, mnist_dir, tmp_path, "--json", "--samples=20",
                  "--portability_samples=20")
    assert r.returncode == 3
    doc = json.loads(r.stdout)
    assert doc["passed"] is False and doc["exit_code"] == 3
    assert [c["verdict"].split(":")[0] for c in doc["checks"] if c["status"] == "fail"] == ["FAIL input range", "FAIL accuracy"]
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: validation FAILED")


def test_layer_by_layer_runs_keep_only_tensors_with_a_row_per_image():
    """An If's condition is a scalar (and a shape has no batch dimension): validate's per-layer check
    stacks tensors image batch by batch, which ended in "zero-dimensional arrays cannot be concatenated"
    (exit 1) on any model with an If; such tensors are now left out of the comparison."""
    m = read_in_if_body(mnist12_like(batch="N"), "p2", initializer=False)
    names = {"cond_min": TensorProto.FLOAT, "cond": TensorProto.BOOL, "p2": TensorProto.FLOAT, "term": TensorProto.FLOAT}
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    vals = validate._run_all(validate._with_outputs(m, names), x, "Input3", 2, "m")
    assert {"p2", "term", "Plus214_Output_0"} <= set(vals) and not {"cond_min", "cond"} & set(vals)
    assert vals["p2"].shape == (5, 16, 4, 4) and vals["term"].shape == (5, 1)
