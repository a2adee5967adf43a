"""Inference runtimes behind one small interface: open a file, run inputs, describe yourself.

Adapters import only numpy and their own runtime package (lazily), so the benchmark agent that uses them can run
on a board with nothing else installed. ``open_session("onnxruntime", path, threads=1)`` is the entry point.
"""

from edgedistill.runtimes.base import RUNTIMES, Session, open_session, runtime_for

__all__ = ["RUNTIMES", "Session", "open_session", "runtime_for"]
