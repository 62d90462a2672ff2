import fractions
import math
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli, write_config

from quant import cli, config
from quant.data import calib
from quant.errors import ConfigError, InputError, UsageError
from quant.workflows import benchmark


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
    assert c.scale == pytest.approx(1 / 255) and c.preprocessing.layout is None  # read from the model
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
    ("quantization:\n  calibration: {sampling_size: 60001}\n", "sampling_size: must be <= 60000, got 60001"),
    ("tuning:\n  strategy: fastest\n", "tuning.strategy: must be one of"),
    ("preprocessing:\n  layout: CHW\n", "preprocessing.layout: must be one of NCHW, NHWC, flat"),
    ("preprocessing:\n  std: 0\n", "preprocessing.std: must be >= 1e-06"),
    # numbers that used to overflow, hang or fail late inside INC
    ("preprocessing:\n  scale: '1e400'\n", "preprocessing.scale: must be <= 1000, got '1e400'"),
    ("preprocessing:\n  scale: 1e-999999999\n", "preprocessing.scale: must be >= 1e-06"),
    ("preprocessing:\n  scale: .nan\n", "preprocessing.scale: must be a finite number"),
    ("preprocessing:\n  mean: .nan\n", "preprocessing.mean: must be a finite number"),
    ("preprocessing:\n  mean: " + "9" * 400 + "\n", "preprocessing.mean: must be <= 1e"),
    ("preprocessing:\n  std: .inf\n", r"preprocessing.std: must be <= 1e\+06, got inf"),
    ("tuning:\n  random_seed: 4294967296\n", "tuning.random_seed: must be <= 4294967295, got 4294967296"),
    ("quantization:\n  calibration: {seed: -1}\n", "calibration.seed: must be >= 0"),
    ("benchmark:\n  iterations: 1000000000000\n", "benchmark.iterations: must be <= 1000000, got 1000000000000"),
    ("benchmark:\n  threads: 1000\n", "benchmark.threads: must be <= 256, got 1000"),
    ("tuning:\n  accuracy_criterion: {absolute: .nan}\n", r"tolerance must be in \[0, 1\), got nan"),
    ("preprocessing:\n  scale: one\n", "preprocessing.scale: expected a number or a fraction"),
    ("dataset:\n  download: yes please\n", "dataset.download: expected true or false"),
    ("model: [1, 2]\n", "model: expected a mapping"),
    ("- a\n- b\n", "config must be a mapping"),
    ("", "config is empty"),
    ("model: {name: [unclosed\n", "YAML syntax error at line"),
    ("version: 2001-02-30\n", "YAML syntax error at line 1, column 10: day is out of range for month"),
    ("tuning:\n  max_trials: " + "1" * 5000 + "\n", "YAML syntax error at line 2, column 15: Exceeds the limit"),
    ("model:\n  framework: onnxrt_integerops\n", "not supported"),
    ("model:\n  framework: onnxrt_qdq\nquantization:\n  format: QOperator\n", "contradicts"),
    ("evaluation:\n  accuracy: {metric: {topk: 5}}\n", r"evaluation.accuracy.metric: only top-1 accuracy .*got {.topk.: 5}"),
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


