"""Black-box collection against a real llama-cpp-python server on 127.0.0.1 (killed mid-run, then resumed) and
against a local junk server (malformed replies are failures, never targets; 5xx is retried)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgedistill.toolchain.llm.distill.collect import Prompt, collect, read_journal, targets
from edgedistill.toolchain.llm.distill.server import free_port, start_server, stop_server
from edgedistill.toolchain.llm.export.gguf import convert
from edgedistill.toolchain.llm.recipe import EndpointConfig
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)


def _prompts(tiny_lm: TinyLM, n: int) -> list[Prompt]:  # noqa: F811
    return [Prompt(e.id, e.prompt) for e in (tiny_lm.test + tiny_lm.train_examples)[:n]]


def test_collect_resumes_after_server_killed(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    gguf = convert(tiny_lm.dir, tmp_path / "teacher-f32.gguf", "f32")
    port, journal = free_port(), tmp_path / "collected.jsonl"
    prompts = _prompts(tiny_lm, 14)
    cfg = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", max_tokens=16, concurrency=2, max_retries=1,
                         backoff_s=0.05, timeout_s=20)
    server = start_server(gguf, port, log=tmp_path / "server.log")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(first=collect(prompts, journal, cfg)))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while len(read_journal(journal)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop_server(server, kill=True)  # SIGKILL mid-run
    worker.join(timeout=120)
    first = result["first"]
    assert 3 <= first.ok < len(prompts) and first.failed > 0, first
    assert "APIConnectionError" in first.errors
    with open(journal, "ab") as f:  # a collector killed mid-write leaves a torn line
        f.write(b'{"id": "torn-li')
    server = start_server(gguf, port, log=tmp_path / "server.log")
    try:
        second = collect(prompts, journal, cfg)
    finally:
        stop_server(server)
    assert second.skipped == first.ok and second.ok == len(prompts) - first.ok and second.failed == 0
    recs = read_journal(journal)
    ok_ids = Counter(r["id"] for r in recs if r["status"] == "ok")
    assert set(ok_ids) == {p.id for p in prompts} and max(ok_ids.values()) == 1  # nothing lost, nothing twice
    assert all(r["output"].strip() for r in recs if r["status"] == "ok")
    assert not journal.read_bytes().count(b"torn-li")


class _Junk(BaseHTTPRequestHandler):
    calls: Counter = Counter()

    def log_message(self, *a: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["prompt"]
        _Junk.calls[prompt] += 1
        if prompt == "FLAKY" and _Junk.calls[prompt] == 1:
            return self._send(503, b'{"error": "busy"}', "application/json")
        if prompt == "JUNK":
            return self._send(200, b"<html>not json at all", "text/html")
        text = {"EMPTY": "   ", "OK": "a real summary", "FLAKY": "after a retry"}.get(prompt, "x")
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        doc = {"id": "c", "object": "text_completion", "created": 0, "model": "m", "choices": [choice]}
        if prompt == "NOCHOICE":
            doc["choices"] = []
        self._send(200, json.dumps(doc).encode(), "application/json")

    def _send(self, code: int, payload: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def junk_url():  # type: ignore[no-untyped-def]
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Junk)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_junk_replies_are_failures_not_targets(junk_url: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-secret-value")
    cfg = EndpointConfig(max_tokens=8, concurrency=3, max_retries=2, backoff_s=0.01, api_key_env="MY_TEACHER_KEY")
    journal = tmp_path / "c.jsonl"
    prompts = [Prompt(p.lower(), p) for p in ("OK", "EMPTY", "JUNK", "NOCHOICE", "FLAKY")]
    stats = collect(prompts, journal, cfg, base_url=junk_url)
    assert targets(journal) == {"ok": "a real summary", "flaky": "after a retry"}
    assert stats.ok == 2 and stats.failed == 3 and stats.retries >= 1
    status = {r["id"]: r["status"] for r in read_journal(journal)}
    assert status == {"ok": "ok", "empty": "failed", "junk": "failed", "nochoice": "failed", "flaky": "ok"}
    assert b"sk-secret-value" not in journal.read_bytes()  # the key is never written
    monkeypatch.delenv("MY_TEACHER_KEY")
    with pytest.raises(ValueError, match="MY_TEACHER_KEY is not set"):
        collect(prompts, journal, cfg, base_url=junk_url)
