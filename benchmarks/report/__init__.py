"""What every kind's run report shares: tables and Markdown (:mod:`.common`), the per-device truth and
recommendations (:mod:`.per_device`) and report.html (:mod:`.html`), all read from the measurement rows. Each
kind's own report module (``build``, ``table``, ``summary_lines``, ``to_markdown``, ``write``) lives in its folder:
``toolchain/vision/report.py``, ``toolchain/llm/report.py``."""