def test_the_config_reference_in_docs_is_generated_from_the_schema():
    """docs/configuration.md holds exactly what scripts/config_reference.py generates (run it with --write)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert ref.current(doc) == ref.block(), "docs/configuration.md is stale: run scripts/config_reference.py --write"
    missing = [k for k, _, _ in config.describe_schema() if f"| `{k}` |" not in doc]
    assert not missing, f"config reference lacks {missing}"


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
    assert calib.manifest_path(c.quantization.calibration.manifest) == sub / "sets.json"
    absolute = config.load(write_config(sub / "d.yaml", {"dataset": {"root": str(tmp_path / "abs")}}))
    assert absolute.dataset.root == str(tmp_path / "abs")
    home = config.load(write_config(sub / "e.yaml", {"dataset": {"root": "~/mnist"}}))
    assert home.dataset.root == str(Path.home() / "mnist")


def test_no_manifest_named_means_the_builtin_one(tmp_path):
    for c in (config.defaults(), config.load(REPO / "mnist.yaml")):
        assert calib.manifest_path(c.quantization.calibration.manifest) == calib.BUILTIN_MANIFEST
    assert calib.BUILTIN_MANIFEST.is_file() and calib.BUILTIN_MANIFEST.parent.parent.name == "quant"


def test_config_command_prints_the_default(tmp_path):
    r = run_cli("config", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == config.DEFAULT_CONFIG.read_text()
    copy = tmp_path / "mine.yaml"
    copy.write_text(r.stdout)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("source", "sha256")}  # noqa: E731
    assert strip(config.load(copy).to_dict()) == strip(config.defaults().to_dict())


# ------------------------------------------------------------------ one range per number (issue 13)
def _leaves(schema=config.SCHEMA, prefix=""):
    for key, spec in schema.items():
        path = f"{prefix}.{key}" if prefix else key
        yield from (_leaves(spec, path) if isinstance(spec, dict) else [(path, spec)])


NUMBERS = [(path, f) for path, f in _leaves() if f.kind in ("int", "float", "fraction", "criterion")]


def test_every_number_has_a_finite_range_holding_its_default():
    assert {p for p, _ in NUMBERS} >= {"benchmark.iterations", "preprocessing.scale", "tuning.accuracy_criterion"}
    docs = {k: d for k, _, d in config.describe_schema()}
    for path, f in NUMBERS:
        assert f.min is not None and f.max is not None and math.isfinite(f.min) and math.isfinite(f.max) and f.min < f.max, path
        default = fractions.Fraction(f.default) if f.kind == "fraction" else f.default
        for v in (default.values() if f.kind == "criterion" else [default]):
            assert f.min <= v < f.max if f.max_exclusive else f.min <= v <= f.max, path
        assert f"(range {config.range_text(f)})" in docs[path]


def _set(key: str, value) -> dict:
    """A config dict setting the dotted ``key`` (a criterion as {relative: value})."""
    *parents, last = key.split(".")
    doc = {last: {"relative": value} if config.leaf(key).kind == "criterion" else value}
    for k in reversed(parents):
        doc = {k: doc}
    return doc


FLAG_KEYS = [("batch_size", "benchmark.batch_size"), ("iterations", "benchmark.iterations"), ("warmup", "benchmark.warmup"),
             ("threads", "benchmark.threads"), ("max_accuracy_drop", "tuning.accuracy_criterion")]


@pytest.mark.parametrize("arg,key", FLAG_KEYS)
def test_a_flag_has_its_config_keys_range(arg, key, tmp_path, capsys):
    """The benchmark flag (through the Python API the CLI calls) accepts and refuses exactly what the
    config key does, and its --help states the key's range."""
    f = config.leaf(key)
    step = 1 if f.kind == "int" else 1e-9
    cases = [(f.min, True), (f.min - step, False), (f.max - step, True), (f.max, not f.max_exclusive), (f.max + step, False)]
    if f.kind != "int":
        cases += [(math.nan, False), (math.inf, False)]
    missing = str(tmp_path / "none.onnx")
    for value, ok in cases:
        if ok:
            config.from_dict(_set(key, value))
        else:
            with pytest.raises(ConfigError, match="must be"):
                config.from_dict(_set(key, value))
        with pytest.raises(InputError if ok else UsageError) as e:  # in range: the run goes on to the (missing) model
            benchmark.benchmark_models([missing], missing, options=benchmark.BenchmarkOptions(**{arg: value}), log=lambda m: None)
        assert ok or str(e.value).startswith(f"--{arg} {value}: must be"), (value, str(e.value))
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["benchmark", "--help"])
    flag_help = " ".join(capsys.readouterr().out.split()).split(f"--{arg} {arg.upper()} ")[-1].split(" --")[0]
    assert f"(range {config.range_text(f)}" in flag_help, flag_help


def test_check_value_names_the_flag():
    assert config.check_value("benchmark.threads", 256, "--threads") == 256
    with pytest.raises(UsageError, match=r"^--threads 1000: must be <= 256$"):
        config.check_value("benchmark.threads", 1000, "--threads")
    with pytest.raises(UsageError, match=r"^--threads 2.5: expected an integer$"):
        config.check_value("benchmark.threads", 2.5, "--threads")


# ------------------------------------------------------------------------- hostile YAML (issue 13)
def test_alias_bomb_is_refused_quickly(tmp_path):
    """Nine levels of nine aliases: under 500 bytes, 9**9 nodes once expanded (used to take minutes and > 2 GB)."""
    text = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    assert len(text) < 500
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=f"c.yaml: more than {config.MAX_YAML_NODES} YAML nodes once aliases are expanded"):
        load_text(tmp_path, text)
    assert time.perf_counter() - t0 < 2


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"quantization.op_types_to_keep_fp32\[0\]: YAML alias refers to its own anchor \(line 2\)"):
        load_text(tmp_path, "quantization:\n  op_types_to_keep_fp32: &a [*a]\n")


