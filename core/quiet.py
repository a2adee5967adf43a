"""Keep third-party chatter out of the user's terminal: deprecation notices that torch logs when transformers
imports torchao, Hugging Face datasets' per-map progress bars (TRL maps the SFT set four times), and
transformers' info-level advice. Our own progress bars and errors are unaffected."""

from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    """Call once at process start (the CLI and the measuring agents do)."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
