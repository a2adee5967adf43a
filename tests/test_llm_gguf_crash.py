"""A bad artifact is an error, not a crash: a GGUF whose vocabulary aborts llama.cpp (the real failure: a ByteLevel
BPE vocabulary labelled SentencePiece, ``tokenizer.ggml.model = llama``, ``pre = default``, so
``llama_vocab::byte_to_token`` throws ``std::out_of_range`` on any text) is one line naming the file and the step,
is never recorded as an artifact, and the export's other work is kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgedistill.runtimes.child import ChildCrash, call
from edgedistill.runtimes.llama_cpp import probe_in_child
from edgedistill.toolchain.llm.export import gguf as gguf_mod
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)

#: what the real broken export recorded (SmolLM2's ByteLevel vocabulary read as SentencePiece)
SPM_LABEL = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default"}


def relabel(src: Path, dst: Path, overrides: dict[str, str]) -> Path:
    """Copy a GGUF with some string metadata replaced (gguf-py's ``gguf_new_metadata`` logic)."""
    import gguf

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents(), endianess=r.endianess)
    for f in r.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, overrides.get(f.name, f.contents()), f.types[0], sub_type=sub)
    for t in r.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in r.tensors:
        w.write_tensor_data(t.data, tensor_endianess=r.endianess)
    w.close()
    return dst


def break_every_converted_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GGUF llama.cpp's converter writes from now on gets the issue's broken labels (:data:`SPM_LABEL`)."""
    real = gguf_mod.convert

    def convert_then_relabel(model_dir: Path, out: Path, outtype: str = "f32", *a: object, **k: object) -> Path:
        real(model_dir, out, outtype, *a, **k)  # type: ignore[arg-type]
        relabel(out, out.with_suffix(".tmp"), SPM_LABEL).replace(out)
        return out

    monkeypatch.setattr(gguf_mod, "convert", convert_then_relabel)


@pytest.fixture(scope="module")
def good_and_bad(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:  # noqa: F811
    d = tmp_path_factory.mktemp("gguf-crash")
    good = gguf_mod.convert(tiny_lm.dir, d / "good.gguf", "f32")
    return good, relabel(good, d / "bad.gguf", SPM_LABEL)


def test_the_bad_vocabulary_really_aborts_llama_cpp(good_and_bad: tuple[Path, Path]) -> None:
    """The fixture is the real failure: in-process, llama.cpp kills the interpreter on "hello world"."""
    code = "import sys, llama_cpp; llama_cpp.Llama(sys.argv[1], verbose=False).tokenize(b'hello world')"
    for path, dies in zip(good_and_bad, (False, True), strict=True):
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                              env={"GGML_NO_BACKTRACE": "1", "PATH": "/usr/bin:/bin"}, check=False)
        assert (proc.returncode < 0) is dies, (path, proc.returncode, proc.stderr[-500:])
    assert "std::out_of_range" in proc.stderr


def test_a_llama_cpp_abort_is_one_line_naming_the_file_and_step(tiny_lm: TinyLM,  # noqa: F811
                                                                good_and_bad: tuple[Path, Path]) -> None:
    good, bad = good_and_bad
    ids = [tiny_lm.tok.encode("hello world")]
    ok = probe_in_child(good, ["hello world"], ids, ids[0] * 4, kv_f32=True)
    assert ok["tokens"] == ids and ok["logits"][0].shape == (len(ids[0]), len(tiny_lm.tok))
    assert ok["long_logits"].shape == (4 * len(ids[0]), len(tiny_lm.tok)) and ok["runtime"]["kv_cache"] == "f32"
    with pytest.raises(ChildCrash) as err:
        probe_in_child(bad, ["hello world"], ids, ids[0] * 4)
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and err.value.step.startswith("tokenising"), msg
    assert msg.startswith("llama.cpp killed by SIGABRT while tokenising") and "std::out_of_range" in msg, msg
    # a Python error in the child comes back as its one line too (not a GGUF at all)
    text = good.with_name("not-a.gguf")
    text.write_text("not a gguf\n")
    with pytest.raises(ChildCrash, match=r"not-a.gguf: llama.cpp cannot load it"):
        probe_in_child(text, ["x"], ids, ids[0])
    with pytest.raises(ValueError, match="not a module of edgedistill"):
        call("os", "getcwd", {}, file=good, what="nothing")


def test_the_agent_on_a_bad_gguf_is_one_line(tiny_lm: TinyLM, good_and_bad: tuple[Path, Path],  # noqa: F811
                                             tmp_path: Path) -> None:
    """Bench: the agent (a child already) dies on the file's texts; the host gets one line naming it."""
    import numpy as np

    from edgedistill.devices.local import AgentError, AgentJob, run_local

    ids = tiny_lm.tok.encode("hello world")
    np.savez(tmp_path / "eval.npz", ids=np.array([ids], dtype=np.int32), lengths=np.array([len(ids)]),
             texts=np.array(["hello world"]))
    with pytest.raises(AgentError) as err:
        run_local(AgentJob(good_and_bad[1], 1, tmp_path / "eval.npz", None, 1, 3, True))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{good_and_bad[1]}: the agent killed by SIGABRT"), msg
    assert "std::out_of_range" in msg, msg


