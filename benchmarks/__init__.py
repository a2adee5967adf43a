"""Measuring harness, report writers (JSON, Markdown) and the CI gate; ``perf/`` holds the project's own
side-by-side performance scripts and RESULTS.md records their output."""
