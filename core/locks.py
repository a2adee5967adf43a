"""One home for machine-wide file locks (the qemu rootfs, llama.cpp builds, the converter, model caches).

``locked(path)`` is an exclusive ``flock`` that is **re-entrant within a process**: a second ``flock`` on a new open
file of the same path blocks forever, even in the process that already holds it, so nested callers (a set-up step
that calls a helper which also guards the folder) share the one lock instead. The holder writes its PID into the
lock file; a waiter that waits past ``warn_after_s`` says which process holds the lock, and one that waits past
``timeout_s`` raises :class:`LockTimeout` naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from edgedistill.core.errors import UserError

#: seconds before a waiter says who holds the lock, and before it gives up (a llama.cpp build takes minutes)
WARN_AFTER_S = 30.0
TIMEOUT_S = 3 * 3600.0


class LockTimeout(UserError, TimeoutError):
    """Another process held a machine-wide lock for longer than the bound; the message names it."""


class _Held:
    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.count = 0
        self.file: IO[str] | None = None


_registry: dict[str, _Held] = {}
_registry_guard = threading.Lock()


def _entry(path: Path) -> _Held:
    key = os.path.realpath(path)
    with _registry_guard:
        return _registry.setdefault(key, _Held())


def holder(path: Path) -> str:
    """``pid N (command line)`` of the process that last took ``path``, or ``unknown`` (best effort)."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return "an unknown process"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "no longer running"
    return f"pid {pid} ({cmd[:160]})"


def _acquire(f: IO[str], path: Path, warn_after_s: float, timeout_s: float, log: Callable[[str], None]) -> None:
    start = time.monotonic()
    next_warn = warn_after_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waited = time.monotonic() - start
        if waited >= timeout_s:
            raise LockTimeout(f"{path}: still locked by {holder(path)} after {waited:.0f} s; if that process is "
                              f"gone or stuck, stop it (the lock is released when it exits)")
        if waited >= next_warn:
            log(f"waiting for {path} (held by {holder(path)}, {waited:.0f} s so far)")
            next_warn = waited + max(warn_after_s, 60.0)
        time.sleep(0.2)


@contextlib.contextmanager
def locked(path: Path, *, warn_after_s: float = WARN_AFTER_S, timeout_s: float = TIMEOUT_S,
           log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the exclusive machine-wide lock ``path`` (created if needed); re-entrant within this process."""
    entry = _entry(path)
    with entry.rlock:  # threads of this process queue here; the owning thread re-enters
        if entry.count == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+")  # noqa: SIM115 - held across the with-body, closed below
            try:
                _acquire(f, path, warn_after_s, timeout_s, log or (lambda m: print(m, file=sys.stderr)))
            except BaseException:
                f.close()
                raise
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            entry.file = f
        entry.count += 1
        try:
            yield
        finally:
            entry.count -= 1
            if entry.count == 0 and entry.file is not None:
                fcntl.flock(entry.file, fcntl.LOCK_UN)
                entry.file.close()
                entry.file = None
