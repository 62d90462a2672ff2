import numpy as np
import pytest
from helpers import mnist12_like, pattern_images, pattern_linear

from quant.config import preprocessing
from quant.runtime import evaluation, sessions


def test_batched_prediction_equals_image_by_image():
    model = pattern_linear("N", "flat").SerializeToString()
    rng = np.random.default_rng(1)
    labels = np.arange(37) % 10
    x = preprocessing.apply(pattern_images(labels, rng), 1 / 255, 0, 1, "flat")
    s = sessions.make_session(model)
    a = evaluation.predict(s, x, "input", batch_size=1)
    b = evaluation.predict(s, x, "input", batch_size=16)
    assert a.shape == (37, 10) and np.allclose(a, b, atol=1e-6)
    assert evaluation.accuracy(a, labels) == 1.0  # the pattern model is exact


def test_accuracy_and_effective_batch():
    out = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]
    assert evaluation.accuracy(out, np.array([1, 2, 0, 4])) == 0.75
    assert evaluation.effective_batch(1, 64) == 1 and evaluation.effective_batch(None, 64) == 64


def test_evaluator_on_fixed_batch_model():
    x = np.zeros((3, 1, 28, 28), np.float32)
    ev = evaluation.Evaluator(x, np.zeros(3, np.int64), "Input3", batch_size=1)
    acc = ev(mnist12_like().SerializeToString())
    assert 0.0 <= acc <= 1.0 and acc in (0.0, 1.0)  # identical inputs -> identical predictions


@pytest.mark.realdata
@pytest.mark.parametrize("scale,expected", [(1 / 255, 0.9890), (1.0, 0.9891)])
def test_zoo_fp32_accuracy(models_dir, splits, scale, expected):
    """Figures of ../shared/README.md: mnist-12 98.90 % on [0,1], 98.91 % on raw pixels."""
    x = preprocessing.apply(splits["test"].images, scale, 0, 1, "NCHW")
    ev = evaluation.Evaluator(x, splits["test"].labels, "Input3")
    assert ev((models_dir / "mnist-12.onnx").read_bytes()) == pytest.approx(expected, abs=1e-4)


@pytest.mark.realdata
def test_zoo_int8_is_broken_for_documented_preprocessing(models_dir, splits):
    x = preprocessing.apply(splits["test"].images, 1 / 255, 0, 1, "NCHW")
    ev = evaluation.Evaluator(x, splits["test"].labels, "Input3")
    assert ev((models_dir / "mnist-12-int8.onnx").read_bytes()) == pytest.approx(0.5452, abs=1e-4)
