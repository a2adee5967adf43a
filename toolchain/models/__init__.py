"""Model builders: timm vision models by name (this package) and, later, language models."""
