"""The toolchain: CLI, recipe schema, pipeline and run directory, data/model builders, distillation and export."""
