"""The zoo recipe's INC-1.x mnist.yaml, accepted verbatim (quant/config/recipe.py).

The recipe file itself is not copied into the repo: :func:`recipe_doc` builds a config with exactly
its keys and values (intel/neural-compressor examples/onnxrt/image_recognition/onnx_model_zoo/mnist/
quantization/ptq/mnist.yaml, 2022-03-29 .. 2022-09-20), only the dataset roots replaced as its README
tells users to.
"""

import copy
import json
from fractions import Fraction

import numpy as np
import onnx
import pytest
import yaml
from conftest import run_cli

from quant import config, data
from quant.config import preprocessing
from quant.data import provenance
from quant.errors import ConfigError

RECIPE_TRANSFORM = {"Cast": {"dtype": "float32"}, "Transpose": {"perm": [2, 0, 1]}}


def _loader(root, transform=None):
    return {"batch_size": 1, "dataset": {"MNIST": {"root": root}}, "transform": copy.deepcopy(RECIPE_TRANSFORM if transform is None else transform)}


def recipe_doc(root="/path/to/dataset", transform=None) -> dict:
    return {
        "model": {"name": "mnist", "framework": "onnxrt_qlinearops"},
        "quantization": {"approach": "post_training_static_quant", "calibration": {"dataloader": _loader(root, transform)}},
        "evaluation": {
            "accuracy": {"metric": {"topk": 1}, "dataloader": _loader(root, transform)},
            "performance": {"warmup": 10, "iteration": 100, "configs": {"cores_per_instance": 28, "num_of_instance": 1},
                            "dataloader": _loader(root, transform)},
        },
        "tuning": {"accuracy_criterion": {"relative": 0.01}, "exit_policy": {"timeout": 0}, "random_seed": 9527},
    }


