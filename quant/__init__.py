"""mnist-quant: produce and validate int8 ONNX MNIST classifiers with Intel Neural Compressor.

Python API (lazy imports; neural_compressor is only imported when tuning runs)::

    from quant import tune_model, benchmark_models
"""

__version__ = "0.1.0"


def tune_model(*args, **kwargs):
    from .pipeline import tune_model as f

    return f(*args, **kwargs)


def benchmark_models(*args, **kwargs):
    from .benchmark import benchmark_models as f

    return f(*args, **kwargs)