def test_ordinary_aliases_and_merge_keys_still_work(tmp_path):
    c = load_text(tmp_path, "tuning:\n  max_trials: 3\nquantization:\n  op_types_to_keep_fp32: &ops [MatMul]\n"
                            "  nodes_to_keep_fp32: *ops\nbenchmark:\n  <<: {iterations: 5, warmup: 2}\n  iterations: 7\n")
    assert c.tuning.max_trials == 3 and c.quantization.nodes_to_keep_fp32 == ["MatMul"]
    assert (c.benchmark.iterations, c.benchmark.warmup) == (7, 2)  # an explicit key overrides a merged one


@pytest.mark.parametrize("text,words", [
    ("tuning:\n  max_trials: 3\n  timeout: 5\n  max_trials: 4\n", "c.yaml: tuning.max_trials: duplicate key (lines 2 and 4)"),
    ("model: {}\ntuning: {}\nmodel: {name: x}\n", "c.yaml: model: duplicate key (lines 1 and 3)"),
    ("tuning: {accuracy_criterion: {relative: 0.01, relative: 0.5}}\n",
     "c.yaml: tuning.accuracy_criterion.relative: duplicate key (lines 1 and 1)"),
])
def test_duplicate_keys_are_refused_with_both_lines(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert str(e.value) == f"{tmp_path}/{words}"


def test_a_yaml_1_1_exponent_gets_a_hint(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preprocessing: {mean: 1e6}\n")
    with pytest.raises(ConfigError, match=r"preprocessing.mean: expected a number, got string '1e6' \(YAML 1.1 reads 1e6 as text: "
                                          r"write it with a dot and a signed exponent, e.g. 1.0e\+6\)"):
        config.load(p)


@pytest.mark.parametrize("arg", ["rtol", "atol"])
def test_validate_model_checks_tolerances_from_python_like_the_flags(arg, tmp_path):
    """The API argument gets the flag's range (a negative or NaN tolerance would pass or fail every output)."""
    from quant.workflows import validate

    f = getattr(config, arg.upper())
    missing = str(tmp_path / "none.onnx")
    for value, ok in ((f.min, True), (f.max, True), (-1e-9, False), (f.max * 2, False), (math.nan, False), (math.inf, False), ("0.1", False)):
        with pytest.raises(InputError if ok else UsageError) as e:  # in range: the run goes on to the (missing) model
            validate.validate_model(missing, missing, options=validate.ValidateOptions(**{arg: value}), log=lambda m: None)
        assert ok or str(e.value).startswith(f"--{arg} {value}") or str(e.value).startswith(f"--{arg} {value!r}"), (value, str(e.value))


def test_a_config_is_read_only_and_replace_checks_every_value(tmp_path):
    """Assigning a key would bypass its range check (and tune_model's --objective used to change the
    caller's own Config): sections refuse assignment; replace() returns a re-validated copy that
    keeps the file's identity and notes each changed key."""
    cfg = config.load(REPO / "mnist.yaml")
    with pytest.raises(AttributeError, match="read-only: use quant.config.replace"):
        cfg.benchmark.threads = 0
    with pytest.raises(AttributeError, match="read-only"):
        cfg.tuning = None
    new = config.replace(cfg, {"tuning": {"objective": "performance"}, "benchmark": {"threads": 2}})
    assert (new.tuning.objective, new.benchmark.threads) == ("performance", 2)
    assert (cfg.tuning.objective, cfg.benchmark.threads) == ("accuracy", 1)  # the original is unchanged
    assert (new.source, new.sha256) == (cfg.source, cfg.sha256) and new.dataset.root == cfg.dataset.root
    assert new.notes[-2:] == ["tuning.objective = 'performance' (not from the file: a flag or the caller)",
                              "benchmark.threads = 2 (not from the file: a flag or the caller)"]
    assert config.replace(cfg, {"tuning": {"objective": "accuracy"}}).notes == cfg.notes  # nothing changed, nothing noted
    with pytest.raises(ConfigError, match=r"benchmark\.threads: must be >= 1"):
        config.replace(cfg, {"benchmark": {"threads": 0}})
    with pytest.raises(ConfigError, match="tuning.objective"):
        config.replace(cfg, {"tuning": {"objective": "latency"}})
    with pytest.raises(ConfigError, match="unknown key|bogus"):
        config.replace(cfg, {"bogus": {"x": 1}})
