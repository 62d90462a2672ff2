"""Quantization with Intel Neural Compressor (the only importer of neural_compressor) and the latency-aware search."""
