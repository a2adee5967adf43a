"""A corpus of bad inputs, made here: each gets one line naming the file, field or endpoint, exit code 2, no
traceback, and nothing written as if complete. Hypothesis fuzzes the recipe loader: any document gives a valid
recipe or the one-line RecipeError."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgedistill.toolchain.recipe import RecipeBase, RecipeError, load_recipe, parse_recipe
from tests.conftest import tiny_recipe
from tests.test_cli import cli

LLM = {"kind": "llm", "name": "l"}


def _one_line_exit_2(res, *needles: str) -> None:  # type: ignore[no-untyped-def]
    """Exit 2, no traceback, and the error is one line (the last; stage progress may come before it)."""
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in res.stderr, res.stderr[-2000:]
    for n in needles:
        assert n in errors[0], (n, errors[0])


def _write(tmp_path: Path, doc: object, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


RECIPE_CASES = {
    "malformed YAML": ("name: x\n  bad: [\n", "r.yaml: line 2: invalid YAML"),
    "unknown key": (tiny_recipe(bogus=1), "r.yaml: bogus: unknown key"),
    "wrong type": (tiny_recipe(distill={"train": {"epochs": "ten"}}), "r.yaml: distill.train.epochs: Input should be"),
    "../ in the name": (tiny_recipe(name="../escape"), "r.yaml: name: String should match pattern"),
    "absolute name": (tiny_recipe(name="/tmp/escape"), "r.yaml: name: String should match pattern"),
    "../ in a loss name": ({**LLM, "distill": {"losses": [{"name": "../../x"}]}},
                           "r.yaml: distill.losses.0.name: String should match pattern"),
    "unknown kind": ({**LLM, "kind": "speech"}, "r.yaml: kind: unknown pipeline kind 'speech'"),
    "a list, not a mapping": ("- 1\n- 2\n", "r.yaml: (top level): expected a mapping"),
    "not UTF-8": (b"name: \xff\xfe", "r.yaml: (file): not UTF-8 text"),
    "unknown task": ({**LLM, "data": {"kind": "legal-memos"}}, "r.yaml: data.kind: expected jsonl or a built-in"),
    "unknown scorer": ({**LLM, "data": {"kind": "jsonl", "path": "d.jsonl", "score": {"name": "bleu"}}},
                       "r.yaml: data.score.name: unknown scorer 'bleu'"),
    "API key over plain http": (
        {**LLM, "blackbox": {"endpoint": {"base_url": "http://203.0.113.9/v1", "api_key_env": "OPENAI_API_KEY"}}},
        "base_url: http://203.0.113.9/v1 is neither https:// nor loopback"),
    "credentials in a plain-http URL": (
        {**LLM, "blackbox": {"endpoint": {"base_url": "http://me:hunter2@203.0.113.9/v1"}}},
        "base_url: http://REDACTED@203.0.113.9/v1 is neither https:// nor loopback"),
    "not an http(s) URL": ({**LLM, "blackbox": {"endpoint": {"base_url": "ftp://203.0.113.9/v1"}}},
                           "base_url: ftp://203.0.113.9/v1 is not an http(s) URL"),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipes(tmp_path: Path, case: str) -> None:
    doc, needle = RECIPE_CASES[case]
    p = tmp_path / "r.yaml"
    if isinstance(doc, bytes):
        p.write_bytes(doc)
    else:
        _write(tmp_path, doc)
    (tmp_path / "d.jsonl").write_text('{"input": "a", "output": "b"}\n' * 30)
    res = cli("run", str(p), "--out", str(tmp_path / "run"))
    _one_line_exit_2(res, needle)
    assert not (tmp_path / "run" / "manifest.json").exists()  # nothing recorded as done
    assert "hunter2" not in res.stderr + res.stdout  # a credential is never echoed


def test_truncated_and_corrupted_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "t.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (tmp_path / "garbage.pth").write_bytes(b"\x80\x04not a real pickle")
    for name, needle in (("t.safetensors", "t.safetensors: unreadable or truncated checkpoint"),
                         ("garbage.pth", "garbage.pth: refused to load (only tensors are allowed")):
        r = tiny_recipe()
        r["teacher"]["checkpoint"] = name
        res = cli("run", str(_write(tmp_path, r)), "--out", str(tmp_path / "run"))
        _one_line_exit_2(res, needle)


@pytest.mark.parametrize("suffix,runtime,needle", [
    (".onnx", "onnxruntime", "onnxruntime cannot load it"),
    (".tflite", "litert", ""),
    (".gguf", "llama.cpp", "llama.cpp cannot load it"),
    (".safetensors", "torch", "unreadable or truncated safetensors file"),
])
def test_truncated_artifacts_are_named(tmp_path: Path, suffix: str, runtime: str, needle: str) -> None:
    """Every runtime adapter turns a torn artifact into one error naming the file (the bench row shows it)."""
    from edgedistill.runtimes import open_session
    from edgedistill.runtimes.base import RuntimeError_

    f = tmp_path / f"model{suffix}"
    f.write_bytes(b"\x08\x01\x12\x04junk" * 8)
    with pytest.raises(RuntimeError_) as err:
        open_session(runtime, f)
    assert str(f) in str(err.value) and needle in str(err.value)


def test_hf_folder_with_a_torn_shard(tmp_path: Path) -> None:
    """A teacher folder whose weight shard is cut short: one line naming the folder, exit 2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "teacher"
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(folder)
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:2000])
    from edgedistill.toolchain.llm.models import ModelError, load_causal_lm

    with pytest.raises(ModelError, match=f"{folder}: cannot load the checkpoint"):
        load_causal_lm(folder)


