"""Run reports: one module per pipeline kind (:mod:`.vision`, :mod:`.llm`) on shared tables and Markdown
(:mod:`.common`). Each kind's module gives ``build``, ``table``, ``summary_lines``, ``to_markdown`` and ``write``."""
