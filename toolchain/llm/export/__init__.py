"""LLM exporters: GGUF (llama.cpp's converter and quantiser) and ONNX with a KV cache (optimum), with fidelity."""
