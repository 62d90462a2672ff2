"""Running models: onnxruntime sessions (made in :mod:`quant.runtime.sessions` only), top-1 evaluation, latency timing,
the exact integer reference."""
