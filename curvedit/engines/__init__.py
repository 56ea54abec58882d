"""Engines compute a bundle's edits and images; ``make_engine`` picks one by name.

- ``torch``: the bundle's PyTorch modules, run eagerly (the reference).
- ``onnxruntime``: ONNX graphs in ONNX Runtime (CPU provider; CUDA provider when a GPU and onnxruntime-gpu are
  present). Uses the bundle's exported graphs, or exports them in memory on first use; see ``onnx_engine``.
- ``triton``: fused Triton coupling-layer kernels (CUDA; on a CPU only under ``TRITON_INTERPRET=1``, slowly).
- ``auto``: routes each operation and batch bucket to the backend measured fastest there (``auto_engine``);
  until it is measured (the server does it at warm-up), everything runs on its default: triton on a CUDA device
  when Triton works there, else onnxruntime (with its CUDA provider on a GPU if usable, else torch on that GPU);
  on the CPU, onnxruntime, or torch if ONNX Runtime is not installed.
"""

from __future__ import annotations

import importlib.util

import torch

from curvedit.bundle import Bundle
from curvedit.engines.base import Engine

ENGINE_NAMES = ("auto", "torch", "onnxruntime", "triton")


def check_device(device: str | None) -> str | None:
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a valid device; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested, but torch sees no CUDA GPU here; use device='cpu'")
    return device


def _triton_works(device: str) -> bool:
    if importlib.util.find_spec("curvedit.engines.triton_engine") is None:
        return False
    try:
        from curvedit.engines.triton_engine import triton_available
    except ImportError:
        return False
    return bool(triton_available(device))


def resolve_engine(engine: str = "auto", device: str | None = None) -> str:
    """The concrete engine name ``engine`` stands for on ``device`` (``auto`` resolved as documented above)."""
    if engine not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {list(ENGINE_NAMES)}")
    if engine != "auto":
        return engine
    on_cuda = device.startswith("cuda") if device is not None else torch.cuda.is_available()
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    if on_cuda:
        if _triton_works(device or "cuda"):
            return "triton"
        from curvedit.engines.onnx_engine import cuda_provider_usable

        return "onnxruntime" if has_ort and cuda_provider_usable() else "torch"
    return "onnxruntime" if has_ort else "torch"


def make_engine(bundle: Bundle, engine: str = "auto", device: str | None = None,
                options: dict | None = None) -> Engine:
    """Build the engine named ``engine`` for ``bundle`` on ``device`` (``None`` = a GPU if one is usable).

    ``options`` go to the chosen backend only: ``OrtOptions`` fields for onnxruntime (``threads``,
    ``spinning``, ``optimization``), ``precision`` / ``use_cuda_graphs`` / ``column_buckets_up_to`` for triton;
    torch takes none. For ``auto`` they go to its default backend, and ``candidates`` (a list of backend names,
    ``torch.compile`` among them) replaces the backends it measures.
    """
    device = check_device(device)
    options = dict(options or {})
    if engine == "auto":
        from curvedit.engines.auto_engine import AutoEngine

        candidates = options.pop("candidates", None)
        default = resolve_engine(engine, device)
        return AutoEngine(bundle, device or ("cuda" if torch.cuda.is_available() else "cpu"), default,
                          candidates, lambda name, opts: _backend(bundle, name, device, opts), options)
    return _backend(bundle, resolve_engine(engine, device), device, options)


def _backend(bundle: Bundle, name: str, device: str | None, options: dict) -> Engine:
    if name in ("torch", "torch.compile"):
        from curvedit.engines.torch_engine import CompiledTorchEngine, TorchEngine

        _no_options(name, options)
        kind = TorchEngine if name == "torch" else CompiledTorchEngine
        return kind(bundle, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if name == "onnxruntime":
        from curvedit.engines.onnx_engine import OnnxEngine, OrtOptions

        try:
            ort_options = OrtOptions(**options)
        except TypeError as exc:
            raise ValueError(f"bad onnxruntime engine options {options}: {exc}") from None
        return OnnxEngine(bundle, device, ort_options)  # device None: the CUDA provider if usable, else the CPU
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not _triton_works(device):
        raise ValueError(f"the triton engine cannot run on {device!r} here: it needs a CUDA GPU, or "
                         "TRITON_INTERPRET=1 set before start-up for the (slow) CPU interpreter; "
                         "use engine='onnxruntime' or 'torch'")
    from curvedit.engines.triton_engine import TritonEngine

    # One CUDA graph per batch bucket: at small batches a replay costs far less than launching the kernels.
    unknown = set(options) - {"precision", "use_cuda_graphs", "column_buckets_up_to"}
    if unknown:
        raise ValueError("the triton engine takes options precision, use_cuda_graphs and column_buckets_up_to, "
                         f"not {sorted(unknown)}")
    return TritonEngine(bundle, device=device, **{"use_cuda_graphs": device.startswith("cuda"), **options})


def _no_options(name: str, options: dict) -> None:
    if options:
        raise ValueError(f"the {name} engine takes no options, got {sorted(options)}")


__all__ = ["ENGINE_NAMES", "Engine", "check_device", "make_engine", "resolve_engine"]
