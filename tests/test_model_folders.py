"""No code from model folders (:mod:`edgedistill.toolchain.llm.model_folder`): code with a side effect (a ``.py``
that creates a marker file when imported) is planted in a small Llama folder in each way a loader or llama.cpp's
converter could be led to run it: ``auto_map`` in ``config.json``, ``auto_map`` in ``tokenizer_config.json``, a
swapped ``architectures`` (the issue's folder: ``model_type: llama`` with a converter class that loads the tokenizer
with ``trust_remote_code=True``), a custom ``tokenizer_class``, a ``.py`` beside the weights. Through ``export --hf``,
``run`` (teacher, student, ensemble and tokenizer paths) and the conversion behind ``export.teacher`` and black-box
serving, the marker never appears, the exit code is 2 and the one-line error names the file and the key. Controls
show that the planted code does run when the folder is loaded the unsafe way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_bad_inputs import _one_line_exit_2
from tests.test_cli import cli, cli_here

#: the swapped architecture: a llama.cpp converter class whose set_vocab calls
#: AutoTokenizer.from_pretrained(dir, trust_remote_code=True) when the folder has no tokenizer.json
#: (conversion/hunyuan.py), and whose tensor names a Llama checkpoint's map onto
SWAPPED_ARCH = "HunYuanDenseV1ForCausalLM"
TEXTS = ["The court held that the contract was void.", "Counsel for the appellant argued the point at length.",
         "Judgment for the respondent, with costs."] * 20


def _evil_py(marker: Path) -> str:
    """A module that creates ``marker`` when imported, with the classes its ``auto_map`` entries name."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
            "from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast\n"
            "class EvilConfig(LlamaConfig):\n    pass\n"
            "class EvilModel(LlamaForCausalLM):\n    pass\n"
            "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")


