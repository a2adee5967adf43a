"""Device transports: where the agent runs, behind one interface and one registry.

A *device spec* names a transport and a profile in one string (``edgedistill bench --devices ...``):

==========================  ==========================================================  ===========
spec                        what runs                                                   label
==========================  ==========================================================  ===========
``host``                    the agent in a fresh local process                          measured
``rpi4-constrained``        the same, capped to the profile's cores and RAM             constrained
``rpi4-constrained?cores=1`` any profile spec with its cores / ``ram_mb`` overridden       (as above)
``rpi4-estimated``          no run: a roofline from the ONNX graph and the profile      estimated
``qemu-arm64[:rpi4]``       the agent under aarch64 user-mode emulation                 emulated
``qemu-x86_64[:x86-avx2]``  the host's agent on an emulated x86 core (AVX2, no VNNI)    emulated
``ssh://user@host[:port]``  the agent on a board over SSH (``?profile=rpi4&key=...``)   measured
``adb[://SERIAL]``          the agent on an Android phone over adb (untested)           measured
==========================  ==========================================================  ===========

Every transport returns the agent's JSON document with a ``device`` block added (spec, transport, label,
profile and whatever caps were applied), so each figure says how it was obtained.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from edgedistill.core.registry import Registry
from edgedistill.devices.local import AgentError, AgentJob
from edgedistill.devices.profile import DeviceProfile, get_profile


class Label(StrEnum):
    """How a figure was obtained: ``measured`` on real hardware, ``constrained`` on this host under the profile's
    core/memory caps, ``emulated`` under qemu (correct outputs, not a device's time), ``estimated`` from a roofline."""

    MEASURED = "measured"
    CONSTRAINED = "constrained"
    EMULATED = "emulated"
    ESTIMATED = "estimated"


@dataclass(frozen=True)
class Device:
    """A parsed device spec: which transport, which profile, and transport options (host, key, serial...)."""

    spec: str
    transport: str
    profile: DeviceProfile
    options: dict[str, str] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """A file-name-safe form of the spec (for per-device result folders)."""
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.spec).strip("_")


class Transport(ABC):
    """Moves files to a device and starts the agent there; subclasses register in :data:`TRANSPORTS`."""

    label: ClassVar[Label] = Label.MEASURED
    #: (warmup, runs) ceilings for this transport, e.g. emulation is hundreds of times slower
    max_runs: ClassVar[tuple[int, int] | None] = None

    def __init__(self, device: Device) -> None:
        self.device = device

    def threads(self, spec: list[int | str]) -> list[int]:
        """Thread counts to measure: ``"all"`` means the profile's cores."""
        out: list[int] = []
        for t in spec:
            n = self.device.profile.cores if t == "all" else int(t)
            if n not in out:
                out.append(n)
        return out

    def prepare(self) -> None:  # noqa: B027 (an optional hook)
        """Check the device is usable (reachable, set up); raise :class:`AgentError` with the fix otherwise."""

    @abstractmethod
    def run(self, job: AgentJob, timeout_s: float = 600) -> dict[str, Any]:
        """Run one agent job; returns the agent's document (see :meth:`annotate`)."""

    def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections and temporary files."""

    def describe(self) -> dict[str, Any]:
        return {"spec": self.device.spec, "transport": self.device.transport, "label": str(self.label),
                "profile": self.device.profile.name}

    def annotate(self, doc: dict[str, Any], **extra: Any) -> dict[str, Any]:
        doc["device"] = {**self.describe(), **extra}
        return doc


#: transport name -> module that registers it (imported on first use: ssh/adb clients load only when needed)
TRANSPORTS: Registry[type[Transport]] = Registry("device transport", modules={
    "local": "edgedistill.devices.constrained", "constrained": "edgedistill.devices.constrained",
    "estimated": "edgedistill.devices.estimate", "qemu-arm64": "edgedistill.devices.qemu",
    "qemu-x86_64": "edgedistill.devices.qemu_x86", "ssh": "edgedistill.devices.ssh", "adb": "edgedistill.devices.adb"})


def parse_device(spec: str, profile_paths: list[Path] | None = None) -> Device:
    """Turn a device spec (table above) into a :class:`Device`; unknown forms raise ``ValueError`` naming them."""
    s = spec.strip()
    if s in ("host", "local"):
        return Device(s, "local", get_profile("host", profile_paths))
    if "://" in s or s == "adb":
        u = urlsplit(s if s != "adb" else "adb://")
        opts = dict(parse_qsl(u.query))
        prof = get_profile(opts.pop("profile", "snapdragon8gen3" if u.scheme == "adb" else "rpi4"), profile_paths)
        if u.scheme == "ssh":
            if not u.hostname:
                raise ValueError(f"{spec}: no host; write ssh://user@host[:port]")
            for part, value in (("host", u.hostname), ("user", u.username or "")):
                if value.startswith("-") or any(c.isspace() or c in "'\"`$;|&<>" for c in value):
                    raise ValueError(f"{spec}: the {part} {value!r} is not a plain {part} name")
            opts.update(host=u.hostname, port=str(u.port or 22), user=u.username or "")
        elif u.scheme == "adb":
            opts.update(serial=u.netloc)
        else:
            raise ValueError(f"{spec}: unknown device scheme {u.scheme!r}; use ssh:// or adb://")
        return Device(s, u.scheme, prof, opts)
    base, _, query = s.partition("?")
    for emulator, default in (("qemu-arm64", "rpi4"), ("qemu-x86_64", "x86-avx2")):
        if base == emulator or base.startswith(f"{emulator}:"):
            name = base.partition(":")[2] or default
            return Device(s, emulator, _override(get_profile(name, profile_paths), query, spec))
    for suffix in ("constrained", "estimated"):
        if base.endswith(f"-{suffix}"):
            prof = get_profile(base.removesuffix(f"-{suffix}"), profile_paths)
            return Device(s, suffix, _override(prof, query, spec))
    raise ValueError(f"{spec}: not a device spec; use host, PROFILE-constrained, PROFILE-estimated, qemu-arm64, "
                     "qemu-x86_64, ssh://user@host or adb (see `edgedistill devices`)")


def _override(profile: DeviceProfile, query: str, spec: str) -> DeviceProfile:
    """``?cores=1&ram_mb=512`` after a profile spec: the same profile with those caps (e.g. a 1-core budget)."""
    if not query:
        return profile
    upd: dict[str, int] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in ("cores", "ram_mb") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"{spec}: '{key}={value}' is not an override; use cores=N and/or ram_mb=N (N ≥ 1)")
        upd[key] = int(value)
    suffix = ",".join(f"{k}={v}" for k, v in upd.items())
    return profile.model_copy(update={**upd, "name": f"{profile.name}[{suffix}]"})


def open_transport(device: Device) -> Transport:
    return TRANSPORTS.get(device.transport)(device)


__all__ = ["AgentError", "AgentJob", "Device", "Label", "TRANSPORTS", "Transport", "open_transport", "parse_device"]
