"""The project's KLD and same-top-token figures (:func:`~edgedistill.toolchain.llm.export.fidelity.fidelity` on
llama-cpp-python logits) cross-checked against llama.cpp's own ``llama-perplexity --kl-divergence``
(:mod:`edgedistill.runtimes.llama_tools`, built from the same sdist) on the same tokens, the way that tool scores:
the text cut into ``n_ctx``-token chunks (BOS in front when the vocabulary adds one), each chunk a fresh context,
the second half of each chunk scored (positions ``n_ctx/2 … n_ctx−2`` predict the next token).

The two sides differ in one known way: the tool stores the reference's log-probabilities as uint16 (a per-row
scale over the row's range) and drops tokens whose reference log-probability is below −16, where the project keeps
float32 logits and sums in float64. On SmolLM2-135M (``perf/kld_real.py``, benchmarks/RESULTS.md) the two agree
within 0.1–0.4 % for mean KLDs from 3e-3 to 0.26, with identical same-top counts and perplexities; an F16 KLD of
5e-6 sits at the tool's printed resolution (6 decimals, :data:`~edgedistill.runtimes.llama_tools.KLD_RESOLUTION`).
A wrong chunking, position, tokenisation or softmax moves the figures by much more.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgedistill.runtimes import llama_tools
from edgedistill.toolchain.llm.export.fidelity import fidelity

#: relative agreement required of the mean KLD and the same-top rate (issue #24: "to within 5 %")
AGREE_REL = 0.05


def held_out_text() -> str:
    """Real English prose and code that no recipe here trains on: the Python Language Reference's topic pages that
    ship with every Python as ``pydoc_data.topics`` (PSF-2.0 licence), in sorted key order, blank-line separated
    (no trailing newline: llama-perplexity's ``-f`` would drop it)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


@dataclass
class Row:
    """One variant against the F32 reference, by the project's code and by llama-perplexity."""

    variant: str
    file: str
    bytes: int
    tokens: int
    kld_mean: float
    kld_p99: float
    same_top: float
    perplexity: float
    tool_kld_mean: float
    tool_kld_p99: float
    tool_same_top: float
    tool_perplexity: float
    tool_tokens: int

    @property
    def kld_rel(self) -> float:
        return abs(self.kld_mean - self.tool_kld_mean) / max(self.tool_kld_mean, llama_tools.KLD_RESOLUTION)

    @property
    def same_top_rel(self) -> float:
        return abs(self.same_top - self.tool_same_top) / self.tool_same_top

    @property
    def agrees(self) -> bool:
        """Same tokens; mean KLD within :data:`AGREE_REL` (or within the tool's printed resolution, for a KLD near
        1e-6); same-top within :data:`AGREE_REL`."""
        kld_ok = abs(self.kld_mean - self.tool_kld_mean) <= max(AGREE_REL * self.tool_kld_mean,
                                                                 llama_tools.KLD_RESOLUTION)
        return self.tokens == self.tool_tokens and kld_ok and self.same_top_rel <= AGREE_REL

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "kld_rel": self.kld_rel, "same_top_rel": self.same_top_rel, "agrees": self.agrees}


def crosscheck(reference: Path, variants: dict[str, Path], text: str, chunks: int, n_ctx: int = 512,
               threads: int = 2, log: Callable[[str], None] = print) -> list[Row]:
    """KLD, p99 KLD and same-top of each of ``variants`` against the F32 GGUF ``reference`` on the first ``chunks``
    chunks of ``text``, by both sides. Raises when the two sides do not score the same tokens."""
    first, per = n_ctx // 2, n_ctx - 1 - n_ctx // 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="kld-check-") as tmp:
        work = Path(tmp)
        (work / "text.txt").write_text(text, encoding="utf-8")
        log(f"  llama-perplexity: saving the reference's log-probabilities ({reference.name}, {chunks} chunks)")
        base = work / "base.kld"
        got = llama_tools.kld_base(reference, work / "text.txt", base, n_ctx, chunks, threads, kv_f32=True)
        _, _, tool_chunks = llama_tools.base_tokens(base)
        tok = llama_tools.in_child("tokenize_text", reference, "tokenising the held-out text with", text=text)
        ids, bos = [int(t) for t in tok["tokens"]], [int(t) for t in tok["bos"]]
        raw = [ids[i * n_ctx:(i + 1) * n_ctx] for i in range(min(chunks, len(ids) // n_ctx))]
        if got != chunks or raw != tool_chunks:  # the base holds the tokens before the BOS replacement
            raise llama_tools.LlamaToolsError(f"{reference}: llama-perplexity scored other tokens than ours "
                                              f"({got} chunks vs {len(raw)}; identical: {raw == tool_chunks})")
        ours = [bos + c[len(bos):] for c in raw]  # each chunk opens with BOS when the vocabulary adds one
        log(f"  ours: reference logits over {chunks * per} scored positions")
        llama_tools.in_child("scored_logits", reference, "computing reference logits with", chunks=ours,
                             first=first, out=str(work / "ref.npy"), kv_f32=True, threads=threads)
        ref = np.load(work / "ref.npy", mmap_mode="r")
        for name, path in variants.items():
            log(f"  {name}: ours")
            llama_tools.in_child("scored_logits", path, "computing logits with", chunks=ours, first=first,
                                 out=str(work / "var.npy"), threads=threads)
            var = np.load(work / "var.npy", mmap_mode="r")
            fid = fidelity([c[first:] for c in ours], [ref[i * per:(i + 1) * per] for i in range(chunks)],
                           [var[i * per:(i + 1) * per] for i in range(chunks)], [1] * chunks)
            del var
            (work / "var.npy").unlink()
            log(f"  {name}: llama-perplexity --kl-divergence")
            theirs = llama_tools.kld(path, base, n_ctx, threads)
            row = Row(name, path.name, path.stat().st_size, fid.n_tokens, fid.kld_mean, fid.kld_p99,
                      fid.same_top_token, fid.perplexity, theirs.kld_mean, theirs.kld_p99, theirs.same_top_token,
                      theirs.perplexity, theirs.n_tokens)
            log(f"  {name}: KLD {row.kld_mean:.6f} vs {row.tool_kld_mean:.6f} ({row.kld_rel:.1%}), same-top "
                f"{row.same_top:.4f} vs {row.tool_same_top:.4f}")
            rows.append(row)
    return rows


def markdown(rows: list[Row]) -> str:
    """The rows as a Markdown table (ours | llama-perplexity | relative difference)."""
    out = ["| variant | size MB | tokens | mean KLD ours | mean KLD llama-perplexity | Δ rel | p99 KLD ours | "
           "p99 KLD llama-perplexity | same-top ours | same-top llama-perplexity | Δ rel | PPL ours | "
           "PPL llama-perplexity | within 5 % |",
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        out.append(f"| {r.variant} | {r.bytes / 1e6:.1f} | {r.tokens} | {r.kld_mean:.3e} | {r.tool_kld_mean:.3e} | "
                   f"{r.kld_rel:.1%} | {r.kld_p99:.3e} | {r.tool_kld_p99:.3e} | {r.same_top:.2%} | "
                   f"{r.tool_same_top:.2%} | {r.same_top_rel:.2%} | {r.perplexity:.4f} | {r.tool_perplexity:.4f} | "
                   f"{'yes' if r.agrees else 'NO'} |")
    return "\n".join(out)
