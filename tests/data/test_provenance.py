"""What a model documents about its preprocessing (quant/data/provenance.py) and how runs use it (inputs.preprocessing_for)."""

import json

import onnx
import pytest
from conftest import synth_config
from helpers import mnist12_like, save

from quant import __version__, config
from quant.data import provenance
from quant.files import sha256_bytes
from quant.graph import models
from quant.workflows import benchmark, inputs
from quant.workflows.options import ReportOptions

RAW = {"scale": "1", "mean": 0.0, "std": 1.0, "layout": "NCHW"}
UNIT = {"scale": "1/255", "mean": 0.0, "std": 1.0, "layout": "NCHW"}


def _stamped(tmp_path, pre=RAW, name="m.onnx"):
    m = provenance.stamp(mnist12_like(), pre, "ab" * 32)
    return save(m, tmp_path / name)


def test_stamp_round_trips_and_is_deterministic(tmp_path):
    a = models.serialize(provenance.stamp(mnist12_like(), RAW, "ab" * 32))
    b = models.serialize(provenance.stamp(provenance.stamp(mnist12_like(), UNIT, "cd" * 32), RAW, "ab" * 32))  # re-stamping replaces
    assert a == b
    m = onnx.load_from_string(a)
    assert (m.producer_name, m.producer_version) == ("mnist-quant", __version__)
    assert [p.key for p in m.metadata_props] == sorted([provenance.KEY_PREPROCESSING, provenance.KEY_CALIBRATION])
    d = provenance.documented(m, "m.onnx", sha256_bytes(a))
    assert d.preprocessing == RAW and d.calibration_sha256 == "ab" * 32 and "m.onnx's metadata (mnist-quant" in d.source


def test_other_metadata_is_kept(tmp_path):
    m = mnist12_like()
    onnx.helper.set_model_props(m, {"author": "me"})
    keys = {p.key: p.value for p in provenance.stamp(m, RAW, "ab" * 32).metadata_props}
    assert keys["author"] == "me" and provenance.KEY_PREPROCESSING in keys


@pytest.mark.parametrize("value", ['{"scale": "1"}', "not json", '{"scale":"0","mean":0,"std":1,"layout":"NCHW"}',
                                   '{"scale":"1","mean":0,"std":1,"layout":"CHW"}', "x" * 5000, "[" * 2000 + "]" * 2000,
                                   '{"scale":"1e-999999999","mean":0,"std":1,"layout":"NCHW"}'])
def test_unusable_metadata_is_reported_not_trusted(value):
    m = mnist12_like()
    onnx.helper.set_model_props(m, {provenance.KEY_PREPROCESSING: value})
    d = provenance.documented(m, "m.onnx", "0" * 64)
    assert d.preprocessing is None and "unusable" in d.problem


def test_zoo_files_are_known_by_sha256():
    d = provenance.documented(mnist12_like(), "x.onnx", "5eac0752eecf4991a5e4157cf31a186f2c61090494019e87979ac17df1dae253")
    assert d.preprocessing == UNIT and "mnist-12-int8.onnx" in d.source and "Model Zoo README" in d.source
    assert provenance.documented(mnist12_like(), "x.onnx", "0" * 64) is None


def test_disagreement_names_both_and_only_when_different():
    d = provenance.Documented(UNIT, "the zoo")
    assert provenance.disagreement(d, {**UNIT, "scale": "2/510"}, "config c.yaml") is None  # the same number
    assert provenance.disagreement(d, {**UNIT, "scale": 0.00392156862745098}, "config c.yaml") is None  # 1/255 as a float
    w = provenance.disagreement(d, RAW, "config c.yaml")
    assert "(scale 1, mean 0, std 1, NCHW, from config c.yaml)" in w and "the zoo (scale 1/255" in w and "54.5 %" in w


def test_a_baseline_documentation_is_never_adopted_for_the_model_under_test(tmp_path):
    bare = models.load(save(mnist12_like(), tmp_path / "bare.onnx"))
    documented = models.load(_stamped(tmp_path, RAW, "base.onnx"))
    cfg, logs = inputs.settle_model(config.defaults(), bare)[0], []  # as every run does first
    cfg, prov = inputs.preprocessing_for(cfg, True, [bare, documented], logs.append)
    assert cfg.preprocessing_dict() == UNIT and prov["source"] == "the built-in defaults"
    assert any("bare.onnx documents no preprocessing" in line for line in logs) and "base.onnx's metadata" in prov["warnings"][0]


def test_a_documented_layout_that_does_not_fit_is_ignored(tmp_path):
    m = models.load(_stamped(tmp_path, {**UNIT, "layout": "flat"}, "flat.onnx"))  # the model takes [N,1,28,28]
    cfg = inputs.settle_model(config.defaults(), m)[0]
    cfg, prov = inputs.preprocessing_for(cfg, True, [m], lambda s: None)
    assert cfg.preprocessing.layout == "NCHW" and "layout flat does not fit the model's input" in prov["warnings"][0]


def test_runs_adopt_the_documented_preprocessing_only_without_a_config(tmp_path):
    m = models.load(_stamped(tmp_path))
    logs = []
    cfg = inputs.settle_model(config.defaults(), m)[0]
    cfg, prov = inputs.preprocessing_for(cfg, True, [m], logs.append)
    assert cfg.preprocessing_dict() == RAW and "metadata" in prov["source"] and not prov["warnings"]
    cfg = inputs.settle_model(config.defaults(), m)[0]
    cfg, prov = inputs.preprocessing_for(cfg, False, [m], logs.append)  # a config (here the defaults) is used as given
    assert cfg.preprocessing_dict() == UNIT and len(prov["warnings"]) == 1 and "from the built-in defaults" in prov["warnings"][0]
    assert any(line.startswith("[warning] ") for line in logs)


@pytest.mark.realdata
def test_benchmark_without_config_uses_the_model_metadata(tmp_path, mnist_dir):
    synth_dir = mnist_dir  # no --config means the defaults, which verify the canonical MNIST md5s
    raw_model = _stamped(tmp_path, RAW, "raw.onnx")
    cfg_path = synth_config(tmp_path)
    doc = benchmark.benchmark_models([str(raw_model)], config=None, data_dir=str(synth_dir), log=lambda m: None,
                                     options=benchmark.BenchmarkOptions(mode="accuracy"),
                                     report=ReportOptions(path=str(tmp_path / "b.json"), plots=False))
    assert doc["preprocessing"] == RAW and "metadata" in doc["preprocessing_source"] and not doc["warnings"]
    doc = benchmark.benchmark_models([str(raw_model)], config=str(cfg_path), data_dir=str(synth_dir), log=lambda m: None,
                                     options=benchmark.BenchmarkOptions(mode="accuracy"),
                                     report=ReportOptions(path=str(tmp_path / "b2.json"), plots=False))
    assert doc["preprocessing"]["scale"] == "1/255" and doc["warnings"] and "raw.onnx's metadata" in doc["warnings"][0]
    md = (tmp_path / "b2.md").read_text()
    assert "> **Warning:**" in md and "preprocessing source: config" in md
    assert json.loads((tmp_path / "b2.json").read_text())["warnings"] == doc["warnings"]
