"""Export one Hugging Face causal-LM folder to GGUF (llama.cpp's converter and quantiser) and ONNX with a KV cache
(optimum), and hold every file to the parity contract: tokenisation, fp32 logits over a long sequence, and
KLD / same-top-token on evaluation sequences (:mod:`.fidelity`). Used by the pipeline's export stage (the best
student of a run) and by ``edgedistill export --hf DIR`` (any local folder, no run).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LLMExport:
    """What to export and what to check it on. ``ids``/``starts``: evaluation sequences and where scoring starts in
    each (KLD, same-top); ``long_ids``: the ≥512-position fp32 check sequence; records name files relative to
    ``root``."""

    model_dir: Path
    tokenizer: Any
    tokenizer_dir: Path
    out_dir: Path
    root: Path
    source: str
    gguf: list[str]
    onnx: list[str]
    ids: list[list[int]]
    starts: list[int]
    long_ids: list[int]
    prefix: str = "student"
    log: Callable[[str], None] = print
    ref: list[Any] = field(default_factory=list)  # PyTorch logits on ``ids`` (computed when empty)
    long_ref: Any = None
    rejected: dict[str, str] = field(default_factory=dict)  # artifact name → why it is none (filled by the export)


def export_llm(job: LLMExport) -> tuple[list[dict[str, Any]], list[Path], float]:
    """Every GGUF and ONNX variant of ``job``; returns ``(records, files written, seconds spent exporting)``."""
    from edgedistill.toolchain.llm.export.fidelity import torch_logits
    from edgedistill.toolchain.llm.model_folder import check_model_folder
    from edgedistill.toolchain.llm.models import load_causal_lm

    check_model_folder(job.model_dir)  # optimum and llama.cpp's converter read it below
    if not job.ref or job.long_ref is None:
        model = load_causal_lm(job.model_dir)
        job.ref = torch_logits(model, job.ids)
        job.long_ref = torch_logits(model, [job.long_ids])[0]
        del model
    records, outputs, seconds = _gguf(job) if job.gguf else ([], [], 0.0)
    if job.onnx:
        r, o, s = _onnx(job)
        records, outputs, seconds = records + r, outputs + o, seconds + s
    return records, outputs, seconds


def _gguf(job: LLMExport) -> tuple[list[dict[str, Any]], list[Path], float]:
    """Convert, quantise and check every GGUF variant. llama.cpp runs in child processes: a file that aborts it,
    or that does not tokenise the parity texts exactly as the HF tokenizer, is rejected (moved to ``rejected/``,
    named in ``job.rejected`` with the reason) and never recorded; the other variants go on."""
    from edgedistill.runtimes.child import ChildCrash
    from edgedistill.toolchain.llm.export.gguf import GGUFError, convert, quantize

    order = [v for v in ("f32", "f16") if v in job.gguf or v == "f32"] + \
        [v for v in job.gguf if v not in ("f32", "f16")]
    paths: dict[str, Path] = {}
    t0 = time.perf_counter()
    for v in order:
        out = job.out_dir / f"{job.prefix}-{v}.gguf"
        try:
            paths[v] = (convert(job.model_dir, out, v, job.tokenizer_dir) if v in ("f32", "f16")
                        else quantize(paths["f32"], out, v))
        except ChildCrash as err:
            _reject(job, v, None, str(err))
    seconds = time.perf_counter() - t0
    records, outputs = [], []
    for v in (v for v in job.gguf if v in paths):
        try:
            records.append(_check_gguf(job, v, paths[v]))
            outputs.append(paths[v])
        except (ChildCrash, GGUFError) as err:
            _reject(job, v, paths[v], str(err))
    if "f32" in paths and "f32" not in job.gguf:
        paths["f32"].unlink()
    return records, outputs, seconds


def _check_gguf(job: LLMExport, v: str, path: Path) -> dict[str, Any]:
    """One GGUF's fidelity and parity record, llama.cpp's side computed in one child process. The F32 file with
    an F32 KV cache is the fp32 reference artifact; the others run as deployed (F16 KV). Raises
    :class:`~edgedistill.runtimes.child.ChildCrash` when llama.cpp dies on it, and
    :class:`~edgedistill.toolchain.llm.export.gguf.GGUFError` when its tokens differ from the HF tokenizer's."""
    from edgedistill.runtimes.llama_cpp import probe_in_child
    from edgedistill.toolchain.llm.export.fidelity import PARITY_TEXTS, fidelity, long_parity, parity, token_parity
    from edgedistill.toolchain.llm.export.gguf import GGUFError, metadata, tensor_types

    got = probe_in_child(path, list(PARITY_TEXTS), job.ids, job.long_ids, kv_f32=v == "f32")
    tokens = token_parity(job.tokenizer, dict(zip(PARITY_TEXTS, got["tokens"], strict=True)).__getitem__)
    if tokens.identical != tokens.total:
        raise GGUFError(f"{path}: llama.cpp tokenises {tokens.total - tokens.identical} of {tokens.total} parity "
                        f"texts differently from the HF tokenizer (texts {tokens.mismatches} of "
                        "edgedistill.toolchain.llm.export.fidelity.PARITY_TEXTS)")
    fid = fidelity(job.ids, job.ref, got["logits"], job.starts)
    par = parity(v, tokens, long_parity(job.long_ref, got["long_logits"]), fid,
                 "llama.cpp (the GGUF's own vocabulary)")
    size = path.stat().st_size
    try:  # gguf-py reads the file in this process: a malformed one is a rejected artifact, not a traceback
        types, pre = sorted(set(tensor_types(path).values())), metadata(path)["tokenizer.ggml.pre"]
    except (ValueError, IndexError, KeyError, OSError, UnicodeDecodeError) as err:
        raise GGUFError(f"{path}: gguf cannot read it back ({type(err).__name__}: {err})") from None
    job.log(f"  {job.prefix}-{v}: ppl {fid.perplexity:.3f}, KLD {fid.kld_mean:.2e}, same-top "
            f"{fid.same_top_token:.4f}, {size / 1024:.0f} KB; {parity_line(par)}")
    return {"name": f"{job.prefix}-{v}", "file": str(path.relative_to(job.root)), "format": "gguf", "variant": v,
            "source": job.source, "tensor_types": types, "size_bytes": size,
            "kv_cache": got["runtime"]["kv_cache"], "pre_tokenizer": pre,
            "fidelity": fid.to_dict() | par.to_dict()}


