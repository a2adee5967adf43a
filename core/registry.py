"""One registry type for every named thing that is looked up by name: runtimes, device transports, pipeline kinds,
LLM data generators and scorers.

In the manner of timm's registry: a decorator registers a function or class under its public name,
``names()`` lists them (with ``fnmatch`` wildcards), and a miss raises an error that lists the choices. A registry
may know its members before they are imported: ``modules`` maps a name to the module whose import registers it, so
a heavy member (a runtime's package) loads only when it is asked for, yet every known name is listed.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a name is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry(Generic[T]):
    """A name → object table for one kind of thing (e.g. ``"runtime"``); ``modules``: name → the module that
    registers it, imported on the first :meth:`get` of that name (an ``ImportError`` from it propagates)."""

    def __init__(self, kind: str, modules: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._modules = dict(modules or {})

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: register the object under ``name`` (default: its ``__name__``)."""

        def wrap(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return wrap

    def get(self, name: str) -> T:
        if name not in self._items and name in self._modules:
            importlib.import_module(self._modules[name])
        try:
            return self._items[name]
        except KeyError:
            choices = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Every known name (registered or loadable from ``modules``) matching ``pattern``."""
        return sorted(n for n in {*self._items, *self._modules} if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._modules
