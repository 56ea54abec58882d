"""What gets exported: the torch modules behind each ONNX graph, with their input/output signatures.

Graphs (every one has a dynamic leading ``batch`` axis):

- ``generator.onnx``: ``z`` float32 ``[batch, d]`` → ``image`` uint8 ``[batch, H, W, 3]``, the same pixels as
  ``Model.generate`` (clamp to [-1, 1], scale to [0, 255], round half to even, NHWC).
- ``pixelcnn_rows.onnx`` and ``pixelcnn_pixel.onnx`` instead of ``generator.onnx`` for a PixelCNN, whose sampling
  is a loop of network passes: its per-step networks (``models/pixelcnn_steps.py``), int64 colour classes and
  positions in, float32 state and logits out.
- ``encoder.onnx`` (generator families that can encode): ``image`` uint8 ``[batch, H, W, 3]`` → ``z`` float32
  ``[batch, d]``, the same latents as ``Model.encode``.
- ``flow_forward.onnx``: ``z`` ``[batch, d]`` → ``v = f(z)`` ``[batch, d]`` (default editor, DeCurvEd only).
- ``flow_inverse.onnx``: ``v`` ``[batch, d]`` → ``z = f⁻¹(v)`` ``[batch, d]`` (default editor, DeCurvEd only).
- ``edit.onnx``: ``z`` ``[batch, d]``, ``t`` ``[batch, K]`` → ``z_edited`` ``[batch, d]``, the default editor's
  whole edit in one graph, so f and f⁻¹ share one copy of the weights.
- ``edit_<name>.onnx``: the same for every other editor of the bundle.
- ``rows_edit.onnx`` / ``rows_edit_<name>.onnx``: for DeCurvEd editors, the same edit computed batch-major.
  ``edit.onnx`` is feature-major (``export/feature_major.py``), which wins from about 16 rows on the CPU; below
  that the batch-major graph is faster (d = 512 on the 2-core machine: 2.0 against 3.4 ms at batch 1, 5.3
  against 4.6 ms at 16), and the ONNX Runtime engine picks it there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from curvedit.bundle import Bundle
from curvedit.export.feature_major import BatchMajorEdit, FeatureMajorDecode, FeatureMajorEdit, FeatureMajorEncode
from curvedit.models.editors import DeCurvEd, Editor
from curvedit.models.pixelcnn import PixelCNN
from curvedit.models.pixelcnn_steps import PixelStep, RowStep


class GeneratorGraph(nn.Module):
    """``z [batch, d]`` → uint8 images ``[batch, H, W, 3]`` (matches ``curvedit.models.files.to_uint8``)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = self.generator(z).clamp(-1.0, 1.0)
        return ((images + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


class EncoderGraph(nn.Module):
    """uint8 images ``[batch, H, W, 3]`` → ``z [batch, d]`` (matches ``curvedit.models.files.from_uint8``)."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.generator.encode(image.permute(0, 3, 1, 2).float() / 127.5 - 1.0)


class EncodeGraph(nn.Module):
    """``z [batch, d]`` → ``v = f(z) [batch, d]``."""

    def __init__(self, editor: Editor):
        super().__init__()
        self.editor = editor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.editor.encode(z)


class DecodeGraph(EncodeGraph):
    """``v [batch, d]`` → ``z = f⁻¹(v) [batch, d]``."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.editor.decode(v)


class EditGraph(EncodeGraph):
    """``z [batch, d]``, ``t [batch, K]`` → ``z_edited [batch, d]``: the editor's whole edit."""

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.editor.edit(z, t)


@dataclass(frozen=True)
class Port:
    """One graph input or output: name, shape with ``"batch"`` as the dynamic axis, dtype name."""

    name: str
    shape: tuple
    dtype: str = "float32"
    high: int | None = None  # int64 ports: example values are drawn from 0 … high − 1

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphSpec:
    """A graph to export: its file name, the module exported, its ports, the bundle files its weights come from
    (``sources``, so an engine can tell a stale graph), and the eager ``reference`` it is verified against
    (``None``: the exported module itself; the feature-major flow graphs are checked against the editor)."""

    key: str  # "generator", "flow_forward", "flow_inverse", "edit:<editor name>" or "rows_edit:<editor name>"
    filename: str
    module: nn.Module
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    editor: str | None
    sources: tuple[tuple[str, str], ...]  # (bundle file, its sha256 when the graph was made)
    reference: nn.Module | None = None

    def eager(self, *inputs: torch.Tensor) -> torch.Tensor:
        return (self.reference if self.reference is not None else self.module)(*inputs)

    def example_inputs(self, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random inputs with ``batch`` rows for every input port: float32 standard normal (like latents), uint8
        uniform 0..255 (images), or int64 uniform 0 … ``high`` − 1 (colour classes, positions)."""
        gen = torch.Generator().manual_seed(seed)
        inputs = []
        for port in self.inputs:
            shape = (batch, *port.shape[1:])
            if port.dtype == "uint8":
                inputs.append(torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8))
            elif port.dtype == "int64":
                inputs.append(torch.randint(0, port.high, shape, generator=gen))
            else:
                inputs.append(torch.randn(shape, generator=gen))
        return tuple(inputs)

    def entry(self, opset: int, exporter: str, check: dict) -> dict:
        """The manifest entry recorded under ``manifest["onnx"][filename]``."""
        return {"graph": self.key.split(":")[0], "editor": self.editor, "opset": opset, "exporter": exporter,
                "inputs": [p.to_dict() for p in self.inputs], "outputs": [p.to_dict() for p in self.outputs],
                "sources": dict(self.sources), "verified": check}


def _sources(bundle: Bundle, filename: str) -> tuple[tuple[str, str], ...]:
    return ((filename, bundle.manifest["files"].get(filename, "")),)


def is_fresh(bundle: Bundle, entry: dict, spec: GraphSpec | None = None) -> bool:
    """Whether a graph's manifest entry was made from the weight files the bundle lists now — and, given the
    ``spec`` it is meant to serve, for that same graph and editor (``edit.onnx`` follows the default editor, so
    after the default changes the old file belongs to another editor)."""
    sources = entry.get("sources")
    if spec is not None and (entry.get("editor") != spec.editor or entry.get("graph") != spec.key.split(":")[0]):
        return False
    return isinstance(sources, dict) and bool(sources) and all(
        bundle.manifest["files"].get(name) == sha for name, sha in sources.items())


def edit_filename(bundle: Bundle, editor: str, rows: bool = False) -> str:
    """``edit.onnx`` for the default editor, ``edit_<name>.onnx`` for the others; ``rows_`` in front for the
    batch-major twin of a DeCurvEd edit."""
    name = "edit.onnx" if editor == bundle.default_editor else f"edit_{editor}.onnx"
    return f"rows_{name}" if rows else name


def edit_spec(bundle: Bundle, name: str, rows: bool = False) -> GraphSpec:
    """The edit graph of editor ``name``: feature-major for DeCurvEd (``rows=True``: batch-major, its small-batch
    twin ``rows_edit*.onnx``), batch-major for every other kind."""
    editor = bundle.editors[name].eval()
    d, k = editor.latent_dim, editor.num_directions
    if rows and not isinstance(editor, DeCurvEd):
        raise ValueError(f"only DeCurvEd editors have a batch-major twin graph; {name!r} is {editor.kind!r}")
    if isinstance(editor, DeCurvEd):
        module = BatchMajorEdit(editor) if rows else FeatureMajorEdit(editor)
    else:
        module = EditGraph(editor)
    return GraphSpec(f"{'rows_edit' if rows else 'edit'}:{name}", edit_filename(bundle, name, rows), module.eval(),
                     (Port("z", ("batch", d)), Port("t", ("batch", k))), (Port("z_edited", ("batch", d)),),
                     name, _sources(bundle, bundle.manifest["editors"][name]["file"]), EditGraph(editor).eval())


def editor_specs(bundle: Bundle, name: str) -> list[GraphSpec]:
    """An editor's edit graph, and for DeCurvEd also its batch-major twin."""
    twin = [edit_spec(bundle, name, rows=True)] if isinstance(bundle.editors[name], DeCurvEd) else []
    return [edit_spec(bundle, name), *twin]


def generator_spec(bundle: Bundle) -> GraphSpec:
    d = int(bundle.manifest["latent_dim"])
    h, w, c = bundle.manifest["image_shape"]
    return GraphSpec("generator", "generator.onnx", GeneratorGraph(bundle.generator.eval()).eval(),
                     (Port("z", ("batch", d)),), (Port("image", ("batch", h, w, c), "uint8"),),
                     None, _sources(bundle, bundle.manifest["generator"]["file"]))


def pixelcnn_step_specs(bundle: Bundle) -> list[GraphSpec]:
    """``pixelcnn_rows.onnx`` and ``pixelcnn_pixel.onnx``: a sampling generator's per-step networks
    (``models/pixelcnn_steps.py``), which the ONNX Runtime engine loops over; nothing for other families."""
    generator = bundle.generator.eval()
    if not isinstance(generator, PixelCNN):
        return []
    config, sources = generator.config, _sources(bundle, bundle.manifest["generator"]["file"])
    size, state = config.image_size, (len(generator.layers), 2 * config.channels, config.image_size)
    h = Port("h", ("batch", generator.latent_dim))
    above = Port("above", ("batch", *state))
    return [
        GraphSpec("pixelcnn_rows", "pixelcnn_rows.onnx", RowStep(generator).eval(),
                  (Port("classes", ("batch", size, size), "int64", config.classes), h,
                   Port("row", ("batch",), "int64", size)), (above,), None, sources),
        GraphSpec("pixelcnn_pixel", "pixelcnn_pixel.onnx", PixelStep(generator).eval(),
                  (Port("row_classes", ("batch", size), "int64", config.classes), above, h,
                   Port("col", ("batch",), "int64", size)), (Port("logits", ("batch", config.classes)),), None,
                  sources),
    ]


def encoder_specs(bundle: Bundle) -> list[GraphSpec]:
    """``encoder.onnx`` when the bundle's generator family can encode, else nothing."""
    if not bundle.generator.can_encode:
        return []
    d = int(bundle.manifest["latent_dim"])
    h, w, c = bundle.manifest["image_shape"]
    return [GraphSpec("encoder", "encoder.onnx", EncoderGraph(bundle.generator.eval()).eval(),
                      (Port("image", ("batch", h, w, c), "uint8"),), (Port("z", ("batch", d)),),
                      None, _sources(bundle, bundle.manifest["generator"]["file"]))]


def flow_specs(bundle: Bundle) -> list[GraphSpec]:
    """``flow_forward`` / ``flow_inverse`` of the default editor, if it has ``encode``/``decode`` (DeCurvEd)."""
    name = bundle.default_editor
    editor = bundle.editors[name].eval()
    if not isinstance(editor, DeCurvEd):
        return []
    d = editor.latent_dim
    sources = _sources(bundle, bundle.manifest["editors"][name]["file"])
    z, v = Port("z", ("batch", d)), Port("v", ("batch", d))
    return [
        GraphSpec("flow_forward", "flow_forward.onnx", FeatureMajorEncode(editor).eval(), (z,), (v,), name,
                  sources, EncodeGraph(editor).eval()),
        GraphSpec("flow_inverse", "flow_inverse.onnx", FeatureMajorDecode(editor).eval(), (v,), (z,), name,
                  sources, DecodeGraph(editor).eval()),
    ]


def bundle_specs(bundle: Bundle) -> list[GraphSpec]:
    """Every graph for ``bundle``: generator (and encoder), the default editor's flow halves and edit, then the
    other editors."""
    others = [name for name in bundle.editors if name != bundle.default_editor]
    generator = pixelcnn_step_specs(bundle) or [generator_spec(bundle)]  # a sampler is a loop of step graphs
    return [*generator, *encoder_specs(bundle), *flow_specs(bundle),
            *editor_specs(bundle, bundle.default_editor),
            *(spec for name in others for spec in editor_specs(bundle, name))]