def test_tokenizer_larger_than_the_embedding(tmp_path: Path) -> None:
    """``export --hf`` on a folder whose tokenizer has more tokens than the model has embedding rows: one line
    naming both sizes and the folder, exit 2, before the parity check would index past the last row."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from edgedistill.toolchain.llm.tokenizer import train_bpe

    folder = tmp_path / "model"
    tok = train_bpe(["The court held that the contract was void."] * 50, 300, folder)
    tok.add_tokens(["<extra-token>"])  # added tokens count: they have ids too
    tok.save_pretrained(str(folder))
    cfg = LlamaConfig(vocab_size=len(tok) - 1, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(str(folder), safe_serialization=True)
    res = cli("export", "--hf", str(folder), "--formats", "gguf:f32", "--out", str(tmp_path / "out"))
    _one_line_exit_2(res, str(folder), f"the tokenizer has {len(tok)} tokens (added tokens included)",
                     f"the model's embedding has {len(tok) - 1} rows")
    assert not (tmp_path / "out" / "artifacts.json").exists()


def test_changed_artifacts_are_never_measured(tmp_path: Path) -> None:
    """bench on a run whose exported file was replaced (an empty file): one line naming it and the fix."""
    from edgedistill.toolchain.rundir import RunDir

    run = RunDir(tmp_path / "run")
    art = run.path("export", "student-fp32.onnx")
    art.write_bytes(b"a real model")
    run.record("export", "h", [art])
    (run.root / "recipe.yaml").write_text(yaml.safe_dump(tiny_recipe()))
    art.write_bytes(b"")
    res = cli("bench", "--out", str(run.root))
    _one_line_exit_2(res, "export/student-fp32.onnx (changed: sha256 differs from the manifest)",
                     "edgedistill export --out")


def test_empty_data(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    res = cli("run", str(_write(tmp_path, tiny_recipe(data={"kind": "imagefolder", "root": "imgs"}))),
              "--out", str(tmp_path / "run"))
    _one_line_exit_2(res, str(tmp_path / "imgs"))
    (tmp_path / "empty.jsonl").write_text("\n")
    res = cli("run", str(_write(tmp_path, {**LLM, "data": {"kind": "jsonl", "path": "empty.jsonl"}})),
              "--out", str(tmp_path / "run2"))
    _one_line_exit_2(res, "empty.jsonl: no examples")


def test_agent_refuses_eval_files_it_cannot_trust(tmp_path: Path) -> None:
    from edgedistill.devices.agent import main

    ev = tmp_path / "eval.npz"
    np.savez(ev, x=np.zeros((1, 3, 4, 4), dtype=np.float32))  # no labels
    assert main(["--artifact", str(tmp_path / "missing.onnx"), "--eval", str(ev)]) == 1


class _Endpoint(BaseHTTPRequestHandler):
    """A misbehaving OpenAI-compatible endpoint; the path prefix picks the misbehaviour."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        mode = self.path.split("/")[1]
        if mode == "slow":
            time.sleep(2)
        if mode == "error":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        body = {"junk": b"{not json", "empty": json.dumps({"id": "x", "object": "text_completion", "created": 0,
                                                           "model": "m", "choices": [{"index": 0, "text": "  ",
                                                                                      "finish_reason": "stop"}]}
                                                          ).encode()}.get(mode, b"{}")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def bad_endpoint() -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Endpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("mode,reason", [("slow", "APITimeoutError"), ("error", "InternalServerError"),
                                         ("junk", "JSONDecodeError"), ("empty", "MalformedReply")])
