"""Artifact fidelity as llama.cpp's ``perplexity --kl-divergence`` reports it: the artifact's perplexity, the
mean KL divergence from the reference (PyTorch) distribution to the artifact's, and the same-top-token rate.
(llama.cpp scores the second half of fixed-size text chunks; here the scored tokens are the test completions.)

All figures are over next-token positions of the same token sequences fed to both models. Feeding the same ids
hides tokenizer differences, so every artifact also has a parity contract (:class:`Parity`): its runtime tokenises
:data:`PARITY_TEXTS` exactly as the HF tokenizer does, and its logits over a :data:`PARITY_MIN_POSITIONS`-token
sequence (longer than the recipe's max_length: rope scaling and position handling show there) stay within
:data:`~edgedistill.core.tolerances.FP32_CRITERION` for fp32 artifacts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from edgedistill.core.tolerances import (  # noqa: F401  (re-exported: the bars this module applies)
    FP32_ATOL,
    FP32_CRITERION,
    FP32_MAX_ABS_DIFF,
    FP32_RTOL,
    ONNX_INT8_MIN_SAME_TOP,
    PARITY_MIN_POSITIONS,
    Q8_MIN_SAME_TOP,
    fp32_ok,
    parity_bar,
)

#: F32 GGUF with an F32 KV cache: largest absolute logit difference vs PyTorch
GGUF_F32_MAX_ABS_DIFF = FP32_MAX_ABS_DIFF


@dataclass
class Fidelity:
    perplexity: float
    reference_perplexity: float
    kld_mean: float
    kld_p99: float
    same_top_token: float
    max_abs_diff: float
    n_tokens: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def fidelity(ids: Sequence[Sequence[int]], ref_logits: Sequence[np.ndarray], logits: Sequence[np.ndarray],
             score_from: Sequence[int] | None = None) -> Fidelity:
    """Compare per-sequence logits ``(L_i, V)`` of an artifact against the reference on token ids ``ids``.

    Position ``t`` predicts token ``t+1``. Every figure covers the positions that predict tokens from index
    ``score_from[i]`` on (the completion, for prompt/completion data: models trained on completions only never
    learn to predict prompts, so prompt positions would measure noise), else every next-token position.
    """
    nll, nll_ref, kld, same, maxdiff, n = [], [], [], 0, 0.0, 0
    starts = score_from if score_from is not None else [1] * len(ids)
    for seq, r, a, start in zip(ids, ref_logits, logits, starts, strict=True):
        v = min(r.shape[-1], a.shape[-1])
        rows = np.arange(max(0, start - 1), len(seq) - 1)
        r, a = r[rows, :v], a[rows, :v]
        lr, la = _log_softmax(r), _log_softmax(a)
        tgt = np.asarray(seq)[rows + 1]
        at = np.arange(len(rows))
        nll.append(-la[at, tgt])
        nll_ref.append(-lr[at, tgt])
        kld.append((np.exp(lr) * (lr - la)).sum(-1))
        same += int((r.argmax(-1) == a.argmax(-1)).sum())
        maxdiff = max(maxdiff, float(np.abs(r.astype(np.float64) - a).max())) if len(rows) else maxdiff
        n += len(rows)
    k = np.concatenate(kld)
    return Fidelity(float(np.exp(np.concatenate(nll).mean())), float(np.exp(np.concatenate(nll_ref).mean())),
                    float(k.mean()), float(np.percentile(k, 99)), same / max(1, n), maxdiff, n)


@torch.no_grad()
def torch_logits(model: torch.nn.Module, ids: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Reference logits ``(L_i, V)`` per sequence from a HF causal LM, one sequence at a time (no padding)."""
    model.eval()
    return [model(torch.tensor([list(s)])).logits[0].float().numpy() for s in ids]


# -- the parity contract: tokenisation and long-sequence logits --------------------------------------------------
#: texts every artifact's runtime must tokenise exactly as the HF tokenizer: digits and number runs, runs of
#: spaces and tabs, newlines (also CRLF and blank lines), accents, CJK, emoji (ZWJ sequences, skin tones, flags),
#: contractions in mixed case, leading/trailing spaces and code
PARITY_TEXTS = (
    "The court held, 3-2, that the 1,234,567 USD claim (filed 2023-11-05) was time-barred.",
    "Numbers: 7 42 314 2718 31415 271828 3141592 1234567890 3.14 3..3 3...3",
    "Tabs\tand  double  spaces,   three   spaces,    four    and\t\ttwo tabs.",
    "Line one\nline two\n\nafter a blank line\r\nwindows line\n   indented\n\n\n",
    "Café, naïve, résumé, Ångström, São Paulo, Žižek, façade, déjà vu, Ærøskøbing.",
    "日本語のテキスト、中文文本和한국어 텍스트。我想在apple工作1314151天～",
    "Emoji: 🚀 🦙🦙 😶‍🌫️ ✅ 👍🏽 and a flag 🇫🇷!",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    " leading space, trailing space ",
    "def f(x):\n    return x ** 2  # squared\n",
)


