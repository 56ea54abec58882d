"""The backends ``curvedit bench engine`` times side by side: torch eager (fp32; bf16 autocast on CUDA),
torch.compile, the ONNX Runtime engine and, on CUDA, the triton engine at fp32, tf32 and bf16 (and with its
column-parallel kernels at fp32 and bf16). Each is a ``Backend`` whose ``prepare(z, t)`` returns the one call to
time; an unavailable backend carries a note why.
``make_backends(..., compiled=True)`` gives the torch.compile ones only, ``compiled=False`` all the others: the
benchmark times them in two passes, the compiling ones last."""

from __future__ import annotations

import argparse
import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from curvedit.bundle import Bundle
from curvedit.engines.base import ShapePolicy
from curvedit.models.flows import InvertibleLinear


@dataclass
class Backend:
    name: str
    precision: str
    prepare: Callable[[torch.Tensor, torch.Tensor], Callable[[], object]] | None  # (z, t) → one timed call
    note: str = ""
    describe: Callable[[], str] | None = None  # after the first call: a note on what ran (e.g. the tile chosen)


def as_tensor(out) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        out = out[0]
    return torch.from_numpy(out) if isinstance(out, np.ndarray) else out.detach().float().cpu()


def _autocast(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()


def make_backends(bundle: Bundle, editor_name: str, device: str, args: argparse.Namespace,
                  compiled: bool = False) -> list[Backend]:
    """The backends this machine can run for ``editor_name`` (unavailable ones carry a note why): the
    torch.compile ones when ``compiled``, else torch eager, onnxruntime and triton."""
    # torch backends get their own copy of the bundle's CPU modules on the device.
    editor = copy.deepcopy(bundle.editors[editor_name]).to(device).eval()
    cuda = device.startswith("cuda")

    def bf16_edit(z, t):
        with _autocast(device):
            return editor.edit(z, t)

    shared = _SHARED.setdefault(id(bundle), {})  # the engines `auto` routes between, across both passes
    if compiled:
        # The mixing layer caches W⁻¹ on first use; computed inside a reduce-overhead CUDA graph, that cache would
        # be a graph output the next replay overwrites (run G2 failed so on the shipped flow): fill it eagerly.
        with torch.no_grad():
            for module in editor.modules():
                if isinstance(module, InvertibleLinear):
                    module.cached_inverse()
        backends = _compiled_backends(editor.edit, bf16_edit, cuda, args)
        if backends[0].prepare is not None and shared:
            functions = {**shared, "torch.compile": _FunctionEngine(backends[0].prepare)}
            backends.append(_auto_backend(bundle, editor_name, device, "auto[+compile]", functions))
        return backends
    backends = [Backend("torch", "fp32", lambda z, t: lambda: editor.edit(z, t))]
    if cuda:
        backends.append(Backend("torch", "bf16-autocast", lambda z, t: lambda: bf16_edit(z, t)))
    onnx_backend, onnx_engine = _onnx_backend(bundle, editor_name, device, args.quick, args.threads)
    triton = _triton_backends(bundle, editor_name, device)
    if onnx_engine is not None:
        shared["onnxruntime"] = onnx_engine
    shared["torch"] = _FunctionEngine(backends[0].prepare)
    if triton and triton[0].prepare is not None:
        shared["triton"] = _FunctionEngine(triton[0].prepare)
    return [*backends, onnx_backend, _auto_backend(bundle, editor_name, device, "auto", dict(shared)), *triton]


_SHARED: dict[int, dict[str, object]] = {}  # id(bundle) → the candidate engines of the auto rows


class _FunctionEngine:
    """A timed backend's own call, ``prepare(z, t)`` on device tensors, as an engine the auto router can use
    (NumPy in and out, as every engine)."""

    shape_policy = ShapePolicy()

    def __init__(self, prepare):
        self.prepare = prepare

    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        return as_tensor(self.prepare(torch.from_numpy(z), torch.from_numpy(amounts))()).numpy()

    def fallbacks(self) -> dict[str, str]:
        return {}


def _auto_backend(bundle: Bundle, editor_name: str, device: str, label: str, engines: dict) -> Backend:
    """The auto engine over ``engines``, calibrated at each batch size (outside the timing) before its row."""
    from curvedit.engines.auto_engine import AutoEngine

    if device.startswith("cuda"):  # the router hands NumPy to every candidate: device tensors are not its API
        return Backend(label, "fp32", None, "CPU only in this benchmark (the server's auto engine runs on CUDA)")
    engine = AutoEngine(bundle, device, next(iter(engines)), list(engines), lambda name, _: engines[name])
    operation = f"edit:{editor_name}"

    def prepare(z, t):
        z_np, t_np = z.cpu().numpy(), t.cpu().numpy()
        engine.calibrate([len(z_np)], [operation])
        return lambda: engine.edit(editor_name, z_np, t_np)

    def describe() -> str:
        routes = [r for r in engine.routes() if r.operation == operation]
        return f"routed to {routes[-1].backend}" if routes else ""

    return Backend(label, "fp32", prepare, f"routes between {', '.join(engines)}", describe)


def _compiled_backends(edit, bf16_edit, cuda: bool, args: argparse.Namespace) -> list[Backend]:
    mode = args.compile_mode or ("reduce-overhead" if cuda else "default")
    if args.quick and not args.compile:
        return [Backend("torch.compile", "fp32", None, "skipped in --quick (compiling takes minutes)")]
    torch._dynamo.reset()
    compiled = torch.compile(edit, mode=mode)
    compiled_bf16 = torch.compile(bf16_edit, mode=mode) if cuda else None

    def call(function):
        def run(z, t):
            if cuda:  # each timed call is a new step for the CUDA-graph trees of reduce-overhead
                torch.compiler.cudagraph_mark_step_begin()
            return function(z, t)
        return lambda z, t: lambda: run(z, t)

    backends = [Backend(f"torch.compile[{mode}]", "fp32", call(compiled))]
    if cuda:
        backends.append(Backend(f"torch.compile[{mode}]", "bf16-autocast", call(compiled_bf16)))
    return backends


def _onnx_backend(bundle: Bundle, editor_name: str, device: str, quick: bool,
                  threads: int | None) -> tuple[Backend, object]:
    from curvedit.engines.onnx_engine import SMALL_BATCH_ROWS, OnnxEngine, OrtOptions, cuda_provider_usable

    if device.startswith("cuda") and not cuda_provider_usable():
        return Backend("onnxruntime", "fp32", None, "no CUDAExecutionProvider in this onnxruntime build"), None
    # The dynamo exporter's graph (what `curvedit export` writes) has ~30% fewer nodes than the TorchScript
    # one the engine builds in memory for bundles that ship no graphs; --quick takes the faster export.
    exporter = "torchscript" if quick else "dynamo"
    engine = OnnxEngine(bundle, device, options=OrtOptions(threads=threads), exporter=exporter)
    keys = sorted({engine.edit_key(editor_name, batch) for batch in (1, SMALL_BATCH_ROWS)})
    failed = [key for key in keys if engine.session(key) is None]
    if failed:
        return Backend("onnxruntime", "fp32", None, f"graph failed export/verification: {', '.join(failed)}"), None
    note = f"{exporter} graphs" + (f"; batch-major below {SMALL_BATCH_ROWS} rows" if device == "cpu" else "")

    def prepare(z, t):  # the engine's own call: graph choice by batch size, CPU chunking
        z_np, t_np = z.cpu().numpy(), t.cpu().numpy()
        return lambda: engine.edit(editor_name, z_np, t_np)

    return Backend("onnxruntime", "fp32", prepare, note), engine


def _triton_backends(bundle: Bundle, editor_name: str, device: str) -> list[Backend]:
    if not device.startswith("cuda"):
        return [Backend("triton", "-", None, "CUDA only (the CPU interpreter is not a benchmark)")]
    try:
        from curvedit.engines.triton_engine import TritonEngine, triton_available
        from curvedit.kernels.coupling import tuned_config_name
        from curvedit.kernels.edit import _edit_kernel
    except ImportError as exc:
        return [Backend("triton", "-", None, f"not importable: {exc}")]
    if not triton_available(device):
        return [Backend("triton", "-", None, "triton_available() is False on this device")]
    from curvedit.engines.triton_engine import MAX_BUCKET
    from curvedit.kernels.configs import column_config_for

    # (label, precision, CUDA graphs, column-parallel kernels for every bucket)
    variants = [("triton[cuda-graphs]", "fp32", True, False), ("triton[cuda-graphs]", "tf32", True, False),
                ("triton[cuda-graphs]", "bf16", True, False), ("triton", "bf16", False, False),
                ("triton-columns[cuda-graphs]", "fp32", True, True),
                ("triton-columns[cuda-graphs]", "bf16", True, True)]
    backends = []
    for label, precision, graphs, columns in variants:
        try:
            engine = TritonEngine(bundle, device=device, precision=precision, use_cuda_graphs=graphs,
                                  column_buckets_up_to=MAX_BUCKET if columns else 0)
        except Exception as exc:  # report and keep benchmarking the other precisions
            backends.append(Backend(label, precision, None, f"{type(exc).__name__}: {exc}"))
            continue
        if columns:
            describe = lambda p=precision: f"tile {column_config_for(p).name}"  # noqa: E731
        else:
            describe = lambda p=precision: f"tile {tuned_config_name(_edit_kernel, p) or '?'}"  # noqa: E731
        backends.append(Backend(label, precision, lambda z, t, e=engine: lambda: e.edit_tensor(editor_name, z, t),
                                describe=describe))
    return backends
