"""Export a bundle's modules to ONNX, check every graph with ONNX Runtime, and write only the ones that pass.

Each graph is exported at batch ``EXPORT_BATCH`` with a dynamic batch axis, then run by ONNX Runtime (CPU) at
batch sizes ``VERIFY_BATCHES`` (all different from the export batch, so a shape frozen at export shows up) and
compared with the eager module: float outputs within ``|onnx - eager| <= ATOL + RTOL·|eager|``, uint8 images
within one grey level (a float that lands within ~1e-6 of a rounding boundary may round the other way). A graph
that fails is not written, and an older copy of it is removed from the bundle and its manifest.

Two exporters: ``dynamo`` (``torch.export``; cleaner graphs, the default for ``curvedit export``) and
``torchscript`` (the legacy tracer; ~10× faster to export, used for graphs built in memory when a bundle ships
none). Files are self-contained (``external_data=False``): weights live inside the ``.onnx``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from curvedit.bundle import Bundle, add_file, copy_bundle, load_bundle, read_manifest, remove_file
from curvedit.export import EXPORTERS
from curvedit.export.external_weights import externalize, inline, outputs_equal, weight_files_of
from curvedit.export.graphs import GraphSpec, bundle_specs, is_fresh
from curvedit.models.bundle_files import read_verified
from curvedit.models.files import atomic_write

log = logging.getLogger("curvedit.export")

OPSET = 18
EXPORT_BATCH = 2
VERIFY_BATCHES = (1, 5)
RTOL, ATOL = 1e-4, 1e-5
UINT8_ATOL = 1


class ExportError(ValueError):
    """A graph could not be exported, or its ONNX Runtime output disagrees with eager PyTorch."""


@dataclass
class ExportedGraph:
    spec: GraphSpec
    data: bytes
    opset: int
    exporter: str
    check: dict = field(default_factory=dict)

    def entry(self) -> dict:
        return self.spec.entry(self.opset, self.exporter, self.check)


@contextlib.contextmanager
def _quiet():
    """The exporters warn a lot (deprecation, torchvision ops not installed); verification decides instead."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


# torch.onnx keeps its export state in globals ("GLOBALS.in_onnx_export must be False" when two threads export at
# once, and one of them then falls back to PyTorch): a server warming one model in the background while a request
# builds another's session would export concurrently. One export at a time, process-wide.
_EXPORTING = threading.Lock()


def _export_bytes(spec: GraphSpec, exporter: str) -> bytes:
    with _EXPORTING:
        return _export_bytes_alone(spec, exporter)


def _export_bytes_alone(spec: GraphSpec, exporter: str) -> bytes:
    inputs = spec.example_inputs(EXPORT_BATCH)
    names_in = [p.name for p in spec.inputs]
    names_out = [p.name for p in spec.outputs]
    with _quiet(), torch.no_grad():
        if exporter == "torchscript":
            buffer = io.BytesIO()
            axes = {name: {0: "batch"} for name in names_in + names_out}
            torch.onnx.export(spec.module, inputs, buffer, dynamo=False, input_names=names_in,
                              output_names=names_out, dynamic_axes=axes, opset_version=OPSET)
            return buffer.getvalue()
        batch = torch.export.Dim("batch")
        program = torch.onnx.export(spec.module, inputs, None, dynamo=True, input_names=names_in,
                                    output_names=names_out, dynamic_shapes=tuple({0: batch} for _ in inputs),
                                    opset_version=OPSET, external_data=False, verbose=False)
        model = program.model_proto
    # The dynamo exporter annotates every node with source paths and FX dumps: drop them (size, privacy).
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    return model.SerializeToString()


def _opset(model: onnx.ModelProto) -> int:
    return max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))


