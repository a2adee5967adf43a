"""Black-box collection: send prompts to any OpenAI-compatible endpoint and keep the replies as SFT targets.

* bounded concurrency (a thread pool of ``concurrency`` workers);
* retries with exponential backoff (``backoff_s · 2^attempt``, jittered) on timeouts, connection errors, 429, 5xx;
* an append-only JSONL journal: one line per finished prompt, written with a single ``write`` and fsynced, keyed
  by the prompt id, a hash of the prompt's text and the *source* (the endpoint, model, API, template and sampling
  settings, or the served file's hash). A re-run skips prompts that already have an ``ok`` line from the same
  source and text and repairs a torn last line, so a kill at any moment loses nothing and duplicates nothing;
  replies from another endpoint, model or template are never taken as this run's targets;
* empty or malformed replies are recorded as ``failed`` (with the reason), never as targets;
* the API key is read from the environment variable the recipe names, is never written anywhere, and goes only to
  ``https://`` or loopback URLs (:mod:`edgedistill.core.urls`); credentials inside the URL are redacted in
  everything written, and take no part in the source (a new key keeps the replies already paid for);
* a reply cut off at ``max_tokens`` (``finish_reason: length``) is kept with its reason: the stage counts them and
  ``blackbox.truncated`` decides how they train.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgedistill.core.fileio import sha256_json
from edgedistill.core.urls import has_credentials, is_redacted, redact_text, redact_url, secret_may_go_to
from edgedistill.toolchain.llm.recipe import EndpointConfig


class MalformedReply(ValueError):
    """The endpoint answered, but with nothing usable as a training target."""


class CollectError(ValueError):
    """Collection left prompts unanswered; the message names the endpoint, the reasons and the journal."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass
class CollectStats:
    total: int
    skipped: int = 0
    ok: int = 0
    failed: int = 0
    retries: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)


