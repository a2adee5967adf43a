"""The project's KLD and same-top-token agree with llama.cpp's own ``llama-perplexity --kl-divergence`` on real
weights: a 2-layer cut of SmolLM2-135M-Instruct (the real embeddings, tokenizer and first two blocks), exported to
F32, then Q8_0 and Q4_0 by the export path's converter and quantiser, scored on 4 chunks of 512 tokens of the
Python Language Reference (1,020 scored tokens), each side on its own (``perf/kld_real.py`` does the full model on
10,200 tokens).

Tolerance: 5 % relative on the mean KLD and on the same-top rate (:data:`~edgedistill.toolchain.llm.export.
kld_check.AGREE_REL`, issue #24's bar). Both sides run the same llama.cpp kernels on the same tokens, so what
separates them is the tool's uint16 storage of the reference log-probabilities and its −16 cut-off (well under
1 % here); a scoring window shifted by one position, a missing BOS, a different KV-cache type or softmax shows as
a larger gap or as different tokens, which fails the check outright.

The first run on a machine builds ``llama-perplexity`` from the sdist (:mod:`edgedistill.runtimes.llama_tools`:
379 s on the 2-core AMD EPYC VM under a load of ~4, 2026-12-07); after that the test takes ~55 s there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgedistill.runtimes import llama_tools
from edgedistill.toolchain.llm import pretrained
from edgedistill.toolchain.llm.export.gguf import convert, quantize
from edgedistill.toolchain.llm.export.kld_check import AGREE_REL, crosscheck, held_out_text
from tests.test_real_model import NAME, TOKENIZER_FILES, _cut


@pytest.mark.slow
def test_our_kld_agrees_with_llama_perplexity_on_a_cut_of_the_real_model(tmp_path: Path) -> None:
    import shutil

    from edgedistill.toolchain.llm.models import load_causal_lm

    llama_tools.ensure_perplexity()
    teacher_dir = pretrained.ensure(NAME, log=print)
    folder = tmp_path / "smollm2-cut2"
    _cut(load_causal_lm(teacher_dir), 2).save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        shutil.copy(teacher_dir / name, folder / name)
    f32 = convert(folder, tmp_path / "f32.gguf", "f32")
    files = {q: quantize(f32, tmp_path / f"{q}.gguf", q) for q in ("q8_0", "q4_0")}

    rows = {r.variant: r for r in crosscheck(f32, files, held_out_text(), chunks=4)}
    for r in rows.values():
        print(r.to_dict())
        assert r.tokens == r.tool_tokens == 4 * 255
        assert r.kld_rel <= AGREE_REL, f"{r.variant}: KLD {r.kld_mean:.4e} vs llama-perplexity {r.tool_kld_mean:.4e}"
        assert r.same_top_rel <= AGREE_REL, f"{r.variant}: same-top {r.same_top} vs {r.tool_same_top}"
        assert r.agrees
    # the check measures something: 4-bit loses more than 8-bit, and neither is lossless
    assert 0 < rows["q8_0"].kld_mean < rows["q4_0"].kld_mean
    assert rows["q4_0"].same_top < 1.0


def test_a_file_that_is_no_logits_base_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "base.kld"
    bad.write_bytes(b"not a base at all, just some bytes")
    with pytest.raises(llama_tools.LlamaToolsError, match="not a llama-perplexity logits base"):
        llama_tools.base_tokens(bad)
