"""The LLM pipeline: a Llama teacher distilled into a smaller Llama student (white-box KD and black-box SFT),
exported to GGUF and quantised with llama.cpp, measured and reported. See :mod:`.recipe` for the schema."""
