"""Vision distillation: losses, feature taps and adapters, and the offline teacher cache."""