def write(tmp_path, doc, name="mnist.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def test_the_recipe_maps_every_key(tmp_path):
    cfg = config.load(write(tmp_path, recipe_doc("data/mnist")))
    assert cfg.quantization.format == "QOperator" and cfg.quantization.approach == "static"
    # INC 1.x's MNIST yields raw 0..255 pixels; Cast + Transpose [2,0,1] do not rescale: raw pixels, NCHW
    assert cfg.preprocessing_dict() == {"scale": "1", "mean": 0.0, "std": 1.0, "layout": "NCHW"}
    assert cfg.dataset.root == str(tmp_path / "data/mnist")  # relative to the config file, like every path key
    assert (cfg.benchmark.warmup, cfg.benchmark.iterations, cfg.benchmark.batch_size) == (10, 100, 1)
    assert cfg.evaluation.batch_size == 1
    assert cfg.criterion == ("relative", 0.01) and cfg.tuning.timeout == 0 and cfg.tuning.random_seed == 9527
    notes = " ".join(cfg.notes)
    assert "train split" in notes and "first test images" in notes
    assert "cores_per_instance (28" in notes and "num_of_instance" in notes and "ignored" in notes
    assert "calibration.dataloader.batch_size" in notes
    assert cfg.quantization.calibration.split == "train"


def _inc_chain(images: np.ndarray, chain: dict) -> np.ndarray:
    """What INC 1.x's MNIST dataset + onnxrt transforms give per image (numpy, written from INC's source:
    np.expand_dims(image, -1); Cast astype; Rescale / 255.0; Normalize (x - mean) / std; Transpose; Reshape)."""
    out = []
    for img in images:
        x = np.expand_dims(img, -1)
        for name, p in chain.items():
            p = p or {}
            if name == "Cast":
                x = x.astype(p.get("dtype", "float32"))
            elif name == "Rescale":
                x = x.astype("float32") / 255.0
            elif name == "Normalize":
                x = (x - np.array(p.get("mean", [0.0]))) / np.array(p.get("std", [1.0]))
            elif name == "Transpose":
                x = np.transpose(x, p["perm"])
            elif name == "Reshape":
                x = np.reshape(x, p["shape"])
        out.append(x)
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("chain,want", [
    (RECIPE_TRANSFORM, ("1", 0.0, 1.0, "NCHW")),
    ({"Cast": {"dtype": "float32"}}, ("1", 0.0, 1.0, "NHWC")),
    ({"Rescale": {}, "Transpose": {"perm": [2, 0, 1]}}, ("1/255", 0.0, 1.0, "NCHW")),
    ({"Rescale": None, "Normalize": {"mean": [0.1307], "std": [0.3081]}, "Transpose": {"perm": [2, 0, 1]}}, ("1/255", 0.1307, 0.3081, "NCHW")),
    ({"Cast": {"dtype": "float32"}, "Normalize": {"mean": [33.3], "std": [78.6]}, "Rescale": {}, "Reshape": {"shape": [784]}},
     ("1", 33.3, 78.6 * 255, "flat")),
    ({"ToArray": {}, "Rescale": {}, "Reshape": {"shape": [-1]}}, ("1/255", 0.0, 1.0, "flat")),
    ({"Rescale": {}, "Reshape": {"shape": [1, 28, 28]}}, ("1/255", 0.0, 1.0, "NCHW")),
])
def test_transform_chains_become_the_preprocessing_inc_applies(tmp_path, chain, want):
    cfg = config.load(write(tmp_path, recipe_doc("d", chain)))
    p = cfg.preprocessing
    assert (Fraction(p.scale), p.layout) == (Fraction(want[0]), want[3])
    assert (p.mean, p.std) == pytest.approx(want[1:3])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    ours = preprocessing.apply(images, cfg.scale, p.mean, p.std, p.layout)
    inc = _inc_chain(images, chain)
    assert ours.shape[1:] == inc.shape[1:]
    np.testing.assert_allclose(ours, inc, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mutate,words", [
    (lambda d: d["evaluation"]["accuracy"]["dataloader"]["dataset"]["MNIST"].update(root="/elsewhere"),
     r"evaluation.accuracy.dataloader.dataset.MNIST.root: '/elsewhere' differs from quantization.calibration.dataloader.dataset.MNIST.root"),
    (lambda d: d["evaluation"]["accuracy"]["dataloader"].update(transform={"Rescale": {}, "Transpose": {"perm": [2, 0, 1]}}),
     r"evaluation.accuracy.dataloader.transform: gives pixels \* 1/255.* but quantization.calibration.dataloader.transform gives raw 0..255"),
    (lambda d: d.update(preprocessing={"scale": "1/255"}), r"preprocessing: contradicts quantization.calibration.dataloader.transform"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Resize={"size": 32}),
     r"transform.Resize: transform 'Resize' cannot be expressed as preprocessing; supported: Cast, Rescale"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Cast={"dtype": "uint8"}), r"Cast.dtype: the models take float32"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Transpose={"perm": [0, 0, 1]}), r"Transpose.perm: expected a permutation"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Transpose={"perm": [0, 2, 1]}),
     r"leaves images of shape \[28, 1, 28\]"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Reshape={"shape": [700]}), r"Reshape.shape: expected a shape of 784"),
    (lambda d: d["quantization"]["calibration"]["dataloader"].update(dataset={"FashionMNIST": {"root": "x"}}), r"only the MNIST dataset"),
    (lambda d: d["evaluation"]["accuracy"]["dataloader"]["dataset"]["MNIST"].update(train=True), r"accuracy is measured on the 10,000 test images"),
    (lambda d: d["quantization"]["calibration"]["dataloader"].update(filter={"LabelBalance": {}}),
     r"unknown key 'quantization.calibration.dataloader.filter' \(supported here: batch_size, dataset"),
    (lambda d: d["evaluation"]["performance"]["configs"].update(cores=2), r"unknown key 'evaluation.performance.configs.cores'"),
    (lambda d: d["evaluation"]["accuracy"].update(metric={"topk": 5}), r"evaluation.accuracy.metric: only top-1 accuracy"),
    (lambda d: d["evaluation"]["accuracy"]["dataloader"].update(batch_size=0), r"evaluation.accuracy.dataloader.batch_size: expected an integer in 1..10000"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Normalize={"mean": [0.1, 0.2]}), r"Normalize.mean: MNIST images have one channel"),
    (lambda d: d.update(benchmark={"iterations": 5}), r"evaluation.performance.iteration: contradicts benchmark.iterations"),
    # a perm that swaps height and width loaded as a layout (transposed digits)
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Transpose={"perm": [1, 0, 2]}),
     r"Transpose.perm: \[1, 0, 2\] swaps the image's height and width"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Transpose={"perm": [2, 1, 0]}), r"swaps the image's height"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Transpose={"perm": [2, 0, 1, "x"]}), r"expected a permutation"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["transform"].update(Normalize={"std": [10 ** 400]}), r"Normalize.std: expected a finite"),
    (lambda d: d["quantization"]["calibration"]["dataloader"]["dataset"]["MNIST"].update(root="a\0b"), r"MNIST.root: expected a folder path"),
    (lambda d: d["evaluation"]["accuracy"].update(metric={"topk": True}), r"only top-1 accuracy"),
    (lambda d: d.update(preprocessing={"scale": "1e-999999999"}), r"preprocessing: contradicts"),  # at once (it hung in Fraction)
])
def test_recipe_mistakes_name_the_key(tmp_path, mutate, words):
    doc = recipe_doc("d")
    mutate(doc)
    with pytest.raises(ConfigError, match=words) as e:
        config.load(write(tmp_path, doc))
    assert "\n" not in str(e.value) and "mnist.yaml" in str(e.value)


