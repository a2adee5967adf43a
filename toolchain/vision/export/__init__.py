"""Vision exporters: ONNX (fp32 + onnxruntime int8) and TFLite (litert-torch); each artifact checked for parity."""
