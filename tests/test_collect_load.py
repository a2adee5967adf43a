"""`collect` under load: 500 prompts at concurrency 16 against the real llama.cpp server on 127.0.0.1, killed and
restarted twice during the run; every prompt is answered exactly once. And replies from another source (endpoint,
model, template) in the same journal are never taken as targets."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from edgedistill.toolchain.llm.distill.collect import Prompt, collect, read_journal, source_id, targets
from edgedistill.toolchain.llm.distill.server import free_port, start_server, stop_server
from edgedistill.toolchain.llm.recipe import EndpointConfig
from edgedistill.toolchain.llm.tasks.legal_briefs import generate_legal_briefs
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)

N_PROMPTS, CONCURRENCY = 500, 16


@pytest.fixture(scope="module")
def teacher_gguf(tiny_lm: TinyLM, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    from edgedistill.toolchain.llm.export import gguf

    out = tmp_path_factory.mktemp("load") / "teacher-f32.gguf"
    return gguf.convert(tiny_lm.dir, out, "f32")


def _answerable(tiny: TinyLM, n: int) -> list[Prompt]:
    """``n`` brief prompts whose greedy 4-token reply from the tiny teacher is not blank (2 of 500 were whitespace
    then EOS): an empty reply is rightly a failure, never a target, and this test is about the transport, not
    about a 40-step model's manners."""
    from edgedistill.runtimes.torch_lm import TorchLMSession
    from edgedistill.toolchain.llm.tokenizer import encode

    sess, out = TorchLMSession(tiny.dir), []
    for e in generate_legal_briefs(2 * n, 11):
        ids = encode(tiny.tok, e.prompt, None, 160).input_ids
        new, _ = sess.generate(ids, 4, tiny.tok.eos_token_id)
        if tiny.tok.decode(new, skip_special_tokens=True).strip():
            out.append(Prompt(e.id, e.prompt))
        if len(out) == n:
            return out
    raise AssertionError(f"only {len(out)} answerable prompts")


@pytest.mark.slow
def test_500_prompts_at_concurrency_16_through_two_server_restarts(teacher_gguf: Path, tiny_lm: TinyLM,  # noqa: F811
                                                                   tmp_path: Path) -> None:
    prompts = _answerable(tiny_lm, N_PROMPTS)
    port, journal, log = free_port(), tmp_path / "collected.jsonl", tmp_path / "server.log"
    cfg = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", max_tokens=4, concurrency=CONCURRENCY,
                         max_retries=8, backoff_s=0.2, timeout_s=60)
    server = start_server(teacher_gguf, port, log=log)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(stats=collect(prompts, journal, cfg)))
    worker.start()
    restarts = 0
    try:
        for at in (N_PROMPTS * 3 // 10, N_PROMPTS * 6 // 10):  # kill -9 and restart at 30% and 60% done
            deadline = time.monotonic() + 300
            while sum(r["status"] == "ok" for r in read_journal(journal)) < at:
                assert worker.is_alive() and time.monotonic() < deadline, "collection stalled"
                time.sleep(0.05)
            stop_server(server, kill=True)
            server = start_server(teacher_gguf, port, log=log)
            restarts += 1
        worker.join(timeout=600)
    finally:
        stop_server(server)
    stats = result["stats"]
    assert restarts == 2 and stats.retries > 0, stats  # the restarts really cut requests off mid-flight
    failed = [r for r in read_journal(journal) if r["status"] != "ok"]
    assert stats.ok == N_PROMPTS and stats.failed == 0, (stats, failed)
    recs = read_journal(journal)
    answered = Counter(r["id"] for r in recs if r["status"] == "ok")
    assert len(answered) == N_PROMPTS and set(answered.values()) == {1}  # each exactly once, none lost
    assert set(targets(journal, source_id(cfg), prompts)) == {p.id for p in prompts}


def test_replies_from_another_source_are_not_targets(tmp_path: Path) -> None:
    """One journal, two sources: the targets of a run are the replies of its own endpoint/model/template only."""
    import json

    journal = tmp_path / "j.jsonl"
    a = EndpointConfig(base_url="http://127.0.0.1:1/v1", model="teacher")
    b = a.model_copy(update={"model": "other-teacher"})
    c = a.model_copy(update={"prompt_template": "Q: {prompt}"})
    p = Prompt("x", "a prompt")
    from edgedistill.toolchain.llm.distill.collect import prompt_sha

    rows = [{"id": "x", "status": "ok", "output": "from b", "source": source_id(b), "prompt_sha": prompt_sha(p.text)},
            {"id": "x", "status": "ok", "output": "old text", "source": source_id(a), "prompt_sha": prompt_sha("old")},
            {"id": "x", "status": "ok", "output": "from a", "source": source_id(a), "prompt_sha": prompt_sha(p.text)}]
    journal.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert targets(journal, source_id(a), [p]) == {"x": "from a"}
    assert targets(journal, source_id(b), [p]) == {"x": "from b"}
    assert targets(journal, source_id(c), [p]) == {}
    assert len({source_id(a), source_id(b), source_id(c), source_id(a, served="sha")}) == 4
