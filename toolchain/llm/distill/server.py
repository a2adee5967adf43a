"""Serve a GGUF with llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (the black-box teacher endpoint)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, port: int, alias: str = "teacher", n_ctx: int = 512, threads: int = 2,
                 log: Path | None = None, timeout: float = 120.0) -> subprocess.Popen:
    """Start ``python -m llama_cpp.server`` and wait until ``/v1/models`` answers; the caller stops it."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads)]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{model}: llama_cpp.server exited with code {proc.returncode} (see {log})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{model}: llama_cpp.server did not answer on port {port} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, kill: bool = False) -> None:
    (proc.kill if kill else proc.terminate)()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serving(model: Path, **kw: object) -> Iterator[str]:
    """``with serving(gguf) as base_url:`` — an OpenAI base URL (``http://127.0.0.1:P/v1``) while inside."""
    port = free_port()
    proc = start_server(model, port, **kw)  # type: ignore[arg-type]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_server(proc)
