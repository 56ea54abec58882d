"""Engines compute a bundle's edits and images; ``make_engine`` picks one by name."""

from __future__ import annotations

from curvedit.bundle import Bundle
from curvedit.engines.base import Engine

ENGINE_NAMES = ("auto", "torch")


def make_engine(bundle: Bundle, engine: str = "auto", device: str | None = None) -> Engine:
    """Build the engine named ``engine`` for ``bundle``; ``auto`` picks the fastest one available here."""
    if engine not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINE_NAMES)}")
    from curvedit.engines.torch_engine import TorchEngine

    return TorchEngine(bundle, device or "cpu")


__all__ = ["ENGINE_NAMES", "Engine", "make_engine"]
