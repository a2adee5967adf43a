"""Exporters: ONNX (fp32 + onnxruntime int8); later TFLite and GGUF. Each artifact is checked for parity."""
