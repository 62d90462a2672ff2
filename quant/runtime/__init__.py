"""Running models: onnxruntime sessions and top-1 evaluation, latency timing, the exact integer reference."""
