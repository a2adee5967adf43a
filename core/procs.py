"""Child processes that die with the run: a killed, interrupted or crashed ``edgedistill`` leaves no teacher
server, agent or converter behind holding memory and ports.

On Linux a child is started through a tiny trampoline that asks the kernel (``prctl(PR_SET_PDEATHSIG)``) to send it
SIGTERM when the process that started it dies, for any reason, SIGKILL included, and then ``exec``\\ s the real
command (the setting survives ``exec``). SIGTERM rather than SIGKILL lets a launcher (``accelerate launch``) pass it
on to its own workers. A trampoline rather than a ``preexec_fn``: a ``preexec_fn`` runs between ``fork`` and
``exec`` inside this multi-threaded (torch) process, where it can deadlock. Elsewhere the command runs unchanged.
"""

from __future__ import annotations

import os
import sys

#: argv: parent pid, then the command. Exits 1 at once when the parent died before the request was made.
_TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0) != 0:\n"  # 1 = PR_SET_PDEATHSIG
    "    sys.exit(f'prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}')\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def dies_with_us(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so that the kernel sends it SIGTERM when this process dies (Linux); unchanged elsewhere.

    Start the result from a thread that outlives the child (the kernel watches the thread that forked).
    """
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, str(os.getpid()), *cmd]
