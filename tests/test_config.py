from pathlib import Path

import pytest

from conftest import REPO, run_cli, write_config
from quant import calib, config
from quant.errors import ConfigError


def load_text(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return config.load(p)


def test_mnist_yaml_equals_defaults():
    shipped = config.load(REPO / "mnist.yaml").to_dict()
    for k in ("source", "sha256"):
        shipped.pop(k, None)
    d = config.defaults().to_dict()
    for k in ("source", "sha256"):
        d.pop(k, None)
    assert shipped == d


def test_defaults_are_the_zoo_preprocessing_and_criterion():
    c = config.defaults()
    assert c.scale == pytest.approx(1 / 255) and c.preprocessing.layout == "NCHW"
    assert c.criterion == ("relative", 0.01)
    assert c.quantization.calibration.split == "train"


@pytest.mark.parametrize("text,words", [
    ("tuning:\n  acuracy_criterion: {relative: 0.01}\n", "unknown key 'tuning.acuracy_criterion' .*did you mean 'tuning.accuracy_criterion'"),
    ("modle: {}\n", "unknown key 'modle' .*did you mean 'model'"),
    ("tuning:\n  max_trials: ten\n", "tuning.max_trials: expected an integer, got string 'ten'"),
    ("tuning:\n  max_trials: 0\n", "tuning.max_trials: must be >= 1"),
    ("tuning:\n  accuracy_criterion: {relative: -0.1}\n", r"tuning.accuracy_criterion.relative: tolerance must be in \[0, 1\)"),
    ("tuning:\n  accuracy_criterion: {relative: 0.1, absolute: 0.1}\n", "exactly one of"),
    ("quantization:\n  format: QOp\n", "quantization.format: must be one of QOperator, QDQ; got 'QOp' .*did you mean 'QOperator'"),
    ("quantization:\n  calibration: {sampling_size: 0}\n", "sampling_size: must be >= 1"),
    ("quantization:\n  calibration: {sampling_size: 70000}\n", "sampling_size: must be <= 60000"),
    ("tuning:\n  strategy: fastest\n", "tuning.strategy: must be one of"),
    ("preprocessing:\n  layout: CHW\n", "preprocessing.layout: must be one of NCHW, NHWC, flat"),
    ("preprocessing:\n  std: 0\n", "preprocessing.std: must be > 0"),
    ("preprocessing:\n  scale: one\n", "preprocessing.scale: expected a number or a fraction"),
    ("dataset:\n  download: yes please\n", "dataset.download: expected true or false"),
    ("model: [1, 2]\n", "model: expected a mapping"),
    ("- a\n- b\n", "config must be a mapping"),
    ("", "config is empty"),
    ("model: {name: [unclosed\n", "YAML syntax error at line"),
    ("model:\n  framework: onnxrt_integerops\n", "not supported"),
    ("model:\n  framework: onnxrt_qdq\nquantization:\n  format: QOperator\n", "contradicts"),
    ("evaluation:\n  accuracy: {metric: {topk: 5}}\n", "only the top-1 metric"),
])
def test_bad_configs_name_the_key(tmp_path, text, words):
    with pytest.raises(ConfigError, match=words) as e:
        load_text(tmp_path, text)
    assert "\n" not in str(e.value) and "c.yaml" in str(e.value)


def test_missing_and_directory_config(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        config.load(tmp_path)


def test_zoo_recipe_inc1x_keys_are_mapped(tmp_path):
    zoo = """
version: 1.0
model:
  name: mnist
  framework: onnxrt_qlinearops
quantization:
  approach: post_training_static_quant
  calibration:
    sampling_size: [50]
evaluation:
  accuracy:
    metric:
      topk: 1
tuning:
  accuracy_criterion:
    absolute: 0.005
  exit_policy:
    timeout: 30
    max_trials: 7
  random_seed: 42
  strategy:
    name: basic
"""
    c = load_text(tmp_path, zoo)
    assert c.quantization.format == "QOperator" and c.quantization.approach == "static"
    assert c.quantization.calibration.sampling_size == 50
    assert c.criterion == ("absolute", 0.005)
    assert (c.tuning.timeout, c.tuning.max_trials, c.tuning.random_seed, c.tuning.strategy) == (30, 7, 42, "basic")
    assert load_text(tmp_path, "model: {framework: onnxrt_qdq}\n").quantization.format == "QDQ"


def test_scale_accepts_fraction_and_number(tmp_path):
    assert load_text(tmp_path, "preprocessing: {scale: 1}\n").scale == 1.0
    assert load_text(tmp_path, "preprocessing: {scale: '2/510'}\n").scale == pytest.approx(1 / 255)


def test_config_sha_is_the_file_sha(tmp_path):
    import hashlib

    p = tmp_path / "c.yaml"
    p.write_text("tuning: {max_trials: 3}\n")
    assert config.load(p).sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_every_schema_key_is_documented_in_readme():
    readme = (REPO / "README.md").read_text()
    missing = [k for k, _, _ in config.describe_schema() if f"`{k}`" not in readme]
    assert not missing, f"README config reference lacks {missing}"


# ------------------------------------------------------------- one default, usable from anywhere
def test_reduce_range_defaults_to_7bit_and_is_validated(tmp_path):
    assert config.defaults().quantization.reduce_range is True
    with pytest.raises(ConfigError, match=r"quantization.reduce_range: expected true or false"):
        config.load(write_config(tmp_path / "c.yaml", {"quantization": {"reduce_range": "yes"}}))


def test_root_mnist_yaml_is_the_packaged_default():
    assert (REPO / "mnist.yaml").resolve() == config.DEFAULT_CONFIG
    assert config.DEFAULT_CONFIG.is_file()


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    sub = tmp_path / "project" / "conf"
    sub.mkdir(parents=True)
    cfg_path = write_config(sub / "c.yaml", {"dataset": {"root": "../data"}, "output": {"report": "out/r.json"},
                                            "quantization": {"calibration": {"manifest": "sets.json"}}})
    monkeypatch.chdir(tmp_path)  # the working folder plays no part
    c = config.load(cfg_path)
    assert c.dataset.root == str(sub / ".." / "data")
    assert c.output.report == str(sub / "out" / "r.json")
    assert calib.manifest_path(c) == sub / "sets.json"
    absolute = config.load(write_config(sub / "d.yaml", {"dataset": {"root": str(tmp_path / "abs")}}))
    assert absolute.dataset.root == str(tmp_path / "abs")
    home = config.load(write_config(sub / "e.yaml", {"dataset": {"root": "~/mnist"}}))
    assert home.dataset.root == str(Path.home() / "mnist")


def test_no_manifest_named_means_the_builtin_one(tmp_path):
    for c in (config.defaults(), config.load(REPO / "mnist.yaml")):
        assert calib.manifest_path(c) == calib.BUILTIN_MANIFEST
    assert calib.BUILTIN_MANIFEST.is_file() and calib.BUILTIN_MANIFEST.parent.parent.name == "quant"


def test_config_command_prints_the_default(tmp_path):
    r = run_cli("config", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == config.DEFAULT_CONFIG.read_text()
    copy = tmp_path / "mine.yaml"
    copy.write_text(r.stdout)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("source", "sha256")}  # noqa: E731
    assert strip(config.load(copy).to_dict()) == strip(config.defaults().to_dict())