def _save_llama(d: Path, vocab_size: int, bos: int, eos: int) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, bos_token_id=bos, eos_token_id=eos)
    LlamaForCausalLM(cfg).save_pretrained(str(d), safe_serialization=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two clean tiny Llama folders: a byte-level BPE tokenizer (tokenizer.json) and a SentencePiece one
    (tokenizer.model, ``tokenizer_class: LlamaTokenizer``)."""
    from edgedistill.toolchain.llm.tokenizer import train_bpe
    from tests.llm_families import sentencepiece_bpe

    root = tmp_path_factory.mktemp("clean")
    bpe = root / "bpe"
    tok = train_bpe(TEXTS, 300, bpe)
    _save_llama(bpe, len(tok), tok.bos_token_id, tok.eos_token_id)
    spm = root / "spm"
    tok = sentencepiece_bpe(400, spm)
    _save_llama(spm, len(tok), tok.bos_token_id, tok.eos_token_id)
    return {"bpe": bpe, "spm": spm}


def _edit_json(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**doc, **changes}))


#: variant → (base folder, what its one-line error must name)
VARIANTS = {
    "auto_map in config.json": ("bpe", ["config.json: auto_map names code to import"]),
    "auto_map in tokenizer_config.json": ("bpe", ["tokenizer_config.json: auto_map names code to import"]),
    "swapped architectures": ("spm", [f"config.json: architectures ['{SWAPPED_ARCH}'] is not model_type 'llama'",
                                      "tokenizer_config.json: auto_map"]),
    "custom tokenizer_class": ("bpe", ["tokenizer_config.json: tokenizer_class 'EvilTokenizer' is not one"]),
    ".py beside the weights": ("bpe", ["modeling_llama.py: Python code"]),
}


def plant(clean: dict[str, Path], variant: str, dest: Path, marker: Path) -> Path:
    """A copy of a clean folder with code planted in it the ``variant`` way."""
    folder = shutil.copytree(clean[VARIANTS[variant][0]], dest)
    tok_auto_map = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    if variant == ".py beside the weights":  # the name transformers' Llama would import if asked to
        (folder / "modeling_llama.py").write_text(_evil_py(marker))
        return folder
    (folder / "evil.py").write_text(_evil_py(marker))
    if variant == "auto_map in config.json":
        _edit_json(folder / "config.json", auto_map={"AutoConfig": "evil.EvilConfig",
                                                     "AutoModelForCausalLM": "evil.EvilModel"})
    elif variant == "auto_map in tokenizer_config.json":
        _edit_json(folder / "tokenizer_config.json", auto_map=tok_auto_map)
    elif variant == "swapped architectures":  # the issue's folder: SentencePiece, LlamaTokenizer, auto_map
        (folder / "tokenizer.json").unlink()  # tokenizer.model alone
        _edit_json(folder / "config.json", architectures=[SWAPPED_ARCH])
        _edit_json(folder / "tokenizer_config.json", tokenizer_class="LlamaTokenizer", auto_map=tok_auto_map)
    elif variant == "custom tokenizer_class":  # transformers asks "[y/N]" on a terminal for this one
        _edit_json(folder / "tokenizer_config.json", tokenizer_class="EvilTokenizer", auto_map=tok_auto_map)
    return folder


def _unsafe(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python with its own transformers module cache (the controls' loads copy the module)."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                          check=False)


# -- controls: the planted code is live ------------------------------------------------------------------------
def test_the_planted_code_runs_when_loaded_the_unsafe_way(clean: dict[str, Path], tmp_path: Path) -> None:
    cases = {"auto_map in config.json": "AutoConfig", "auto_map in tokenizer_config.json": "AutoTokenizer",
             "custom tokenizer_class": "AutoTokenizer"}
    markers, code = [], "import transformers\n"
    for i, (variant, loader) in enumerate(cases.items()):
        markers.append(tmp_path / f"marker-{i}")
        folder = plant(clean, variant, tmp_path / f"m{i}", markers[-1])
        code += f"transformers.{loader}.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
    res = _unsafe(code, tmp_path)
    assert all(m.exists() for m in markers), res.stderr[-2000:]


def test_the_issues_folder_runs_its_code_in_the_bare_converter(clean: dict[str, Path], tmp_path: Path) -> None:
    """llama.cpp's converter as it comes, given the whole folder of the issue, imports the folder's code."""
    from edgedistill.toolchain.llm.export.gguf import ensure_converter

    marker = tmp_path / "marker"
    folder = plant(clean, "swapped architectures", tmp_path / "m", marker)
    script = ensure_converter() / "convert_hf_to_gguf.py"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, str(script), str(folder), "--outfile", str(tmp_path / "x.gguf")],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert marker.exists(), res.stderr[-3000:]


# -- the CLI paths -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_hf_refuses_planted_code(clean: dict[str, Path], tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "marker"
    folder = plant(clean, variant, tmp_path / "m", marker)
    res = cli_here("export", "--hf", str(folder), "--formats", "gguf:f32", "--out", str(tmp_path / "out"))
    _one_line_exit_2(res, str(folder), *VARIANTS[variant][1])
    assert not marker.exists()


def test_export_hf_refuses_the_issues_folder_in_a_real_process(clean: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = plant(clean, "swapped architectures", tmp_path / "m", marker)
    res = cli("export", "--hf", str(folder), "--formats", "gguf:f32", "--out", str(tmp_path / "out"))
    _one_line_exit_2(res, *VARIANTS["swapped architectures"][1])
    assert not marker.exists() and not (tmp_path / "out" / "artifacts.json").exists()


def _llm_recipe(tmp_path: Path, clean: dict[str, Path], role: str, folder: Path) -> Path:
    tok = shutil.copytree(clean["bpe"], tmp_path / "tok")
    r: dict = {"kind": "llm", "name": "planted", "data": {"kind": "legal-briefs", "n_examples": 20},
               "tokenizer": {"kind": "local", "path": str(tok)}, "blackbox": {"enabled": False}}
    if role == "teacher.path":
        r["teacher"] = {"path": str(folder)}
    elif role == "student.path":  # also the LoRA base
        r["student"] = {"path": str(folder), "lora": {"enabled": True}}
    elif role == "teacher.ensemble.0.path":
        r["teacher"] = {"ensemble": [{"path": str(folder)}]}
    else:
        r["tokenizer"] = {"kind": "local", "path": str(folder)}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    return tmp_path / "r.yaml"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_run_refuses_a_planted_teacher(clean: dict[str, Path], tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "marker"
    folder = plant(clean, variant, tmp_path / "m", marker)
    res = cli_here("run", str(_llm_recipe(tmp_path, clean, "teacher.path", folder)), "--out", str(tmp_path / "run"))
    _one_line_exit_2(res, "teacher.path: ", str(folder), *VARIANTS[variant][1])
    assert not marker.exists() and not (tmp_path / "run" / "data" / "train.jsonl").exists()


@pytest.mark.parametrize("role", ["student.path", "teacher.ensemble.0.path", "tokenizer.path"])
def test_run_refuses_planted_code_on_every_recipe_path(clean: dict[str, Path], tmp_path: Path, role: str) -> None:
    marker = tmp_path / "marker"
    folder = plant(clean, "auto_map in tokenizer_config.json", tmp_path / "m", marker)
    res = cli_here("run", str(_llm_recipe(tmp_path, clean, role, folder)), "--out", str(tmp_path / "run"))
    _one_line_exit_2(res, f"{role}: ", "tokenizer_config.json: auto_map")
    assert not marker.exists()


def test_run_in_a_real_process_refuses_the_issues_folder(clean: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    folder = plant(clean, "swapped architectures", tmp_path / "m", marker)
    res = cli("run", str(_llm_recipe(tmp_path, clean, "teacher.path", folder)), "--out", str(tmp_path / "run"))
    _one_line_exit_2(res, "teacher.path: ", *VARIANTS["swapped architectures"][1])
    assert not marker.exists()


# -- every loader on its own (export.teacher, black-box serving, bench, ensemble, tokenizers) ---------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_loader_refuses_planted_code(clean: dict[str, Path], tmp_path: Path, variant: str) -> None:
    from edgedistill.runtimes.base import RuntimeError_
    from edgedistill.runtimes.torch_lm import TorchLMSession
    from edgedistill.toolchain.llm.export.artifacts import LLMExport, export_llm
    from edgedistill.toolchain.llm.export.gguf import convert
    from edgedistill.toolchain.llm.model_folder import ModelError
    from edgedistill.toolchain.llm.models import check_same_vocab, load_causal_lm
    from edgedistill.toolchain.llm.tokenizer import load_tokenizer

    marker = tmp_path / "marker"
    folder = plant(clean, variant, tmp_path / "m", marker)
    needles = VARIANTS[variant][1]
    clean_tok = load_tokenizer(clean["bpe"])
    arch_free = [n for n in needles if "architectures" not in n]  # a tokenizer folder's check has no model_type
    calls = {
        "black-box serving: convert(teacher, run tokenizer)": (lambda: convert(folder, tmp_path / "t.gguf", "f32",
                                                                               clean["bpe"]), needles),
        "convert(folder)": (lambda: convert(folder, tmp_path / "f.gguf", "f32"), needles),
        "export.teacher: export_llm": (lambda: export_llm(LLMExport(
            folder, clean_tok, clean["bpe"], tmp_path, tmp_path, "teacher", ["f32"], [], [[1, 2]], [1], [1, 2],
            prefix="teacher")), needles),
        "load_causal_lm (teacher, student, LoRA base)": (lambda: load_causal_lm(folder), needles),
        "check_same_vocab (ensemble)": (lambda: check_same_vocab(clean_tok, folder, "teacher.ensemble.0"), needles),
        "load_tokenizer (tokenizer.path)": (lambda: load_tokenizer(folder), arch_free),
    }
    for name, (call, want) in calls.items():
        with pytest.raises(ModelError) as err:
            call()
        assert all(n in str(err.value) for n in want) and "\n" not in str(err.value), (name, str(err.value))
    with pytest.raises(RuntimeError_, match="refused"):
        TorchLMSession(folder)  # the bench's PyTorch reference (a run's teacher folder)
    assert not marker.exists() and not list(tmp_path.glob("*.gguf"))


def test_a_foreign_architecture_or_tokenizer_class_alone_is_refused(clean: dict[str, Path], tmp_path: Path) -> None:
    """Without any code: a swapped or missing ``architectures`` and an unknown ``tokenizer_class`` are refused too
    (the converter would run another class's code; transformers would look for the class's code)."""
    from edgedistill.toolchain.llm.export.gguf import convert
    from edgedistill.toolchain.llm.model_folder import ModelError, check_model_folder

    swapped = shutil.copytree(clean["bpe"], tmp_path / "swapped")
    _edit_json(swapped / "config.json", text_config={"architectures": ["InternLM2ForCausalLM"]})
    with pytest.raises(ModelError, match=r"config\.json: text_config\.architectures \['InternLM2ForCausalLM'\]"):
        check_model_folder(swapped)
    unnamed = shutil.copytree(clean["bpe"], tmp_path / "unnamed")
    _edit_json(unnamed / "config.json", architectures=None)
    check_model_folder(unnamed)  # loading needs no architectures (AutoModel goes by model_type) ...
    with pytest.raises(ModelError, match=r"config\.json: architectures is missing; set it to \['LlamaForCausalLM'\]"):
        convert(unnamed, tmp_path / "x.gguf")  # ... but the converter would pick a class by guessing
    odd = shutil.copytree(clean["spm"], tmp_path / "odd")
    (odd / "tokenizer.json").unlink()
    _edit_json(odd / "tokenizer_config.json", tokenizer_class="Qwen2Tokenizer")  # a BPE class on a SentencePiece
    with pytest.raises(ModelError, match="tokenizer_class 'Qwen2Tokenizer' is not one edgedistill loads for a "
                                         "sentencepiece tokenizer"):
        check_model_folder(odd)


# -- what the converter sees and the environment it runs in --------------------------------------------------------
FAKE_CONVERTER = '''"""Reports what it was given instead of converting: the staged files, its environment,
whether transformers' dynamic-module import is refused, and whether a trust_remote_code=True load is forced to False."""
import json, os, sys
from pathlib import Path

def main():
    import transformers
    from transformers import dynamic_module_utils
    src, out = Path(sys.argv[1]), sys.argv[sys.argv.index("--outfile") + 1]
    try:
        transformers.AutoTokenizer.from_pretrained(str(src), trust_remote_code=True)
        remote = "loaded"
    except Exception as err:
        remote = f"{type(err).__name__}: {err}"
    Path(out).write_text(json.dumps({"files": sorted(p.name for p in src.iterdir()), "env": dict(os.environ),
                                     "sys_path": sys.path, "remote": remote,
                                     "import_refused": dynamic_module_utils.get_class_in_module.__name__}))
'''


def test_the_converter_sees_only_needed_files_and_a_minimal_environment(clean: dict[str, Path], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from edgedistill.toolchain.llm.export.gguf import CONVERTER_ENV, convert

    fake = tmp_path / "converter"
    fake.mkdir()
    (fake / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER)
    (fake / "conversion").mkdir()  # what the wrapper hooks the pre-tokenizer into
    (fake / "conversion" / "base.py").write_text("class TextModel:\n    def get_vocab_base_pre(self, t):\n"
                                                 "        return 'gpt-2'\n")
    folder = shutil.copytree(clean["bpe"], tmp_path / "m")
    (folder / "README.md").write_text("a model card")
    (folder / "notes.txt").write_text("notes")
    (folder / "tokenizer.model").write_bytes(b"not the tokenizer this folder's class uses")
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    monkeypatch.setenv(CONVERTER_ENV, str(fake))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "user-path"))
    monkeypatch.setenv("LANG", "C.UTF-8")
    report = json.loads(convert(folder, tmp_path / "r.gguf", "f32").read_text())
    assert report["files"] == ["config.json", "generation_config.json", "model.safetensors",
                               "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"], report["files"]
    env = report["env"]
    assert "OPENAI_API_KEY" not in env and "PYTHONPATH" not in env and env["HF_HUB_OFFLINE"] == "1", sorted(env)
    assert env["LANG"] == "C.UTF-8" and env["PATH"] == os.environ["PATH"]
    assert str(tmp_path / "user-path") not in report["sys_path"]
    assert report["import_refused"] == "refuse"
    assert report["remote"] == "loaded"  # a clean folder still loads: only the remote code is off


def test_the_converter_process_never_imports_code_even_if_asked(clean: dict[str, Path], tmp_path: Path) -> None:
    """Defence in depth, behind the folder check and the staging: in the converter's process a
    ``trust_remote_code=True`` load of a planted folder is refused, and transformers' dynamic import raises."""
    marker = tmp_path / "marker"
    folder = plant(clean, "custom tokenizer_class", tmp_path / "m", marker)  # only auto_map names its class
    code = ("from edgedistill.toolchain.llm.export.hf_to_gguf import _refuse_remote_code\n"
            "_refuse_remote_code()\nimport transformers\nfrom transformers import dynamic_module_utils as d\n"
            "for call in (lambda: transformers.AutoTokenizer.from_pretrained(F, trust_remote_code=True),\n"
            "             lambda: d.get_class_from_dynamic_module('evil.EvilTokenizer', F)):\n"
            "    try:\n        call()\n        print('LOADED')\n"
            "    except Exception as err:\n        print('refused:', type(err).__name__, str(err)[:200])\n")
    res = _unsafe(f"F = {str(folder)!r}\n" + code, tmp_path)
    assert res.returncode == 0 and res.stdout.count("refused:") == 2 and "LOADED" not in res.stdout, \
        res.stdout + res.stderr[-2000:]
    assert not marker.exists()
