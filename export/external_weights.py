"""Graphs that store no weight twice: initializers as ONNX external data pointing into the bundle's safetensors.

An exported graph carries its weights inline. Most of them are byte for byte tensors the bundle already holds
(the generator's, the editor's): ``externalize`` replaces each such initializer (of at least ``MIN_BYTES``) by an
external-data reference ``(location = the safetensors file, offset, length)`` into that file, where safetensors
keeps every tensor contiguous, little-endian, after its header. What the exporter derived (a folded constant, a
transposed copy) stays inline; a float32 weight the bundle stores in float16 is read as float16 and cast, as
PyTorch does. ``inline`` does the reverse, for consumers that want one self-contained file (a
Triton Inference Server repository). ``relink_bundle`` rewrites a bundle's existing graphs so, checking that
ONNX Runtime gives the very same outputs before and after.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

MIN_BYTES = 1024  # smaller tensors (shapes, scalars, small permutations) stay inline: shape inference reads them


def tensor_spans(data: bytes) -> dict[bytes, tuple[int, int]]:
    """A safetensors file's tensors: raw bytes → ``(offset, length)`` in the file."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    start = 8 + header_len
    spans = {}
    for entry in header.values():
        begin, end = entry["data_offsets"]
        spans.setdefault(data[start + begin : start + end], (start + begin, end - begin))
    return spans


def _point(tensor: onnx.TensorProto, dtype: int, location: str, span: tuple[int, int]) -> None:
    """Turn ``tensor`` (keeping its name and dims) into ``dtype`` external data at ``span`` of ``location``."""
    dims, label = list(tensor.dims), tensor.name
    tensor.Clear()
    tensor.name, tensor.data_type = label, dtype
    tensor.dims.extend(dims)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(span[0])), ("length", str(span[1]))):
        tensor.external_data.add(key=key, value=value)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)


def externalize(model_bytes: bytes, weight_files: dict[str, bytes]) -> tuple[bytes, list[str], list[str]]:
    """``model_bytes`` with every initializer that one of ``weight_files`` (safetensors: name → bytes) holds turned
    into external data pointing there: byte for byte, or — a float32 initializer whose float16 rounding a file
    holds (weights the bundle stores in half precision) — as that float16 tensor and a ``Cast`` to float32, which
    is what PyTorch computes with after loading it. Returns the graph, the files it now reads, and the
    initializers that now go through float16 (the graph's outputs then move by that rounding: verify them)."""
    model = onnx.load_from_string(model_bytes)
    spans = {name: tensor_spans(data) for name, data in weight_files.items()}
    used, halved = set(), []
    for graph in _graphs(model.graph):
        casts = []
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                continue
            array = numpy_helper.to_array(tensor)
            if array.nbytes < MIN_BYTES:
                continue
            half = array.astype(np.float16).tobytes() if array.dtype == np.float32 else None
            for location, found in spans.items():
                if array.tobytes() in found:
                    _point(tensor, tensor.data_type, location, found[array.tobytes()])
                elif half is not None and half in found:
                    name = tensor.name
                    tensor.name = f"{name}.float16"
                    _point(tensor, onnx.TensorProto.FLOAT16, location, found[half])
                    casts.append(onnx.helper.make_node("Cast", [tensor.name], [name], to=onnx.TensorProto.FLOAT,
                                                       name=f"{name}.to_float32"))
                    halved.append(name)
                else:
                    continue
                used.add(location)
                break
        for cast in reversed(casts):
            graph.node.insert(0, cast)
    return model.SerializeToString(), sorted(used), halved


def inline(model_bytes: bytes, weight_files: dict[str, bytes]) -> bytes:
    """The self-contained graph: every external initializer read back from ``weight_files``."""
    model = onnx.load_from_string(model_bytes)
    for tensor in (t for graph in _graphs(model.graph) for t in graph.initializer):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = {entry.key: entry.value for entry in tensor.external_data}
        offset, length = int(where.get("offset", 0)), int(where["length"])
        tensor.raw_data = weight_files[where["location"]][offset : offset + length]
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model.SerializeToString()


def outputs_equal(inline_bytes: bytes, external_bytes: bytes, weight_files: dict[str, bytes], feed: dict) -> bool:
    """Whether ONNX Runtime gives bit-identical outputs for both forms of a graph on ``feed``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    names = list(weight_files)
    options.add_external_initializers_from_files_in_memory(names, [weight_files[n] for n in names],
                                                           [len(weight_files[n]) for n in names])
    before = ort.InferenceSession(inline_bytes, providers=["CPUExecutionProvider"]).run(None, feed)
    after = ort.InferenceSession(external_bytes, options, providers=["CPUExecutionProvider"]).run(None, feed)
    return all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def weight_files_of(path: Path, manifest: dict) -> dict[str, bytes]:
    """Every safetensors file the bundle lists, verified: the files a graph may point into."""
    from curvedit.models.bundle_files import read_verified

    names = [name for name in manifest["files"] if name.endswith(".safetensors")]
    return {name: read_verified(path, manifest, name) for name in names}