def _reject(job: LLMExport, v: str, path: Path | None, why: str) -> None:
    """Record that variant ``v`` is no artifact (``why``: one line) and move its file, if any, to ``rejected/``."""
    name = f"{job.prefix}-{v}"
    if path is not None and path.is_file():
        aside = job.out_dir / "rejected" / path.name
        aside.parent.mkdir(exist_ok=True)
        path.replace(aside)
        why += f" (file moved to {aside})"
    job.rejected[name] = why
    job.log(f"  {name}: rejected: {why}")


def _onnx(job: LLMExport) -> tuple[list[dict[str, Any]], list[Path], float]:
    """ONNX (KV cache) through optimum, then its int8 file. The decoder takes token ids from the HF tokenizer: its
    tokens are identical by construction, recorded as such."""
    from edgedistill.runtimes.ort_llm import OrtLLMSession
    from edgedistill.toolchain.llm.export.fidelity import PARITY_TEXTS, TokenParity, fidelity, long_parity, parity
    from edgedistill.toolchain.llm.export.onnx import export_onnx, quantize_onnx

    t0 = time.perf_counter()
    fp32_dir = job.out_dir / f"{job.prefix}-onnx-fp32"
    files = {"fp32": export_onnx(job.model_dir, fp32_dir)}
    if "int8_dynamic" in job.onnx:
        files["int8_dynamic"] = quantize_onnx(files["fp32"], job.out_dir / f"{job.prefix}-onnx-int8_dynamic")
    seconds = time.perf_counter() - t0
    records, outputs = [], []
    same_tokens = TokenParity(len(PARITY_TEXTS), len(PARITY_TEXTS))
    for v in job.onnx:
        sess = OrtLLMSession(files[v], threads=2)
        fid = fidelity(job.ids, job.ref, [sess.logits(s) for s in job.ids], job.starts)
        par = parity(v, same_tokens, long_parity(job.long_ref, sess.logits(job.long_ids)), fid,
                     "HF tokenizer (the decoder takes its token ids)", by_construction=True)
        size = sum(f.stat().st_size for f in files[v].parent.iterdir() if f.is_file())
        records.append({"name": f"{job.prefix}-onnx-{v}", "file": str(files[v].relative_to(job.root)),
                        "format": "onnx", "variant": v, "source": job.source, "size_bytes": size,
                        "fidelity": fid.to_dict() | par.to_dict()})
        outputs += sorted(f for f in files[v].parent.iterdir() if f.is_file())
        job.log(f"  {job.prefix}-onnx-{v}: ppl {fid.perplexity:.3f}, KLD {fid.kld_mean:.2e}, same-top "
                f"{fid.same_top_token:.4f}, max|Δ| {fid.max_abs_diff:.1e}, {size / 1024:.0f} KB; {parity_line(par)}")
    if "fp32" not in job.onnx:
        shutil.rmtree(fp32_dir)
    return records, outputs, seconds