def test_export_rejects_the_gguf_and_keeps_the_rest(tiny_lm: TinyLM, tmp_path: Path,  # noqa: F811
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Done when: `edgedistill export --hf` on a folder whose GGUF aborts llama.cpp exits 2 with one line naming the
    file and the step; the GGUF files are no artifacts (moved to rejected/, listed with the reason) and the ONNX
    file is kept, recorded and checked. The test process itself survives (llama.cpp ran in children)."""
    from tests.test_cli import cli_here

    break_every_converted_gguf(monkeypatch)
    out = tmp_path / "out"
    res = cli_here("export", "--hf", str(tiny_lm.dir), "--formats", "gguf:f32,gguf:q8_0,onnx:fp32", "--out", str(out))
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    error = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(error) == 1, res.stderr
    assert "tiny-lm" in error[0] and "-f32 rejected: llama.cpp killed by SIGABRT while tokenising" in error[0], error
    assert "1 more rejected" in error[0] and "q8_0" in error[0], error
    listing = json.loads((out / "artifacts.json").read_text())
    assert [a["variant"] for a in listing["artifacts"]] == ["fp32"] and listing["artifacts"][0]["fidelity"]["ok"]
    assert sorted(listing["rejected"]) == sorted(f"{tiny_lm.dir.name}-{v}" for v in ("f32", "q8_0"))
    assert not list(out.glob("*.gguf")) and len(list((out / "rejected").glob("*.gguf"))) == 2
    info = json.loads((out / "manifest.json").read_text())["stages"]["export"]
    assert info["info"]["artifacts"] == [f"{tiny_lm.dir.name}-onnx-fp32"] and info["info"]["rejected"]
    assert not any(o["path"].endswith(".gguf") for o in info["outputs"]), info["outputs"]


def test_a_stage_that_rejected_something_makes_the_command_fail(tmp_path: Path) -> None:
    """A stage records its rejections as ``errors``; every command that covers it (a re-run that skips it too)
    ends with them as one line (exit 2), after its other work."""
    from edgedistill.toolchain.pipeline import stage_errors
    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.rundir import RunDir

    ctx = SimpleNamespace(recipe=load_recipe("tiny-llama"), run=RunDir(tmp_path / "run"))
    ctx.run.record("distill", "h0", [], {})
    assert stage_errors(ctx) is None  # type: ignore[arg-type]
    ctx.run.record("export", "h1", [], {"errors": ["student-f32 rejected: llama.cpp killed by SIGABRT"]})
    assert stage_errors(ctx) == "student-f32 rejected: llama.cpp killed by SIGABRT"  # type: ignore[arg-type]
    assert stage_errors(ctx, ("distill",)) is None  # type: ignore[arg-type]