def test_bad_teacher_endpoints(tmp_path: Path, bad_endpoint: str, mode: str, reason: str) -> None:
    recipe = _write(tmp_path, {**LLM, "blackbox": {"endpoint": {"timeout_s": 0.5, "max_retries": 1,
                                                                "backoff_s": 0.01}}})
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "input": "hello"}\n{"id": "b", "input": "world"}\n')
    journal = tmp_path / "j.jsonl"
    url = f"{bad_endpoint}/{mode}/v1"
    res = cli("collect", str(recipe), "--prompts", str(prompts), "--out", str(journal), "--base-url", url)
    _one_line_exit_2(res, f"{url}: 2 of 2 prompts unanswered", reason)
    from edgedistill.toolchain.llm.distill.collect import targets

    assert targets(journal) == {}  # failures are recorded, never targets


def test_bad_prompt_file(tmp_path: Path) -> None:
    recipe = _write(tmp_path, LLM)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a"}\n')
    res = cli("collect", str(recipe), "--prompts", str(prompts), "--out", str(tmp_path / "j.jsonl"),
              "--base-url", "http://127.0.0.1:9/v1")
    _one_line_exit_2(res, 'p.jsonl: line 1: expected an object with a string "input"')


# -- the recipe loader under fuzzing ------------------------------------------------------------------------------
SECTIONS = ["kind", "name", "seed", "data", "teacher", "student", "distill", "export", "bench", "gate", "tokenizer",
            "blackbox", "plan", "description"]
