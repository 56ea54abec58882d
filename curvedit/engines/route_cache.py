"""What a server's warm-up learns, kept across starts: the auto engine's route (backend) per operation and bucket.

Calibrating the shipped models' backends at every batch bucket is most of a cold ``curvedit serve`` (``curvedit
bench start`` measures both). The result depends only on the bundle, the machine and the
software, so it is stored under a key of exactly those: the bundle's digest; the CPU model, the cores this
process may use and the accelerator; the versions of curvedit, torch, onnxruntime and triton; the engine's
candidates and options; the operations and buckets. Any change gives another key, and a start with it
calibrates afresh. Files are JSON, one per key, written atomically (a half-written file is never read as a
result); a file that cannot be read or does not match its key is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from importlib import metadata
from pathlib import Path

from curvedit.models.files import atomic_write

log = logging.getLogger(__name__)
PACKAGES = ("curvedit", "torch", "onnxruntime", "onnxruntime-gpu", "triton")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str | None = None) -> dict:
    """What the timings depend on in the hardware: CPU model, usable cores, and the accelerator if used."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    found = {"machine": platform.machine(), "cpu": _cpu_model(), "cores": cores}
    if device is not None and device.startswith("cuda"):
        import torch

        found["accelerator"] = torch.cuda.get_device_name(torch.device(device))
    return found


def versions() -> dict:
    """The installed versions of the packages the backends are."""
    found = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


class RouteCache:
    """Routes by key, in ``directory`` (created on first write)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def _file(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.directory / f"routes-{digest}.json"

    def load(self, key: dict) -> list[list] | None:
        """The routes stored under ``key`` (``[[operation, bucket, backend, seconds], ...]``), or ``None``."""
        file = self._file(key)
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable route cache %s (%s); calibrating again", file, exc)
            return None
        if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("routes"), list):
            return None
        return data["routes"]

    def save(self, key: dict, routes: list[list]) -> None:
        """Store ``routes`` under ``key``; a cache that cannot be written is logged, never fatal."""
        file = self._file(key)
        text = json.dumps({"key": key, "routes": routes}, indent=1) + "\n"
        try:
            atomic_write(file, lambda tmp: Path(tmp).write_text(text))
        except OSError as exc:
            log.warning("cannot write the route cache %s (%s); the next start calibrates again", file, exc)
