"""Distillation: losses, feature taps and adapters, the offline teacher cache, and the trainer."""
