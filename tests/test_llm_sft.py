"""Black-box SFT of a student on collected (prompt, completion) pairs: TRL's objective on the one training loop."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
import yaml
from rich.console import Console

from edgedistill.toolchain.llm.distill.sft import train_sft
from edgedistill.toolchain.llm.models import build_llama
from edgedistill.toolchain.llm.recipe import LlamaArch, LMTrainConfig
from edgedistill.toolchain.llm.tokenizer import encode
from tests.llm_fixtures import TinyLM, tiny_lm  # noqa: F401  (session fixture)

TINY_STUDENT = LlamaArch(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256)


def test_sft_is_trls_objective_on_the_one_loop(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """TRL's SFTTrainer, given the same prompt–completion pairs, builds exactly our sequences and completion mask;
    our loop then trains on them (and checkpoints like every other stage)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer


    tok = tiny_lm.tok
    pairs = [(e.prompt, e.completion) for e in tiny_lm.train_examples[:32]]
    arch = LlamaArch(hidden_size=256, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256)
    student = build_llama(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    trl = SFTTrainer(model=student, processing_class=tok,
                     train_dataset=Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs]),
                     args=SFTConfig(output_dir=str(tmp_path / "trl"), max_length=192, completion_only_loss=True,
                                    use_cpu=True, report_to=[], save_strategy="no"))
    for row, (p, c) in zip(trl.train_dataset, pairs, strict=True):
        ours = encode(tok, p, c, 192)
        assert row["input_ids"] == ours.input_ids
        assert row["labels"] == ours.labels  # -100 on the prompt, the tokens on completion + EOS
    before = [q.detach().clone() for q in student.parameters()]
    res = train_sft(student, tok, pairs, LMTrainConfig(steps=4, batch_size=4, lr=2e-3, warmup_steps=1,
                                                       checkpoint_every=2), tmp_path / "sft.pt", seed=0, max_length=192)
    assert res.steps == 4 and res.history[-1]["loss"] > 0 and (tmp_path / "sft.pt").is_file()
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


class _Teacher(BaseHTTPRequestHandler):
    """A paid endpoint stand-in: counts requests per prompt; a prompt whose text hashes odd is cut off at
    max_tokens (``finish_reason: length``)."""

    asked: Counter = Counter()

    def log_message(self, *a: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"]
        _Teacher.asked[prompt] += 1
        cut = hashlib.sha256(prompt.encode()).digest()[0] % 2 == 1
        choice = {"index": 0, "text": f" summary of {len(prompt)} chars", "logprobs": None,
                  "finish_reason": "length" if cut else "stop"}
        body = json.dumps({"id": "c", "object": "text_completion", "created": 0, "model": "m",
                           "choices": [choice]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _blackbox(recipe: dict, tmp_path: Path, run: Path) -> tuple[dict, str]:
    """Run the data, teacher and blackbox stages of ``recipe`` into ``run`` (as `edgedistill run` does)."""
    from edgedistill.toolchain.pipeline import pipeline_of, run_stages, save_recipe
    from edgedistill.toolchain.recipe import load_recipe
    from edgedistill.toolchain.rundir import RunDir

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = load_recipe(str(path))
    log = io.StringIO()
    ctx = pipeline_of(r).context(r, RunDir(run), Console(file=log, width=200), False)
    save_recipe(r, ctx.run)
    run_stages(ctx, ("data", "teacher", "blackbox"))
    return json.loads((run / "students" / "sft.json").read_text()), log.getvalue()


def test_paid_replies_are_asked_once_truncations_counted_and_credentials_never_written(tmp_path: Path) -> None:
    """Against a counting endpoint whose URL carries credentials: changing the SFT learning rate, max_prompts or
    the truncation policy asks nothing again (the journal answers by source and prompt text); more prompts ask
    only the new ones; cut-off replies are counted and, with ``truncated: drop``, left out; the credentials are in
    no file of the run and no log line."""
    from tests.test_llm_pipeline import _small_llm_recipe

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Teacher)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Teacher.asked.clear()
    try:
        r = _small_llm_recipe()
        r["teacher"]["train"]["steps"] = 2
        r["blackbox"] = {"endpoint": {"base_url": f"http://me:hunter2@127.0.0.1:{srv.server_address[1]}/v1",
                                      "max_tokens": 8, "concurrency": 2},
                         "max_prompts": 6, "train": {"steps": 1, "batch_size": 1, "warmup_steps": 0}}
        run = tmp_path / "run"
        first, log1 = _blackbox(r, tmp_path, run)
        assert sum(_Teacher.asked.values()) == 6 and set(_Teacher.asked.values()) == {1}
        cut = sum(hashlib.sha256(p.encode()).digest()[0] % 2 for p in _Teacher.asked)
        assert 0 < cut < 6, "the planted endpoint should cut some replies, not all"  # fixed data: deterministic
        assert (first["collected"], first["truncated"], first["trained_on"]) == (6, cut, 6)
        assert first["truncated_policy"] == "no_eos"
        r["blackbox"]["train"]["lr"] = 1e-3
        r["blackbox"]["max_prompts"] = 4
        r["blackbox"]["truncated"] = "drop"
        second, log2 = _blackbox(r, tmp_path, run)
        assert sum(_Teacher.asked.values()) == 6  # nothing asked again
        assert second["collected"] == 4 and second["trained_on"] == 4 - second["truncated"]
        r["blackbox"]["max_prompts"] = 8
        _blackbox(r, tmp_path, run)
        assert sum(_Teacher.asked.values()) == 8 and set(_Teacher.asked.values()) == {1}  # only the 2 new ones
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["stages"]["blackbox"]["info"]["truncated"] >= 0
        assert "REDACTED@127.0.0.1" in (run / "recipe.yaml").read_text()
        assert "REDACTED@127.0.0.1" in first["endpoint"]
    finally:
        srv.shutdown()
    leaks = [str(f) for f in run.rglob("*") if f.is_file() and b"hunter2" in f.read_bytes()]
    assert not leaks and "hunter2" not in log1 + log2, leaks


def test_a_cut_off_reply_teaches_no_end_of_sequence(tiny_lm: TinyLM, tmp_path: Path) -> None:  # noqa: F811
    """``no_eos``: the same pairs, marked cut off, train on the text only (the EOS label is masked), so the loss
    of the very same first step differs; unmarked, it is the plain SFT loss."""
    tok = tiny_lm.tok
    pairs = [(e.prompt, e.completion[:40]) for e in tiny_lm.train_examples[:4]]
    cfg = LMTrainConfig(steps=1, batch_size=4, lr=2e-3, warmup_steps=0)
    losses = {}
    for cut in (None, [False] * 4, [True] * 4):
        torch.manual_seed(0)
        student = build_llama(TINY_STUDENT, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        res = train_sft(student, tok, pairs, cfg, tmp_path / f"{cut}.pt", seed=0, max_length=192, no_eos=cut)
        losses[str(cut)] = res.history[0]["loss"]
    assert losses["None"] == losses[str([False] * 4)] != losses[str([True] * 4)], losses
