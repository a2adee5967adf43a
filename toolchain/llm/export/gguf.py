"""Hugging Face causal LM → GGUF (F32/F16) with llama.cpp's own converter, then llama.cpp's own quantiser.

The converter is ``convert_hf_to_gguf.py`` (with its ``conversion/`` package and ``gguf-py/``) from the llama.cpp
that the installed llama-cpp-python was built from: the same sdist, so the files it writes are the files this
runtime reads. :func:`ensure_converter` fetches it once per machine (``make setup`` does; the first conversion
does too) into ``~/.cache/edgedistill/llama.cpp-convert-<version>/`` — a machine-wide tool like the wheel folder,
so it does not follow ``$EDGEDISTILL_CACHE`` (tests point that at a private folder); ``$EDGEDISTILL_LLAMA_CONVERTER``
names another folder holding ``convert_hf_to_gguf.py``.

:func:`convert` runs it in a subprocess of this Python through :mod:`edgedistill.toolchain.llm.export.hf_to_gguf`,
lazily (peak memory follows the largest tensor, not the model). llama.cpp names a BPE tokenizer's pre-tokenizer by
hashing its tokenisation of a fixed text against tokenizers it knows, so a tokenizer trained here is unknown to it;
:func:`identify_pre_tokenizer` reads the pre-tokenizer from ``tokenizer.json`` itself, and the wrapper gives that
name only when the hash is unknown. The converter sees a staged copy of the folder, repaired first by
:func:`~edgedistill.toolchain.llm.export.tokenizer_repair.repair_for_converter` (a byte-level BPE that another tool
wrote in SentencePiece's shape would otherwise become a vocabulary that aborts llama.cpp). Whether llama.cpp then
tokenises like the HF tokenizer is checked on :data:`~edgedistill.toolchain.llm.export.fidelity.PARITY_TEXTS` by the
export stage (the artifact's fidelity row).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

from edgedistill.core import llama_source, locks
from edgedistill.core.errors import UserError
from edgedistill.core.fileio import atomic_path
from edgedistill.core.paths import tools_root
from edgedistill.core.procs import dies_with_us
from edgedistill.toolchain.llm.export.tokenizer_repair import repair_for_converter
from edgedistill.toolchain.llm.model_folder import converter_files

#: variant → llama.cpp ``llama_ftype`` (llama.h): the quantiser's target type
QUANT_FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}
#: variants the converter writes directly (``--outtype``)
CONVERTER_VARIANTS = ("f32", "f16")
#: a folder holding ``convert_hf_to_gguf.py`` to use instead of the fetched one
CONVERTER_ENV = "EDGEDISTILL_LLAMA_CONVERTER"
#: files of the sdist's ``vendor/llama.cpp/`` that the converter needs (the rest is C++ and tests)
_CONVERTER_FILES = ("convert_hf_to_gguf.py", "LICENSE")
_CONVERTER_TREES = ("conversion/", "gguf-py/gguf/")
_DONE = ".complete"
#: what the converter keeps of this process's environment (paths, locale, caches; never keys or PYTHONPATH)
_CONVERTER_ENV_KEEP = ("PATH", "HOME", "LANG", "TMPDIR", "TZ", "HF_HOME", "XDG_CACHE_HOME", "OMP_NUM_THREADS",
                       "SYSTEMROOT")

# Pre-tokenizer regexes as published in the models' own tokenizer.json files (the Split step before ByteLevel),
# each with the name llama.cpp gives the same pre-tokenizer (``tokenizer.ggml.pre``).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
#: split regex → llama.cpp pre-tokenizer name; a ByteLevel step with ``use_regex`` splits with GPT-2's regex
PRE_TOKENIZERS = {GPT2_REGEX: "gpt-2", LLAMA3_REGEX: "llama-bpe", QWEN2_REGEX: "qwen2"}
#: normalizers llama.cpp's pre-tokenizer of that name also applies (or that change nothing it would see);
#: Qwen2's tokenizer.json normalises to NFC, which llama.cpp does not: text already in NFC tokenises alike
_NORMALIZERS = {"gpt-2": (None,), "llama-bpe": (None,), "qwen2": (None, "NFC")}


class GGUFError(UserError, RuntimeError):
    """Conversion or quantisation failed; the message names the folder or file."""


# -- the converter, once per machine ---------------------------------------------------------------------------
def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version (GGUF export's error when it is missing)."""
    try:
        return llama_source.installed_version()
    except llama_source.LlamaSourceError as err:
        raise GGUFError(str(err)) from None


