"""The ONNX graph: loading and checking models, exact preparation rewrites, the precision plan, finishing passes."""