def export_graph(spec: GraphSpec, exporter: str = "dynamo") -> tuple[bytes, int]:
    """Export ``spec`` to a self-contained ONNX model; returns ``(serialized model, opset)``."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {list(EXPORTERS)}")
    try:
        data = _export_bytes(spec, exporter)
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as exc:  # exporters raise many types; each becomes one reason line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"{spec.filename}: {exporter} export failed: {type(exc).__name__}: {first}") from exc
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise ExportError(f"{spec.filename}: weights {external[:3]} were written as external data")
    return data, _opset(model)


def cpu_session(data: bytes):
    """An ONNX Runtime CPU session for ``data`` that logs errors only."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def reference(spec: GraphSpec, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
    """The eager PyTorch output the graph must reproduce."""
    with torch.inference_mode():
        return spec.eager(*inputs).numpy()


def verify_graph(spec: GraphSpec, data: bytes, batches: tuple[int, ...] = VERIFY_BATCHES) -> dict:
    """Run ``data`` in ONNX Runtime at each of ``batches`` and compare with eager; raise ``ExportError`` on a
    mismatch. Returns ``{"batches": [...], "max_abs_err": ..., "rtol": ..., "atol": ...}``."""
    if EXPORT_BATCH in batches:
        raise ValueError(f"verify at batch sizes other than the export batch {EXPORT_BATCH}, got {batches}")
    try:
        session = cpu_session(data)
    except Exception as exc:  # ORT raises its own exception types
        raise ExportError(f"{spec.filename}: ONNX Runtime cannot load the graph: {exc}") from exc
    worst = 0.0
    for seed, batch in enumerate(batches, start=1):
        inputs = spec.example_inputs(batch, seed=seed)
        expected = reference(spec, inputs)
        feed = {port.name: x.numpy() for port, x in zip(spec.inputs, inputs, strict=True)}
        try:
            actual = session.run(None, feed)[0]
        except Exception as exc:  # e.g. a batch axis frozen at export: "invalid dimensions for input"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"{spec.filename}: ONNX Runtime fails at batch {batch}: {first}") from exc
        if actual.shape != expected.shape or actual.dtype != expected.dtype:
            raise ExportError(f"{spec.filename}: at batch {batch} ONNX Runtime gives {actual.dtype} "
                              f"{list(actual.shape)}, eager gives {expected.dtype} {list(expected.shape)}")
        if expected.dtype == np.uint8:
            err = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
            bad = err > UINT8_ATOL
        else:
            err = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            bad = ~(err <= ATOL + RTOL * np.abs(expected))  # also catches NaN
        worst = max(worst, float(np.nanmax(err)) if err.size else 0.0)
        if bad.any():
            raise ExportError(f"{spec.filename}: ONNX Runtime disagrees with eager PyTorch at batch {batch} "
                              f"(max |err| {float(np.nanmax(err)):.3g}, {int(bad.sum())} of {bad.size} values out "
                              f"of tolerance rtol={RTOL:g} atol={ATOL:g})")
    return {"batches": list(batches), "max_abs_err": worst, "rtol": RTOL, "atol": ATOL}


def build_graph(spec: GraphSpec, exporter: str = "dynamo") -> ExportedGraph:
    """Export and verify one graph (in memory); raises ``ExportError`` if either step fails."""
    data, opset = export_graph(spec, exporter)
    check = verify_graph(spec, data)
    return ExportedGraph(spec, data, opset, exporter, check)


@dataclass
class GraphResult:
    """What ``export_bundle`` did with one graph: written (with its size) or skipped (with the reason)."""

    filename: str
    written: bool
    reason: str = ""
    size: int = 0
    opset: int | None = None
    max_abs_err: float | None = None


def _target(bundle_path: Path, out: str | Path | None) -> Path:
    if out is None:
        return bundle_path
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty directory; pass a new directory")
    load_bundle(bundle_path)  # refuse a broken source before copying anything
    return copy_bundle(bundle_path, out)


def _feed(spec: GraphSpec) -> dict:
    return {port.name: x.numpy() for port, x in zip(spec.inputs, spec.example_inputs(3, seed=7), strict=True)}


