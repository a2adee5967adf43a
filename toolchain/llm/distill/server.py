"""Serve a GGUF with llama-cpp-python's OpenAI-compatible server on 127.0.0.1 (the black-box teacher endpoint).

No port race: this process binds and listens on the port first and hands the listening socket to the server
(``uvicorn.Server.run(sockets=...)``, the way a gunicorn worker receives its socket), so from the moment the port
is chosen nothing else on the machine can take it, and whatever answers on it is our child. (Choosing a free port,
closing it and passing its number leaves a window in which another local process can bind it and answer as the
teacher.) The server runs with a minimal environment (no API keys) and dies with this process
(:func:`~edgedistill.core.procs.dies_with_us`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgedistill.core.errors import UserError
from edgedistill.core.procs import dies_with_us

#: the server process: argv = listening fd, model, alias, n_ctx, threads
_SERVE = (
    "import socket, sys, uvicorn\n"
    "from llama_cpp.server.app import create_app\n"
    "from llama_cpp.server.settings import ModelSettings, ServerSettings\n"
    "fd, model, alias, n_ctx, threads = sys.argv[1:6]\n"
    "app = create_app(server_settings=ServerSettings(), model_settings=[ModelSettings(\n"
    "    model=model, model_alias=alias, n_ctx=int(n_ctx), n_threads=int(threads))])\n"
    "uvicorn.Server(uvicorn.Config(app, log_level='info')).run(sockets=[socket.socket(fileno=int(fd))])\n"
)

#: what the server may see of our environment (never API keys or a user's PYTHONPATH)
_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "OMP_NUM_THREADS")


class ServerError(UserError):
    """The local teacher server could not be started; the message names the model, the port and the log."""


@dataclass
class Server:
    """A running ``llama_cpp.server`` child and the port it owns."""

    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def free_port() -> int:
    """A port free right now (for tools that only take a number, e.g. ``accelerate``'s rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; never a port someone listens on
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as err:
        sock.close()
        raise ServerError(f"127.0.0.1:{port}: cannot serve the teacher there ({err.strerror})") from None
    sock.listen(64)
    return sock


def start_server(model: Path, port: int = 0, alias: str = "teacher", n_ctx: int = 512, threads: int = 2,
                 log: Path | None = None, timeout: float = 120.0) -> Server:
    """Serve ``model`` on ``127.0.0.1:port`` (0: any free port) and wait until ``/v1/models`` answers; the caller
    stops it with :func:`stop_server`."""
    sock = _listen(port)
    port = int(sock.getsockname()[1])
    cmd = dies_with_us([sys.executable, "-c", _SERVE, str(sock.fileno()), str(model), alias, str(n_ctx),
                        str(threads)])
    env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ} | {"PYTHONSAFEPATH": "1"}  # no cwd modules
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),), env=env)
    finally:
        sock.close()  # the child holds the port now; if it dies, connections are refused, never hijacked
        if log:
            out.close()
    server = Server(proc, port)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{model}: llama_cpp.server exited with code {proc.returncode}"
                              f"{f' (its log: {log})' if log else ''}")
        try:
            with urllib.request.urlopen(f"{server.url}/models", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    stop_server(server, kill=True)
    raise ServerError(f"{model}: llama_cpp.server did not answer on 127.0.0.1:{port} within {timeout:.0f} s"
                      f"{f' (its log: {log})' if log else ''}")


def stop_server(server: Server, kill: bool = False) -> None:
    proc = server.proc
    (proc.kill if kill else proc.terminate)()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serving(model: Path, **kw: object) -> Iterator[str]:
    """``with serving(gguf) as base_url:`` — an OpenAI base URL (``http://127.0.0.1:P/v1``) while inside."""
    server = start_server(model, **kw)  # type: ignore[arg-type]
    try:
        yield server.url
    finally:
        stop_server(server)
