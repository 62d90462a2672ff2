"""mnist-quant: produce and validate int8 ONNX MNIST classifiers with Intel Neural Compressor.

The Python API; each command-line sub-command is a thin call of one of these::

    import quant

    doc = quant.tune_model("mnist-12.onnx", "mnist-12-int8.onnx", data_dir="../shared/data/mnist")
    quant.benchmark_models(["mnist-12-int8.onnx"], "mnist-12.onnx",
                           options=quant.BenchmarkOptions(max_accuracy_drop=0.01),
                           report=quant.ReportOptions(path="gate.json"))

- :func:`tune_model` (``tune``), :func:`benchmark_models` (``benchmark``), :func:`validate_model`
  (``validate``), :func:`package_model` (``package``), :func:`build_calibration_set` (``calib``),
  :func:`write_test_data` (``write-test-data``), :func:`check_test_data` (``check-test-data``),
  :func:`fetch` (``fetch``).
- Their options are frozen dataclasses that check their values when made (the flags' ranges and
  messages): :class:`TuneOptions`, :class:`BenchmarkOptions`, :class:`ValidateOptions`,
  :class:`PackageOptions`, and :class:`ReportOptions` (report path, figures, the recorded command),
  shared by tune, benchmark and validate.
- Errors are :class:`quant.errors.QuantError` subclasses carrying the command line's exit code.

The functions are imported on first use (``neural_compressor`` only when tuning runs), so
``import quant`` stays cheap.
"""

import importlib as _importlib
import os as _os

# the one version number: pyproject.toml reads it (tool.setuptools.dynamic); tune writes it into every int8
# model (producer_version), so a new version changes the model bytes
__version__ = "0.3.0"

# onnxruntime's official Linux wheels (>= 1.29) collect usage telemetry unless ORT_DISABLE_TELEMETRY
# (or CI) is set: an event database under ~/.cache/Microsoft/DeveloperTools/.onnxruntime and a
# `.ses` file left in $TMPDIR by every process. The toolkit opts out before anything imports
# onnxruntime; a user who wants it sets ORT_DISABLE_TELEMETRY=0.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# public name -> the module that defines it
_API = {
    "tune_model": "workflows.tune",
    "benchmark_models": "workflows.benchmark",
    "validate_model": "workflows.validate",
    "package_model": "workflows.package",
    "build_calibration_set": "workflows.calibrate",
    "write_test_data": "workflows.testdata",
    "check_test_data": "workflows.testdata",
    "fetch": "data",
    "TuneOptions": "workflows.tune",
    "BenchmarkOptions": "workflows.benchmark",
    "ValidateOptions": "workflows.validate",
    "PackageOptions": "workflows.package",
    "ReportOptions": "workflows.options",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(_importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