KEYS = SECTIONS + ["train", "epochs", "steps", "lr", "name", "kwargs", "path", "losses", "variants", "formats",
                   "temperature", "alpha", "threads", "devices", "kind", "root", "checkpoint", "score", "arch"]
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=12)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=8), c, max_size=5), max_leaves=20)
documents = st.dictionaries(st.sampled_from(SECTIONS), values, max_size=8) | st.fixed_dictionaries(
    {"kind": st.sampled_from(["vision", "llm", "nope"]), "name": st.sampled_from(["ok", "../x", ""])},
    optional={k: values for k in SECTIONS[2:]})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_document_is_a_recipe_or_one_clean_error(doc: dict) -> None:
    try:
        r = parse_recipe(doc, "fuzz.yaml")
    except RecipeError as err:
        msg = str(err)
        assert msg.startswith("fuzz.yaml: ") and "\n" not in msg, msg
    else:
        assert isinstance(r, RecipeBase) and r.kind in ("vision", "llm")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_yaml_text_is_a_recipe_or_one_clean_error(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    p = tmp_path_factory.mktemp("fuzz") / "f.yaml"
    p.write_text(text, encoding="utf-8")
    try:
        load_recipe(p)
    except RecipeError as err:
        assert str(err).startswith(f"{p}: ") and "\n" not in str(err), str(err)


def test_an_api_key_is_refused_for_plain_http_before_any_request(tmp_path: Path) -> None:
    """``collect --base-url`` overrides the recipe's (validated) URL: the key still never leaves in the clear. The
    address is unroutable, so a request would hang until timeout_s; the refusal comes at once, with no journal."""
    recipe = _write(tmp_path, {**LLM, "blackbox": {"endpoint": {"api_key_env": "EDGEDISTILL_TEST_KEY",
                                                                "timeout_s": 60, "max_retries": 0}}})
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "input": "hello"}\n')
    journal = tmp_path / "j.jsonl"
    t0 = time.monotonic()
    res = cli("collect", str(recipe), "--prompts", str(prompts), "--out", str(journal), "--base-url",
              "http://k:hunter2@203.0.113.9/v1", env={"EDGEDISTILL_TEST_KEY": "sk-test"})
    _one_line_exit_2(res, "http://REDACTED@203.0.113.9/v1 is neither https:// nor loopback",
                     "api_key_env would travel in the clear")
    assert time.monotonic() - t0 < 30 and not journal.exists()
    assert "hunter2" not in res.stderr + res.stdout


def test_teacher_server_failures_are_one_line(tmp_path: Path) -> None:
    """The local teacher server: a port someone else listens on is refused (never polled and trusted), and a
    file llama.cpp cannot load gives one line naming it and the log (both UserErrors: exit 2 in the CLI)."""
    import socket

    from edgedistill.core.errors import UserError
    from edgedistill.toolchain.llm.distill.server import start_server

    bad = tmp_path / "teacher.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(UserError) as err:
            start_server(bad, port, timeout=30)
    assert str(err.value) == f"127.0.0.1:{port}: cannot serve the teacher there (Address already in use)"
    log = tmp_path / "server.log"
    with pytest.raises(UserError) as err:
        start_server(bad, log=log, timeout=60)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: llama_cpp.server exited with code ") and str(log) in msg and "\n" not in msg


def test_a_max_length_that_cuts_every_completion(tmp_path: Path) -> None:
    """``data.max_length`` shorter than every prompt leaves no target token: one line in the data stage, not a
    zero-loss teacher and a crash in distillation."""
    recipe = _write(tmp_path, {**LLM, "data": {"kind": "legal-briefs", "n_examples": 60, "max_length": 16}})
    res = cli("run", str(recipe), "--out", str(tmp_path / "run"))
    _one_line_exit_2(res, "data.max_length: 16 tokens cut away every training completion")
    assert not (tmp_path / "run" / "teacher").exists()


def test_dropped_replies_leave_fewer_examples_than_a_batch(tmp_path: Path) -> None:
    """``blackbox.truncated: drop`` leaving fewer replies than ``blackbox.train.batch_size``: one line naming the
    policy and the counts, nothing recorded for the black-box stage."""
    from tests.test_llm_pipeline import _small_llm_recipe
    from tests.test_llm_sft import _Teacher

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)  # cuts off some replies (0 < cut < 6 for these prompts)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = _small_llm_recipe()
        r["teacher"]["train"]["steps"] = 2
        r["distill"] = {"enabled": False}
        r["blackbox"] = {"endpoint": {"base_url": f"http://127.0.0.1:{srv.server_address[1]}/v1", "max_tokens": 8},
                         "max_prompts": 6, "truncated": "drop", "train": {"steps": 1, "batch_size": 6}}
        res = cli("run", str(_write(tmp_path, r)), "--out", str(tmp_path / "run"))
    finally:
        srv.shutdown()
    _one_line_exit_2(res, "blackbox.truncated is drop and ", " of 6 replies were cut off",
                     "for blackbox.train.batch_size=6")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "teacher" in manifest["stages"] and "blackbox" not in manifest["stages"]