def converter_dir(version: str | None = None) -> Path:
    """Where the converter lives: ``$EDGEDISTILL_LLAMA_CONVERTER``, else the machine's tool folder (not
    ``$EDGEDISTILL_CACHE``: the converter is a pinned tool, like the llama-cpp-python wheel, not run state)."""
    if env := os.environ.get(CONVERTER_ENV):
        return Path(env)
    return tools_root() / f"llama.cpp-convert-{version or llama_cpp_version()}"


def ensure_converter(log: bool = False) -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` for the installed llama-cpp-python, fetched on first use from
    its sdist (:mod:`edgedistill.core.llama_source`), only the converter's files extracted. Idempotent and safe
    against concurrent callers."""
    if env := os.environ.get(CONVERTER_ENV):
        if not (Path(env) / "convert_hf_to_gguf.py").is_file():
            raise GGUFError(f"${CONVERTER_ENV}={env}: no convert_hf_to_gguf.py there")
        return Path(env)
    version = llama_cpp_version()
    dest = converter_dir(version)
    if (dest / _DONE).is_file():
        return dest
    with locks.locked(dest.with_name(f".{dest.name}.lock")):
        if (dest / _DONE).is_file():  # another process fetched it while this one waited
            return dest
        if log:
            print(f"fetching llama.cpp's converter from the llama-cpp-python {version} sdist into {dest}",
                  file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix=".llama-sdist-", dir=dest.parent) as tmp:
            try:
                sdist = llama_source.download_sdist(version, Path(tmp), hint=(
                    "On a machine without PyPI, extract vendor/llama.cpp/{convert_hf_to_gguf.py,conversion,gguf-py} "
                    f"of that sdist into a folder and set ${CONVERTER_ENV} to it"))
            except llama_source.LlamaSourceError as err:
                raise GGUFError(f"cannot fetch llama.cpp's converter: {err}") from None
            staging = Path(tmp) / "converter"
            _extract_converter(sdist, staging)
            (staging / _DONE).write_text(json.dumps({"llama_cpp_python": version, "sdist": sdist.name}) + "\n")
            shutil.rmtree(dest, ignore_errors=True)  # a partial folder from an interrupted older layout
            staging.rename(dest)
    return dest


def _is_converter_file(rel: PurePosixPath) -> bool:
    return str(rel) in _CONVERTER_FILES or str(rel).startswith(_CONVERTER_TREES) or str(rel) == "gguf-py/LICENSE"


def _extract_converter(sdist: Path, dest: Path) -> None:
    """Copy the converter's files out of the sdist (safely: :func:`edgedistill.core.llama_source.extract`)."""
    try:
        n = llama_source.extract(sdist, dest, _is_converter_file)
    except llama_source.LlamaSourceError as err:
        raise GGUFError(str(err)) from None
    if not ((dest / "convert_hf_to_gguf.py").is_file() and (dest / "gguf-py" / "gguf" / "__init__.py").is_file()):
        raise GGUFError(f"{sdist.name}: the converter's files are missing from the sdist ({n} extracted)")


# -- the pre-tokenizer, from the tokenizer's own definition ----------------------------------------------------
def identify_pre_tokenizer(tokenizer_json: Path) -> str | None:
    """llama.cpp's name for the pre-tokenizer that ``tokenizer.json`` defines, or ``None`` when it is no
    byte-level BPE tokenizer that splits like a known one (then only llama.cpp's own hash check can name it).

    Recognised: ``ByteLevel(add_prefix_space=False, use_regex=True)`` alone (GPT-2: ``gpt-2``), and
    ``Split(regex, Isolated)`` then ``ByteLevel(add_prefix_space=False, use_regex=False)`` with a regex of
    :data:`PRE_TOKENIZERS` (Llama 3: ``llama-bpe``; Qwen2: ``qwen2``), with a normalizer that pre-tokenizer allows;
    and ``Digits(individual_digits=True)`` then that GPT-2 ``ByteLevel`` (SmolLM2: ``smollm``).
    """
    tj = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    if (tj.get("model") or {}).get("type") != "BPE" or (tj.get("model") or {}).get("byte_fallback"):
        return None
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if (len(steps) == 2 and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
            and steps[1].get("type") == "ByteLevel" and steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space", False) and tj.get("normalizer") is None):
        return "smollm"  # SmolLM/SmolLM2: each digit alone, then GPT-2's split (llama.cpp's `smollm`)
    regex = None
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        regex, byte_level = GPT2_REGEX, steps[0]
    elif (len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
          and not steps[1].get("use_regex", True) and steps[0].get("behavior") == "Isolated"
          and not steps[0].get("invert", False)):
        regex, byte_level = (steps[0].get("pattern") or {}).get("Regex"), steps[1]
    else:
        return None
    name = PRE_TOKENIZERS.get(regex or "")
    if name is None or byte_level.get("add_prefix_space", False):
        return None
    norm = tj.get("normalizer")
    if (norm or {}).get("type") not in _NORMALIZERS[name]:
        return None
    return name


# -- HF → GGUF ---------------------------------------------------------------------------------------------------
def convert(model_dir: Path, out: Path, outtype: str = "f32", tokenizer_dir: Path | None = None,
            lazy: bool = True, timeout_s: float | None = None, pre_tokenizer: str | None = None) -> Path:
    """Convert a local HF folder (config.json + safetensors; the tokenizer beside it or in ``tokenizer_dir``) to
    ``out`` with llama.cpp's converter (``--outtype f32|f16``), atomically. Quantise with :func:`quantize`.

    ``pre_tokenizer`` names llama.cpp's pre-tokenizer for a tokenizer :func:`identify_pre_tokenizer` cannot
    place (it too is used only when llama.cpp's hash check does not know the tokenizer); verify the result with
    :func:`~edgedistill.toolchain.llm.export.fidelity.token_parity`."""
    model_dir = Path(model_dir)
    if outtype not in CONVERTER_VARIANTS:
        raise GGUFError(f"{out}: the converter writes {'/'.join(CONVERTER_VARIANTS)}; quantise to {outtype} with "
                        "quantize()")
    if not (model_dir / "config.json").is_file():
        raise GGUFError(f"{model_dir}: not a Hugging Face model folder (no config.json)")
    if not any(model_dir.glob("*.safetensors")):
        raise GGUFError(f"{model_dir}: no *.safetensors weights (pickled weights are never loaded)")
    tdir = Path(tokenizer_dir) if tokenizer_dir is not None else model_dir
    if not ((tdir / "tokenizer.json").is_file() or (tdir / "tokenizer.model").is_file()):
        raise GGUFError(f"{tdir}: no tokenizer.json or tokenizer.model; give the tokenizer folder")
    files = converter_files(model_dir, tdir)  # refuses code, a foreign architecture, a custom tokenizer class
    with tempfile.TemporaryDirectory(prefix=".gguf-src-", dir=Path(out).parent if Path(out).parent.is_dir()
                                     else None) as staging, atomic_path(out) as tmp:
        src = _stage(files, Path(staging), model_dir.name)
        repair_for_converter(src)  # the staged copy: a byte-level BPE written in SentencePiece's shape
        pre = pre_tokenizer or (identify_pre_tokenizer(src / "tokenizer.json") if (src / "tokenizer.json").is_file()
                                else None)
        cmd, env = converter_command(src, tmp, outtype, pre, lazy, name=model_dir.name)
        try:
            proc = subprocess.run(dies_with_us(cmd), capture_output=True, text=True, env=env, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise GGUFError(f"{model_dir}: llama.cpp's converter ran past {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            raise GGUFError(_converter_error(model_dir, tdir, proc.stderr))
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise GGUFError(f"{model_dir}: llama.cpp's converter wrote nothing ({proc.stderr.strip()[-400:]})")
    return Path(out)


def converter_command(src: Path, out: Path, outtype: str, pre: str | None, lazy: bool = True,
                      name: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The converter's command line and environment for a folder holding both model and tokenizer files (what
    :func:`convert` runs; ``perf/gguf_convert_memory.py`` runs it to measure its peak memory)."""
    cmd = [sys.executable, "-m", "edgedistill.toolchain.llm.export.hf_to_gguf", "--converter",
           str(ensure_converter())]
    cmd += ["--pre", pre] if pre else []
    cmd += ["--", str(src), "--outtype", outtype, "--outfile", str(out), "--model-name", name or Path(src).name]
    cmd += [] if lazy else ["--no-lazy"]
    return cmd, converter_env()


def converter_env() -> dict[str, str]:
    """The converter's environment: only :data:`_CONVERTER_ENV_KEEP` of this one (no API keys, no
    ``PYTHONPATH``), offline, with the working directory kept off ``sys.path`` (``PYTHONSAFEPATH``)."""
    keep = {k: v for k, v in os.environ.items() if k in _CONVERTER_ENV_KEEP or k.startswith("LC_")}
    return {**keep, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONSAFEPATH": "1"}


def _stage(files: list[Path], staging: Path, name: str) -> Path:
    """A folder ``staging/name`` of links to ``files`` (:func:`~edgedistill.toolchain.llm.model_folder.converter_files`:
    the config, the safetensors weights and index, the tokenizer files of its kind; nothing else)."""
    src = staging / name
    src.mkdir()
    for f in files:
        (src / f.name).symlink_to(f.resolve())
    return src


def _converter_error(model_dir: Path, tdir: Path, stderr: str) -> str:
    tail = "\n".join(line for line in stderr.strip().splitlines()[-12:])
    if "pre-tokenizer was not recognized" in stderr:
        known = ", ".join(sorted({*PRE_TOKENIZERS.values(), "smollm"}))
        return (f"{model_dir}: llama.cpp does not know the tokenizer's pre-tokenizer, and {tdir / 'tokenizer.json'}"
                f" defines none that edgedistill recognises (known: {known}; a ByteLevel BPE, alone, after a Split "
                "with one of their regexes, or after Digits)")
    if "is not supported" in stderr and "Model " in stderr:
        arch = json.loads((model_dir / "config.json").read_text()).get("architectures")
        return f"{model_dir}: llama.cpp's converter does not support architecture {arch}\n{tail}"
    return f"{model_dir}: llama.cpp's converter failed:\n{tail}"


# -- quantisation and inspection ---------------------------------------------------------------------------------
def quantize(src: Path, out: Path, variant: str, threads: int = 2) -> Path:
    """Quantise a GGUF with llama.cpp's ``llama_model_quantize`` (Q8_0, Q4_0, Q4_K_M), in a child process (a
    llama.cpp abort on ``src`` is a :class:`~edgedistill.runtimes.child.ChildCrash` naming it)."""
    from edgedistill.runtimes.child import call

    if variant not in QUANT_FTYPES:
        raise GGUFError(f"{out}: unknown quantisation {variant!r}; choose one of {', '.join(QUANT_FTYPES)}")
    with atomic_path(out) as tmp:
        call(__name__, "quantize_here", {"src": str(src), "out": str(tmp), "variant": variant, "threads": threads},
             file=Path(src), what=f"quantising to {variant}")
    return out


def quantize_here(src: str, out: str, variant: str, threads: int) -> dict[str, str]:
    """:func:`quantize`'s work, in this process (the child's side)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[variant]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params))
    if rc != 0:
        raise GGUFError(f"{src}: llama_model_quantize to {variant} failed (code {rc})")
    return {"out": out}


def tensor_types(path: Path) -> dict[str, str]:
    """Tensor name → GGML type name, read back from a GGUF (shows what the quantiser really chose)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def metadata(path: Path, keys: tuple[str, ...] = ("general.architecture", "tokenizer.ggml.model",
                                                  "tokenizer.ggml.pre")) -> dict[str, object]:
    """Scalar/string metadata of a GGUF (e.g. which pre-tokenizer llama.cpp will apply)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out: dict[str, object] = {}
    for k in keys:
        f = r.fields.get(k)
        if f is None:
            out[k] = None
            continue
        v = f.parts[f.data[0]]
        out[k] = bytes(v).decode("utf-8") if f.types and f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]
    return out


if __name__ == "__main__":  # `make setup`: fetch the converter for the installed llama-cpp-python
    print(ensure_converter(log=True))
