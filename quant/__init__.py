"""mnist-quant: produce and validate int8 ONNX MNIST classifiers with Intel Neural Compressor.

Python API (lazy imports; neural_compressor is only imported when tuning runs)::

    from quant import tune_model, benchmark_models
"""

import os as _os

# the one version number: pyproject.toml reads it (tool.setuptools.dynamic); tune writes it into every int8
# model (producer_version), so a new version changes the model bytes
__version__ = "0.3.0"

# onnxruntime's official Linux wheels (>= 1.29) collect usage telemetry unless ORT_DISABLE_TELEMETRY
# (or CI) is set: an event database under ~/.cache/Microsoft/DeveloperTools/.onnxruntime and a
# `.ses` file left in $TMPDIR by every process. The toolkit opts out before anything imports
# onnxruntime; a user who wants it sets ORT_DISABLE_TELEMETRY=0.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def tune_model(*args, **kwargs):
    from .pipeline import tune_model as f

    return f(*args, **kwargs)


def benchmark_models(*args, **kwargs):
    from .benchmark import benchmark_models as f

    return f(*args, **kwargs)