def test_transposing_the_digit_after_a_reshape_is_refused(tmp_path):
    chain = {"Rescale": {}, "Reshape": {"shape": [28, 28]}, "Transpose": {"perm": [1, 0]}}
    with pytest.raises(ConfigError, match="swaps the image's height and width"):
        config.load(write(tmp_path, recipe_doc("d", chain)))


def test_the_same_root_written_two_ways_is_one_folder(tmp_path):
    doc = recipe_doc("mnist")
    doc["evaluation"]["accuracy"]["dataloader"]["dataset"]["MNIST"]["root"] = "./mnist/"
    doc["dataset"] = {"root": str(tmp_path / "mnist")}
    assert config.load(write(tmp_path, doc)).dataset.root == str(tmp_path / "mnist")


def test_explicit_preprocessing_that_agrees_is_accepted(tmp_path):
    doc = recipe_doc("d")
    doc["preprocessing"] = {"scale": 1, "layout": "NCHW"}
    assert config.load(write(tmp_path, doc)).preprocessing_dict()["scale"] == "1"


def test_data_dir_flag_overrides_the_recipe_root(tmp_path):
    root, source = data.resolve_data_dir(str(tmp_path / "flag"), config.load(write(tmp_path, recipe_doc("d"))).dataset.root)
    assert root == tmp_path / "flag" and source == "--data_dir"


# ----------------------------------------------------------------------- real data, end to end
@pytest.mark.realdata
def test_the_recipe_tunes_mnist12_for_raw_pixels_and_warns(tmp_path, mnist_dir, models_dir):
    cfg_path = write(tmp_path, recipe_doc(str(mnist_dir)))
    out = tmp_path / "mnist-12-int8.onnx"
    r = run_cli(f"--input_model={models_dir / 'mnist-12.onnx'}", f"--config={cfg_path}", f"--output_model={out}",
                script="run_tuning.sh", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # the zoo README documents [0, 1] for mnist-12: the warning names both, and the config still wins
    assert "[warning] the preprocessing in use (scale 1, mean 0, std 1, NCHW, from config" in r.stderr
    assert "(scale 1/255, mean 0, std 1, NCHW)" in r.stderr and "mnist-12.onnx (known by sha256)" in r.stderr
    assert "[config] calibration uses the train split" in r.stderr
    doc = json.loads((tmp_path / "mnist-12-int8.report.json").read_text())
    assert doc["preprocessing"]["scale"] == "1" and doc["warnings"] and doc["config"]["notes"]
    assert doc["quantization"]["format"] == "QOperator" and doc["passed"]
    assert doc["int8"]["accuracy"] >= doc["fp32"]["accuracy"] * 0.99
    m = onnx.load(str(out))
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta[provenance.KEY_PREPROCESSING]) == {"layout": "NCHW", "mean": 0.0, "scale": "1", "std": 1.0}
    assert meta[provenance.KEY_CALIBRATION] == doc["calibration"]["sha256"]
    # validate without --config reads the model's metadata: raw pixels, so the accuracy passes
    v = run_cli("validate", f"--input_model={out}", f"--baseline_model={models_dir / 'mnist-12.onnx'}", f"--data_dir={mnist_dir}",
                f"--report={tmp_path / 'v.json'}", cwd=tmp_path)
    assert v.returncode == 0, v.stdout + v.stderr
    assert "| accuracy | PASS |" in v.stdout and "| documented preprocessing | **warn** |" in v.stdout, v.stdout
    assert f"[data] preprocessing: scale 1, mean 0, std 1, NCHW (from {out}'s metadata (mnist-quant" in v.stderr, v.stderr
