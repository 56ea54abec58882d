"""``curvedit export --triton-repo DIR``: a Triton Inference Server model repository for one bundle.

For users who run Triton itself. Layout (Triton's: ``DIR/<model>/<version>/…`` and a ``config.pbtxt`` each)::

    DIR/<name>_edit/1/model.onnx         the default editor's edit: z FP32 [d], t FP32 [K] → z_edited FP32 [d]
    DIR/<name>_generator/1/model.onnx    z FP32 [d] → image UINT8 [H, W, 3]
    DIR/<name>_encoder/1/model.onnx      image UINT8 [H, W, 3] → z FP32 [d]   (families that can encode)
    DIR/<name>/1/                        an ensemble: z, t → z_edited, images (edit, then generate) — the
                                         same tensors as curvedit's own Open Inference Protocol model

Dims in ``config.pbtxt`` leave out the batch axis (``max_batch_size`` > 0), and every ONNX model gets
``dynamic_batching {}`` — Triton's default delay of 0: a batch forms from what queued while the last one ran.
Graphs are the bundle's own when it ships fresh ones, else exported and verified in memory as ``curvedit export``
does. Triton's model versions are integers: the bundle's version goes into each config's ``parameters``.
"""

from __future__ import annotations

from pathlib import Path

from curvedit.bundle import Bundle, load_bundle
from curvedit.export.external_weights import inline, weight_files_of
from curvedit.export.graphs import GraphSpec, edit_spec, encoder_specs, generator_spec, is_fresh
from curvedit.models.bundle_files import read_verified

TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8"}


def graph_bytes(bundle: Bundle, spec: GraphSpec, exporter: str) -> bytes:
    """The bundle's own graph file when it is fresh for ``spec``, else a verified in-memory export."""
    entry = bundle.manifest.get("onnx", {}).get(spec.filename)
    if entry is not None and is_fresh(bundle, entry, spec):  # self-contained: Triton loads model.onnx alone
        data = read_verified(bundle.path, bundle.manifest, spec.filename)
        return inline(data, weight_files_of(bundle.path, bundle.manifest)) if entry.get("weights") else data
    from curvedit.export.onnx_export import build_graph

    return build_graph(spec, exporter).data


def _tensor(kind: str, name: str, dtype: str, dims) -> str:
    return f'{kind} {{\n  name: "{name}"\n  data_type: {TYPES[dtype]}\n  dims: [ {", ".join(map(str, dims))} ]\n}}'


def _config(name: str, platform: str, max_batch_size: int, inputs: list[str], outputs: list[str], version: str,
            extra: str = "") -> str:
    body = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch_size}",
            "input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]"]
    if platform != "ensemble":
        body += ["dynamic_batching { }", "instance_group [ { count: 1, kind: KIND_AUTO } ]"]
    body.append(f'parameters {{ key: "curvedit_bundle_version" value: {{ string_value: "{version}" }} }}')
    return "\n".join(body) + ("\n" + extra if extra else "") + "\n"


def _onnx_model(out: Path, name: str, spec: GraphSpec, data: bytes, max_batch_size: int, version: str) -> Path:
    folder = out / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(data)
    inputs = [_tensor("", p.name, p.dtype, p.shape[1:]).strip() for p in spec.inputs]
    outputs = [_tensor("", p.name, p.dtype, p.shape[1:]).strip() for p in spec.outputs]
    (folder / "config.pbtxt").write_text(_config(name, "onnxruntime_onnx", max_batch_size, inputs, outputs,
                                                 version))
    return folder


def write_triton_repo(model: str | Path, out: str | Path, max_batch_size: int = 256,
                      exporter: str = "dynamo") -> list[Path]:
    """Write the repository for the bundle at ``model`` into ``out``; returns the model folders written."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    bundle = load_bundle(Path(model))
    if bundle.generator.samples:
        raise ValueError(f"{bundle.manifest.get('name', bundle.path.name)} samples its images in a loop of 256 "
                         "step-graph calls, which a Triton ensemble cannot express; serve it with `curvedit serve "
                         "--model NAME` (its edit graphs are in the bundle)")
    out = Path(out)
    name = bundle.manifest.get("name", bundle.path.name)
    version = bundle.version
    edit = edit_spec(bundle, bundle.default_editor)
    generator = generator_spec(bundle)
    folders = [_onnx_model(out, f"{name}_edit", edit, graph_bytes(bundle, edit, exporter), max_batch_size,
                           version),
               _onnx_model(out, f"{name}_generator", generator, graph_bytes(bundle, generator, exporter),
                           max_batch_size, version)]
    if bundle.generator.can_encode:
        encoder = encoder_specs(bundle)[0]
        folders.append(_onnx_model(out, f"{name}_encoder", encoder, graph_bytes(bundle, encoder, exporter),
                                   max_batch_size, version))
    folders.append(_ensemble(out, name, edit, generator, max_batch_size, version))
    return folders


def _ensemble(out: Path, name: str, edit: GraphSpec, generator: GraphSpec, max_batch_size: int,
              version: str) -> Path:
    folder = out / name
    (folder / "1").mkdir(parents=True, exist_ok=True)  # Triton wants the version folder, even empty
    z, t = edit.inputs
    (edited,) = edit.outputs
    (image,) = generator.outputs
    inputs = [_tensor("", p.name, p.dtype, p.shape[1:]).strip() for p in (z, t)]
    outputs = [_tensor("", edited.name, edited.dtype, edited.shape[1:]).strip(),
               _tensor("", "images", image.dtype, image.shape[1:]).strip()]
    steps = (f'ensemble_scheduling {{\n  step [\n    {{\n      model_name: "{name}_edit"\n'
             f'      model_version: -1\n'
             f'      input_map {{ key: "{z.name}" value: "{z.name}" }}\n'
             f'      input_map {{ key: "{t.name}" value: "{t.name}" }}\n'
             f'      output_map {{ key: "{edited.name}" value: "{edited.name}" }}\n    }},\n'
             f'    {{\n      model_name: "{name}_generator"\n      model_version: -1\n'
             f'      input_map {{ key: "{generator.inputs[0].name}" value: "{edited.name}" }}\n'
             f'      output_map {{ key: "{image.name}" value: "images" }}\n    }}\n  ]\n}}')
    (folder / "config.pbtxt").write_text(_config(name, "ensemble", max_batch_size, inputs, outputs, version,
                                                 steps))
    return folder
