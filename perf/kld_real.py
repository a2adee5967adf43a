"""Quantisation on real weights (issue #24 item 4): KLD and same-top-token of SmolLM2-135M-Instruct's GGUF variants
against its F32 GGUF, by the project's code and by llama.cpp's own ``llama-perplexity --kl-divergence`` (built
from the same sdist), on the same tokens of real held-out text.

    HF_HUB_OFFLINE=1 .venv/bin/python perf/kld_real.py [--student FOLDER] [--chunks 40] [--json kld_real.json]

The teacher is the dequantised Q4_1 release (:mod:`edgedistill.toolchain.llm.pretrained`); its fp32 folder is
converted to F32 and F16 by llama.cpp's converter and quantised from the F32 file to Q8_0, Q4_K_M and Q4_0 by
llama.cpp's quantiser (the export path's own functions); the release Q4_1 file is an extra row. ``--student``
adds the same variants of another HF folder (no release row). The text is
:func:`~edgedistill.toolchain.llm.export.kld_check.held_out_text` (the Python Language Reference's topics, PSF-2.0),
cut as llama-perplexity cuts it: ``n_ctx`` 512, the second half of each chunk scored (255 tokens a chunk; 40 chunks
= 10,200 tokens). Threads 2. Prints progress, then a Markdown table per model; writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from edgedistill.runtimes import llama_tools
from edgedistill.toolchain.llm import pretrained
from edgedistill.toolchain.llm.export.gguf import convert, quantize
from edgedistill.toolchain.llm.export.kld_check import crosscheck, held_out_text, markdown

TEACHER = "smollm2-135m-instruct"
QUANTS = ("q8_0", "q4_k_m", "q4_0")


def variants(folder: Path, work: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Path]]:
    """The F32 GGUF of ``folder`` and its F16, Q8_0, Q4_K_M and Q4_0 files, written under ``work``."""
    log(f"converting {folder} to F32 and F16 GGUF")
    f32 = convert(folder, work / "f32.gguf", "f32")
    out = {"f16": convert(folder, work / "f16.gguf", "f16")}
    for q in QUANTS:
        log(f"quantising to {q}")
        out[q] = quantize(f32, work / f"{q}.gguf", q)
    return f32, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, help="an HF folder to check as well")
    ap.add_argument("--chunks", type=int, default=40, help="512-token chunks (255 scored tokens each)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=Path("kld_real.json"))
    a = ap.parse_args()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    t0 = time.monotonic()
    binary = llama_tools.ensure_perplexity(log)
    log(f"{binary} ({json.dumps(llama_tools.info())})")
    models = {"teacher": pretrained.ensure(TEACHER, log)}
    if a.student:
        models["student"] = a.student
    text = held_out_text()
    doc: dict[str, object] = {"chunks": a.chunks, "n_ctx": 512, "threads": a.threads, "text": "pydoc_data.topics",
                              "tool": llama_tools.info(), "models": {}}
    tables = []
    with tempfile.TemporaryDirectory(prefix="kld-real-") as tmp:
        for role, folder in models.items():
            work = Path(tmp) / role
            work.mkdir()
            f32, files = variants(folder, work, log)
            if role == "teacher":
                files["q4_1 (release)"] = pretrained.release_gguf(TEACHER)
            log(f"{role}: cross-checking {', '.join(files)} against {f32.name}")
            rows = crosscheck(f32, files, text, a.chunks, threads=a.threads, log=log)
            doc["models"][role] = {"folder": str(folder), "rows": [r.to_dict() for r in rows]}  # type: ignore[index]
            tables.append(f"**{role}** ({folder.name})\n\n{markdown(rows)}")
    doc["seconds"] = round(time.monotonic() - t0, 1)
    a.json.write_text(json.dumps(doc, indent=1))
    print("\n\n".join(tables))
    log(f"done in {doc['seconds']:.0f} s; rows in {a.json}")


if __name__ == "__main__":
    main()