def parity_line(par: Any) -> str:
    tokens = f"tokens {round(par.tokens_identical * par.tokens_texts)}/{par.tokens_texts}" + \
        (" (by construction)" if par.tokens_by_construction else "")
    head = "parity ok" if par.ok else f"parity FAILS ({par.criterion})"
    return f"{head}: {tokens}, max|Δ| {par.long_max_abs_diff:.1e} over {par.long_positions} positions"


def parse_formats(spec: str) -> tuple[list[str], list[str]]:
    """``gguf:q4_k_m,gguf:f32,onnx:fp32`` (or bare ``gguf`` / ``onnx`` for every variant) → GGUF and ONNX variants."""
    from typing import get_args

    from edgedistill.toolchain.llm.recipe import GGUFVariant, ONNXVariant

    known = {"gguf": list(get_args(GGUFVariant)), "onnx": list(get_args(ONNXVariant))}
    out: dict[str, list[str]] = {"gguf": [], "onnx": []}
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        fmt, _, variant = item.partition(":")
        if fmt not in known or (variant and variant not in known[fmt]):
            raise ValueError(f"--formats: {item!r} is not FORMAT[:VARIANT]; gguf has {', '.join(known['gguf'])}; "
                             f"onnx has {', '.join(known['onnx'])}")
        for v in [variant] if variant else known[fmt]:
            if v not in out[fmt]:
                out[fmt].append(v)
    if not out["gguf"] and not out["onnx"]:
        raise ValueError(f"--formats: nothing to export in {spec!r}")
    return out["gguf"], out["onnx"]


def export_folder(folder: Path, formats: str, out: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``edgedistill export --hf DIR``: one local HF folder (its own tokenizer) to the asked formats in ``out``,
    each file checked on the parity texts and a ≥512-token sequence built from them; writes ``artifacts.json`` and
    a ``manifest.json`` recording each file."""
    from edgedistill.core.fileio import sha256_json, sha256_path, write_json
    from edgedistill.toolchain.llm.export.fidelity import PARITY_MIN_POSITIONS, PARITY_TEXTS, long_sequence
    from edgedistill.toolchain.llm.export.gguf import GGUFError
    from edgedistill.toolchain.llm.model_folder import check_model_folder, check_vocab_fits
    from edgedistill.toolchain.llm.tokenizer import load_tokenizer
    from edgedistill.toolchain.rundir import RunDir

    folder = Path(folder)
    gguf, onnx = parse_formats(formats)
    check_model_folder(folder)  # before anything reads it: no code, a supported family, its own architecture
    tok = load_tokenizer(folder)
    check_vocab_fits(folder, tok)
    ids = [tok.encode(t) for t in PARITY_TEXTS]
    run = RunDir(out)
    job = LLMExport(folder, tok, folder, run.root, run.root, folder.name, gguf, onnx, ids, [1] * len(ids),
                    long_sequence(ids, PARITY_MIN_POSITIONS, tok.bos_token_id), prefix=folder.name, log=log)
    records, outputs, seconds = export_llm(job)
    listing = run.path("artifacts.json")
    write_json(listing, {"source": str(folder), "reference": f"PyTorch {folder}", "artifacts": records,
                         "rejected": job.rejected, "export_seconds": seconds})
    run.record("export", sha256_json({"folder": sha256_path(folder), "formats": [gguf, onnx]}), [*outputs, listing],
               {"artifacts": [a["name"] for a in records], "rejected": job.rejected,
                "parity_failed": [a["name"] for a in records if not a["fidelity"]["ok"]]})
    if job.rejected:
        raise GGUFError(rejection_line(job.rejected, listing))
    return records


def rejection_line(rejected: dict[str, str], listing: Path) -> str:
    """One line for files the export rejected: the first reason, then how many more (all are in ``listing``)."""
    (name, why), more = next(iter(rejected.items())), len(rejected) - 1
    tail = f"; {more} more rejected ({', '.join(list(rejected)[1:])})" if more else ""
    return f"{name} rejected: {why}{tail}; the other artifacts are kept in {listing}"