@dataclass
class TokenParity:
    """How many of ``texts`` an artifact's runtime tokenises exactly as the HF tokenizer (BOS/EOS included)."""

    identical: int
    total: int
    mismatches: list[int] = field(default_factory=list)  # indices into the texts

    @property
    def fraction(self) -> float:
        return self.identical / max(1, self.total)


def token_parity(hf_tokenizer: object, tokenize: Callable[[str], list[int]],
                 texts: Sequence[str] = PARITY_TEXTS) -> TokenParity:
    """Compare ``tokenize(text)`` (a runtime's tokenizer, adding BOS as its file says) with the HF tokenizer's
    ``encode(text)`` (special tokens as its post-processor adds them) on every text."""
    bad = [i for i, t in enumerate(texts)
           if list(tokenize(t)) != list(hf_tokenizer.encode(t))]  # type: ignore[attr-defined]
    return TokenParity(len(texts) - len(bad), len(texts), bad)


def long_sequence(seqs: Sequence[Sequence[int]], n: int = PARITY_MIN_POSITIONS, bos: int | None = None) -> list[int]:
    """A ``n``-token check sequence: ``bos`` (when given), then the sequences' tokens (their own leading BOS
    dropped) one after another, cycling until ``n`` tokens."""
    bodies = [list(s[1:]) if bos is not None and len(s) and s[0] == bos else list(s) for s in seqs]
    if not any(bodies):
        raise ValueError("long_sequence: no tokens to build a check sequence from")
    out = [bos] if bos is not None else []
    while len(out) < n:
        for b in bodies:
            out += b
    return out[:n]


@dataclass
class LongParity:
    """Logits of an artifact vs the reference over every position of one long sequence."""

    positions: int
    max_abs_diff: float
    same_top_token: float
    within_fp32: bool  # every position keeps the fp32 bar (core.tolerances.fp32_ok)


def long_parity(ref: np.ndarray, logits: np.ndarray) -> LongParity:
    v = min(ref.shape[-1], logits.shape[-1])
    r, a = ref[:, :v].astype(np.float64), logits[:, :v].astype(np.float64)
    if r.shape != a.shape:
        raise ValueError(f"long_parity: shapes differ, {r.shape} vs {a.shape}")
    diff = np.abs(r - a)
    return LongParity(len(r), float(diff.max()), float((r.argmax(-1) == a.argmax(-1)).mean()), fp32_ok(r, a))


@dataclass
class Parity:
    """An artifact's parity contract, as its fidelity row records it."""

    tokenizer: str
    tokens_identical: float  # fraction of PARITY_TEXTS
    tokens_texts: int
    tokens_mismatched: list[int]
    tokens_by_construction: bool  # the artifact takes ids from the HF tokenizer: nothing of its own to compare
    long_positions: int
    long_max_abs_diff: float
    long_same_top_token: float
    criterion: str
    ok: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def parity(variant: str, tokens: TokenParity, long: LongParity, fid: Fidelity, tokenizer: str,
           by_construction: bool = False) -> Parity:
    """The contract for ``variant``: tokens identical on every text, a long check of at least
    :data:`PARITY_MIN_POSITIONS` positions, and the variant's bar — fp32 (F32 GGUF, fp32 ONNX): every long-sequence
    FP32_CRITERION; F16/Q8_0: same-top-token >= Q8_MIN_SAME_TOP on the test sequences; int8 ONNX:
    >= ONNX_INT8_MIN_SAME_TOP; 4-bit: none (KLD and same-top are reported, like llama.cpp's perplexity tool)."""
    bar = parity_bar("llm", "", variant)  # the one table (core/tolerances.py PARITY_BARS)
    conds = [f"tokens identical on {tokens.total} texts", f"long check >= {PARITY_MIN_POSITIONS} positions"]
    ok = tokens.identical == tokens.total and long.positions >= PARITY_MIN_POSITIONS
    if bar.metric == "fp32":
        conds.append(f"{FP32_CRITERION} at every long position")
        ok = ok and long.within_fp32
    elif bar.floor is not None:
        conds.append(bar.criterion)
        ok = ok and fid.same_top_token >= bar.floor
    else:
        conds.append("no logit bar (4-bit: KLD reported)")
    return Parity(tokenizer, tokens.fraction, tokens.total, tokens.mismatches, by_construction, long.positions,
                  long.max_abs_diff, long.same_top_token, "; ".join(conds), bool(ok))


#: bumped when the contract changes what an artifact's fidelity row holds (1: tokens + long check + ok)
PARITY_VERSION = 1
