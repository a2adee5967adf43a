"""LLM distillation: KD losses, the offline top-k teacher cache, the KD step, black-box collection and SFT."""
