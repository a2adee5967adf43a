"""Atomic writes and content hashes: every file the toolchain produces goes through here."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, rename it over ``path`` and fsync the folder
    (atomic and durable on POSIX: a crash leaves the old file or the new one, never a torn one).

    The temp name keeps the suffix so writers that look at extensions (``.onnx``, ``.safetensors``) work, and
    carries the writer's PID (``.STEM.PID-RANDOM.tmpSUFFIX``) so that :func:`clear_dead_temps` can remove what a
    killed writer left. On error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}-", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes it 0600; give it the mode a plain open() would (umask applied)
            os.chmod(tmp_path, 0o666 & ~_umask())
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_TEMP = re.compile(r"\..+\.(\d+)-[^.]+\.tmp(\.[^.]+)?")


def clear_dead_temps(root: Path) -> list[Path]:
    """Remove the temporary files under ``root`` that :func:`atomic_path` writers left when they were killed
    mid-write (their PID is gone); a live writer's file stays. Returns what was removed."""
    gone = []
    for p in Path(root).rglob(".*.tmp*"):
        m = _TEMP.fullmatch(p.name)
        if m and p.is_file() and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; a no-op where the OS refuses (e.g. some folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class atomic_dir:  # noqa: N801 (a context manager, like atomic_path)
    """``with atomic_dir(folder) as tmp:`` write a folder's files into ``tmp``; on success every file and the
    folder are fsynced and ``tmp`` takes the place of ``folder`` without ``folder`` ever being missing: Linux
    swaps the two in one step (``renameat2(RENAME_EXCHANGE)``), then the old contents are removed. Where the
    exchange is unavailable the old folder is renamed aside first (missing for one rename). On error ``tmp`` is
    removed and ``folder`` is untouched.

    Leftovers of a process killed mid-write (``.NAME.tmp-PID`` and ``.NAME.old-PID`` of dead processes) are
    cleared on the next use; a folder that was left renamed aside is put back first.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp = self._sibling("tmp", os.getpid())
        self.old = self._sibling("old", os.getpid())

    def _sibling(self, kind: str, pid: int) -> Path:
        return self.path.with_name(f".{self.path.name}.{kind}-{pid}")

    def _clear_stale(self) -> None:
        for kind in ("old", "tmp"):  # "old" first: a folder renamed aside before the crash is restored
            for p in self.path.parent.glob(f".{self.path.name}.{kind}-*"):
                pid = p.name.rpartition("-")[2]
                if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                    continue  # another live process is writing it
                if kind == "old" and not self.path.exists():
                    os.replace(p, self.path)
                else:
                    shutil.rmtree(p, ignore_errors=True)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        for p in sorted(self.tmp.rglob("*"), reverse=True):  # files, then their folders
            _fsync(p)
        _fsync(self.tmp)
        if not self.path.exists():
            os.replace(self.tmp, self.path)
        elif _exchange(self.tmp, self.path):
            shutil.rmtree(self.tmp)  # now holds the old contents
        else:
            os.replace(self.path, self.old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(self.old)
        _fsync(self.path.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # this file system or kernel cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | os.PathLike[str]) -> str:
    """Content hash of a file, or of a folder: every regular file in it (recursively, by relative path), so a
    sharded checkpoint's every shard and index count. Hidden temporary files (``.name.tmp*``) are skipped."""
    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    return sha256_json({str(f.relative_to(p)): sha256_file(f) for f in files})


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-able object (sorted keys), used as a config hash."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()