def read_prompts(path: Path) -> list[Prompt]:
    """``{"id": ..., "input": ...}`` lines (``"prompt"`` or ``"text"`` also name the text; ``id`` defaults to the
    line number); a bad line is one error naming the file and line."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise CollectError(f"{path}: cannot read prompts ({err})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CollectError(f"{path}: line {n}: not JSON ({err.msg})") from None
        text = next((row.get(k) for k in ("input", "prompt", "text") if isinstance(row, dict)
                     and isinstance(row.get(k), str)), None)
        if text is None:
            raise CollectError(f'{path}: line {n}: expected an object with a string "input" (or "prompt"/"text")')
        out.append(Prompt(str(row.get("id", f"line-{n:06d}")), text))
    if not out:
        raise CollectError(f"{path}: no prompts")
    return out


def failure_summary(stats: CollectStats, url: str, journal: Path) -> str:
    """One line: how many prompts failed at ``url`` and why (the journal has each one's reason)."""
    reasons = ", ".join(f"{k} ×{v}" for k, v in sorted(stats.errors.items(), key=lambda kv: -kv[1]))
    return (f"{redact_url(url)}: {stats.failed} of {stats.total} prompts unanswered "
            f"({reasons or 'no reason recorded'}); {journal} records each reason; re-run to ask only those again")


class Journal:
    """The append-only JSONL file: ``{"id", "status": "ok"|"failed", "output"|"error", "attempts", ...}``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _repair(self) -> None:
        """Cut a torn last line (a kill during a write) so the file is whole lines only."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every whole, parseable line of a journal (a torn or garbled line is skipped)."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "id" in rec:
            out.append(rec)
    return out


def source_id(cfg: EndpointConfig, base_url: str | None = None, served: str | None = None) -> str:
    """What produced a reply: ``served`` (e.g. the served GGUF's sha256) or the endpoint's URL, plus the model,
    API, template and sampling settings. Never the API key."""
    url = base_url or cfg.base_url
    return sha256_json({"served": served, "url": None if served or not url else redact_url(url), "model": cfg.model,
                        "api": cfg.api, "template": cfg.prompt_template, "max_tokens": cfg.max_tokens,
                        "temperature": cfg.temperature})[:24]


def prompt_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def replies(path: Path, source: str | None = None, prompts: Iterable[Prompt] | None = None) -> dict[str, dict]:
    """Prompt id → its journal record, from ``ok`` lines only (first one wins). With ``source``, only replies from
    that source; with ``prompts``, only replies to exactly those prompt texts."""
    texts = {p.id: prompt_sha(p.text) for p in prompts} if prompts is not None else None
    out: dict[str, dict] = {}
    for rec in read_journal(path):
        if rec.get("status") != "ok" or rec["id"] in out or (source is not None and rec.get("source") != source):
            continue
        if texts is not None and texts.get(rec["id"]) != rec.get("prompt_sha"):
            continue
        out[rec["id"]] = rec
    return out


def targets(path: Path, source: str | None = None, prompts: Iterable[Prompt] | None = None) -> dict[str, str]:
    """Prompt id → collected output (see :func:`replies`)."""
    return {k: rec["output"] for k, rec in replies(path, source, prompts).items()}


def check_destination(cfg: EndpointConfig, url: str) -> None:
    """Refuse, before any request, to send a secret where it could be read on the way: an API key or credentials
    in the URL go only to ``https://`` or loopback; a URL whose credentials were redacted cannot be used."""
    shown = redact_url(url)
    if is_redacted(url):
        raise CollectError(f"blackbox.endpoint.base_url: {shown} has redacted credentials (a run directory's "
                           "recipe.yaml keeps none); run again from your own recipe")
    secret = "api_key_env" if cfg.api_key_env else "the credentials in base_url" if has_credentials(url) else None
    if secret and not secret_may_go_to(url):
        raise CollectError(f"blackbox.endpoint.base_url: {shown} is neither https:// nor loopback; {secret} would "
                           "travel in the clear, so nothing was sent")


def _client(cfg: EndpointConfig, base_url: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    check_destination(cfg, base_url)
    key = "not-needed"
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise ValueError(f"blackbox.endpoint.api_key_env: environment variable {cfg.api_key_env} is not set")
    return OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=cfg.timeout_s)


def _ask(client, cfg: EndpointConfig, prompt: str) -> tuple[str, str | None]:  # type: ignore[no-untyped-def]
    """One request; returns ``(text, finish_reason)`` or raises :class:`MalformedReply`."""
    text_in = cfg.prompt_template.format(prompt=prompt)
    if cfg.api == "chat":
        resp = client.chat.completions.create(model=cfg.model, messages=[{"role": "user", "content": text_in}],
                                              max_tokens=cfg.max_tokens, temperature=cfg.temperature)
    else:
        resp = client.completions.create(model=cfg.model, prompt=text_in, max_tokens=cfg.max_tokens,
                                         temperature=cfg.temperature)
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise MalformedReply(f"no choices in reply ({type(resp).__name__})")
    c = choices[0]
    text = c.message.content if cfg.api == "chat" and getattr(c, "message", None) else getattr(c, "text", None)
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply("empty reply")
    return text, getattr(c, "finish_reason", None)


def _retryable(err: Exception) -> bool:
    import openai

    if isinstance(err, openai.APITimeoutError | openai.APIConnectionError | openai.RateLimitError):
        return True
    return isinstance(err, openai.APIStatusError) and err.status_code >= 500


def _one(client, cfg: EndpointConfig, p: Prompt, journal: Journal, stats: CollectStats,  # type: ignore[no-untyped-def]
         lock: threading.Lock, source: str) -> None:
    attempt = 0
    while True:
        attempt += 1
        try:
            text, finish = _ask(client, cfg, p.text)
            rec: dict[str, Any] = {"id": p.id, "status": "ok", "output": text, "finish_reason": finish,
                                   "attempts": attempt}
            break
        except Exception as err:  # noqa: BLE001 - classified below; every outcome is journalled
            retry = not isinstance(err, MalformedReply) and _retryable(err)
            if retry and attempt <= cfg.max_retries:
                with lock:
                    stats.retries += 1
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random() / 2))
                continue
            reason = type(err).__name__
            rec = {"id": p.id, "status": "failed", "error": f"{reason}: {redact_text(str(err))[:200]}",
                   "attempts": attempt}
            with lock:
                stats.errors[reason] = stats.errors.get(reason, 0) + 1
            break
    journal.append({**rec, "source": source, "prompt_sha": prompt_sha(p.text)})
    with lock:
        setattr(stats, rec["status"], getattr(stats, rec["status"]) + 1)


def collect(prompts: Iterable[Prompt], out: Path, cfg: EndpointConfig, base_url: str | None = None,
            served: str | None = None) -> CollectStats:
    """Ask the endpoint for every prompt without an ``ok`` line from the same source in ``out`` yet; failed ones are
    asked again. ``served`` identifies a locally served model (its file hash) whose URL changes between runs."""
    url = base_url or cfg.base_url
    if not url:
        raise ValueError("blackbox.endpoint.base_url: not set (null means the pipeline serves the teacher itself)")
    prompts = list(prompts)
    if len({p.id for p in prompts}) != len(prompts):
        raise ValueError("collect: prompt ids must be unique")
    source = source_id(cfg, url, served)
    done = set(targets(out, source, prompts))
    todo = [p for p in prompts if p.id not in done]
    stats = CollectStats(total=len(prompts), skipped=len(prompts) - len(todo))
    client, journal, lock, t0 = _client(cfg, url), Journal(out), threading.Lock(), time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
            for f in [pool.submit(_one, client, cfg, p, journal, stats, lock, source) for p in todo]:
                f.result()
    finally:
        journal.close()
    stats.seconds = time.perf_counter() - t0
    return stats
