"""Machine-wide set-up from nothing: the lock helper and the qemu rootfs build as a fresh machine runs them.

A fresh machine once never finished ``make test``: the rootfs build held its lock and a helper took the same lock
again on a second open file, which blocks forever even in one process. These tests run that control flow from an
empty cache root in every suite; only the two downloads (debootstrap's and pip's) and the emulated import check are
stood in for. ``dpkg-deb`` unpacks a real ``.deb`` built here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgedistill.core import locks
from edgedistill.core.paths import QEMU_ENV, qemu_root
from edgedistill.devices import qemu


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    done = threading.Event()

    def nested() -> None:
        with locks.locked(lock), locks.locked(lock), locks.locked(tmp_path / "." / "x.lock"):
            done.set()

    t = threading.Thread(target=nested, daemon=True)
    t.start()
    t.join(10)
    assert done.is_set(), "a nested lock on one path blocked"
    assert lock.read_text().split()[0] == str(__import__("os").getpid())


def test_a_lock_held_elsewhere_names_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "y.lock"
    code = ("import sys, time; from pathlib import Path; from edgedistill.core import locks\n"
            f"with locks.locked(Path({str(lock)!r})):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        said: list[str] = []
        with pytest.raises(locks.LockTimeout, match=rf"still locked by pid {proc.pid} \("), \
                locks.locked(lock, warn_after_s=0.3, timeout_s=1.0, log=said.append):
            pass
        assert said and f"pid {proc.pid}" in said[0]
    finally:
        proc.kill()
        proc.wait()
    with locks.locked(lock, timeout_s=5):  # released when its holder died
        pass


def _tiny_deb(into: Path) -> Path:
    pkg = into / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text("Package: edtest\nVersion: 1\nArchitecture: arm64\nMaintainer: t <t@t>\n"
                                        "Description: test\n")
    (pkg / "usr/bin").mkdir(parents=True)
    (pkg / "usr/bin/python3.11").write_text("not really python\n")
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(into / "edtest_1_arm64.deb")], check=True,
                   capture_output=True)
    return into / "edtest_1_arm64.deb"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb absent (not a Debian host)")
def test_rootfs_setup_from_an_empty_cache_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(QEMU_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(qemu, "missing_tools", lambda: [])
    monkeypatch.setattr(qemu.os, "geteuid", lambda: 0)
    deb = _tiny_deb(tmp_path)
    real_run = qemu._run
    calls: list[str] = []

    def run(cmd: list[str], what: str, log: object, **kw: object) -> None:
        calls.append(Path(cmd[0]).name if "pip" not in cmd else "pip")
        if "debootstrap" in cmd[0]:  # the download: an archive folder holding one real .deb
            archives = Path(cmd[-2]) / "var/cache/apt/archives"
            archives.mkdir(parents=True)
            shutil.copy(deb, archives)
        elif "pip" in cmd:  # the download: the aarch64 wheels' target folder
            Path(cmd[cmd.index("--target") + 1], "numpy").mkdir(parents=True)
        else:
            real_run(cmd, what, log, **kw)

    monkeypatch.setattr(qemu, "_run", run)
    monkeypatch.setattr(qemu, "_smoke", lambda: {"machine": "aarch64", "python": "3.11", "onnxruntime": "stub"})
    monkeypatch.setattr(qemu, "_setup_llama", lambda log: {})
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(qemu.setup(log=lambda _m: None)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "qemu-arm64 set-up from an empty cache did not finish (a lock taken twice?)"
    assert calls == ["debootstrap", "dpkg-deb", "pip"]
    root = qemu.rootfs_dir()
    assert (root / "usr/bin/python3.11").is_file() and (root / qemu.SITE.lstrip("/") / "numpy").is_dir()
    assert "Cortex" in (root / "proc/cpuinfo").read_text() or "0xd08" in (root / "proc/cpuinfo").read_text()
    assert json.loads((qemu_root() / "ready.json").read_text())["machine"] == "aarch64"
    assert not (qemu_root() / "rootfs.partial").exists() and not list(root.glob("var/cache/apt/archives/*"))
    assert result["machine"] == "aarch64"
    # and a second call reuses the cache without building anything
    calls.clear()
    qemu.setup(log=lambda _m: None)
    assert calls == []