def stored_form(path: Path, spec: GraphSpec, data: bytes,
                verify: bool = False) -> tuple[bytes, list[str], dict | None]:
    """The graph as a bundle stores it: weights the bundle's safetensors hold become references into them
    (``export.external_weights``). Raises ``ExportError`` unless ONNX Runtime then gives bit-identical outputs, or
    — where a weight now goes through the bundle's float16 copy, or with ``verify`` — unless the stored graph
    verifies against eager PyTorch like a new export (returned as the new check; ``None`` when not run)."""
    files = weight_files_of(path, read_manifest(path))
    stored, used, halved = externalize(data, files)
    if halved or verify:
        return stored, used, verify_graph(spec, inline(stored, files))
    if used and not outputs_equal(data, stored, {name: files[name] for name in used}, _feed(spec)):
        raise ExportError(f"{spec.filename}: the graph reading its weights from {used} disagrees with the graph "
                          "holding them")
    return stored, used, None


def write_graph(path: Path, graph: ExportedGraph) -> int:
    """Write a verified graph into bundle ``path`` atomically, its weights as references into the bundle's
    safetensors files, and register it in the manifest (with the files it reads)."""
    data, weights, check = stored_form(path, graph.spec, graph.data)
    entry = graph.entry() if check is None else graph.spec.entry(graph.opset, graph.exporter, check)
    atomic_write(path / graph.spec.filename, lambda tmp: Path(tmp).write_bytes(data))
    add_file(path, graph.spec.filename, section="onnx", entry={**entry, "weights": weights})
    return len(data)


def relink_bundle(bundle: str | Path) -> list[GraphResult]:
    """Rewrite the graphs bundle ``bundle`` already holds so that they read their weights from its safetensors
    files (no export: the same graph; bit-identical outputs, or verified against eager PyTorch where a weight
    now goes through the bundle's float16 copy or the weights changed since the graph was made); returns one
    result per graph (size after). A graph that already points into weight files that changed since is left as
    it is (its offsets may no longer hold): re-export it."""
    path = Path(bundle)
    loaded = load_bundle(path)
    specs = {spec.filename: spec for spec in bundle_specs(loaded)}
    results = []
    for filename, entry in dict(loaded.manifest.get("onnx", {})).items():
        manifest = read_manifest(path)
        data = read_verified(path, manifest, filename)
        if filename not in specs:
            results.append(GraphResult(filename, False, "no graph of this bundle is written to this file"))
            continue
        spec, fresh = specs[filename], is_fresh(loaded, entry)
        if entry.get("weights") and not fresh:
            results.append(GraphResult(filename, False, "its weight files changed since it was linked: re-export"))
            continue
        stored, weights, check = stored_form(path, spec, inline(data, weight_files_of(path, manifest)),
                                             verify=not fresh)
        if check is not None:  # verified against the weights the bundle holds now
            entry = {**entry, "verified": check, "sources": dict(spec.sources)}
        atomic_write(path / filename, lambda tmp, stored=stored: Path(tmp).write_bytes(stored))
        add_file(path, filename, section="onnx", entry={**entry, "weights": weights})
        results.append(GraphResult(filename, True, "", len(stored), entry.get("opset")))
    return results


def export_bundle(bundle: str | Path, out: str | Path | None = None, exporter: str = "dynamo",
                  only: list[str] | None = None) -> list[GraphResult]:
    """Export every graph of the bundle at ``bundle`` (into ``out``, a copy, if given) and register each one
    that passes verification; ``only`` limits it to those file names. Returns one result per graph."""
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {list(EXPORTERS)}")
    path = _target(Path(bundle), out)
    loaded: Bundle = load_bundle(path)
    results = []
    for spec in bundle_specs(loaded):
        if only is not None and spec.filename not in only:
            continue
        try:
            graph = build_graph(spec, exporter)
        except ExportError as exc:
            log.warning("skipping %s: %s", spec.filename, exc)
            remove_file(path, spec.filename, section="onnx")
            results.append(GraphResult(spec.filename, False, str(exc)))
            continue
        size = write_graph(path, graph)
        results.append(GraphResult(spec.filename, True, "", size, graph.opset, graph.check["max_abs_err"]))
    return results
