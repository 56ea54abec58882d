"""The ONNX Runtime engine: each edit and the generator run as one ONNX graph.

Where the graphs come from, per graph and on first use:

1. the bundle's own file (``curvedit export`` wrote it; its sha256 was checked when the bundle loaded, and it is
   checked again here as it is read, with the safetensors files its weights point into:
   ``curvedit.models.bundle_files.ort_session``), if its manifest entry was made from the weight files the bundle
   has now;
2. otherwise an in-memory export (TorchScript exporter, about a second for the shipped model) verified against
   eager PyTorch exactly like ``curvedit export`` does. Nothing is written, so read-only installs work;
   ``curvedit export`` makes later loads skip this step;
3. if a graph cannot be exported or fails verification, that editor (or the generator) runs on its PyTorch
   module on the CPU instead; ``engine.origins`` says which path each graph took and why.

Providers: the CPU provider always; the CUDA provider only when torch sees a GPU *and* ONNX Runtime offers
``CUDAExecutionProvider`` (asking for it elsewhere makes ``onnxruntime-gpu`` print warnings). Sessions log
errors only. CUDA runs fp32 GEMMs without TF32, so results stay within fp32 tolerance of the torch engine.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from curvedit.bundle import Bundle
from curvedit.engines.base import ANY_SHAPE, seed_list, to_tensor
from curvedit.models.bundle_files import ort_session
from curvedit.models.editors import DeCurvEd
from curvedit.models.files import from_uint8, to_uint8
from curvedit.models.pixelcnn import DEFAULT_SEED, PixelCNN, dequantise
from curvedit.models.pixelcnn_sampling import sample_loop
from curvedit.models.pixelcnn_steps import step_rows

log = logging.getLogger("curvedit.engines.onnx")


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only: no provider chatter on import or session creation
    return ort


def cuda_provider_usable() -> bool:
    """A CUDA GPU is visible to torch and this ONNX Runtime build has the CUDA provider."""
    return torch.cuda.is_available() and "CUDAExecutionProvider" in _ort().get_available_providers()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class OrtOptions:
    """Session settings. ``threads=None`` uses every core this process may run on (2 here).

    ``spinning`` (ONNX Runtime's own default, on) lets worker threads busy-wait briefly between ops: on the 2-core
    machine it cut a d=512 batch-1 edit from 2.9 to 1.7 ms. Turn it off when other busy threads share the cores
    (e.g. torch's OpenMP pool in the same process): spinning pools then slow each other down."""

    threads: int | None = None
    spinning: bool = True
    optimization: str = "all"  # "basic", "extended" or "all"

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or None for all cores), got {self.threads}")
        if self.optimization not in ("basic", "extended", "all"):
            raise ValueError(f"optimization must be basic, extended or all, got {self.optimization!r}")

    def session_options(self):
        ort = _ort()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = self.threads or available_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        return options


def resolve_device(device: str | None) -> str:
    """``None`` → ``cuda`` when the CUDA provider is usable, else ``cpu``; ``cuda[:n]`` must be usable."""
    if device is None:
        return "cuda" if cuda_provider_usable() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not cuda_provider_usable():
            raise ValueError(f"device {device!r} needs a CUDA GPU and onnxruntime-gpu's CUDAExecutionProvider "
                             f"(have {_ort().get_available_providers()}); use device='cpu'")
        return device
    raise ValueError(f"the onnxruntime engine runs on 'cpu' or 'cuda[:n]', got device {device!r}")


# On the CPU a DeCurvEd edit of fewer rows than this runs on its batch-major graph (``rows_edit*.onnx``), larger
# ones on the feature-major ``edit*.onnx``. Measured on the 2-core machine, d = h = 512: batch-major is faster up
# to 8 rows (2.0 against 3.4 ms at batch 1), feature-major from 16 (4.6 against 5.3 ms).
SMALL_BATCH_ROWS = 16

# On the CPU a large batch runs as chunks of this many rows: a chunk's activations stay in cache. Measured on the
# 2-core machine, d = h = 512, batch 4096: 142 GFLOP/s in one call, 182 in chunks of 512 (173 at 256, 154 at 64).
CPU_CHUNK_ROWS = 512


STEP_GRAPHS = ("pixelcnn_rows", "pixelcnn_pixel")  # a PixelCNN's generator: a loop over these two graphs


def _tensor_call(session, names: tuple[str, ...]):
    """An ONNX Runtime session as a function of tensors (CPU, zero-copy both ways) returning its first output."""

    def call(*tensors: torch.Tensor) -> torch.Tensor:
        feed = {n: np.ascontiguousarray(t.numpy()) for n, t in zip(names, tensors, strict=True)}
        return torch.from_numpy(session.run(None, feed)[0])

    return call


class OnnxEngine:
    """Runs a bundle's graphs in ONNX Runtime. NumPy in and out (see ``curvedit.engines.base``)."""

    name = "onnxruntime"
    shape_policy = ANY_SHAPE  # dynamic batch axes: every size runs as it is, nothing is padded

    def __init__(self, bundle: Bundle, device: str | None = None, options: OrtOptions | None = None,
                 exporter: str = "torchscript"):
        self.bundle = bundle
        self.device = resolve_device(device)
        self.options = options or OrtOptions()
        self.exporter = exporter
        if self.device.startswith("cuda"):
            index = int(self.device.partition(":")[2] or 0)
            self.providers = [("CUDAExecutionProvider", {"device_id": index, "use_tf32": 0}),
                              "CPUExecutionProvider"]
        else:
            self.providers = ["CPUExecutionProvider"]
        self.origins: dict[str, str] = {}  # graph key → "bundle", "memory" or "torch: <reason>"
        self._sessions: dict[str, object] = {}
        self._rows_choice: dict[str, bool] = {}  # editor → small batches use its batch-major graph
        self._lock = threading.Lock()

    # -- graphs ---------------------------------------------------------------------------------------------
    def _spec(self, key: str):
        from curvedit.export.graphs import edit_spec, encoder_specs, generator_spec, pixelcnn_step_specs

        if key == "generator":
            return generator_spec(self.bundle)
        if key.startswith("pixelcnn_"):
            return next(spec for spec in pixelcnn_step_specs(self.bundle) if spec.key == key)
        if key == "encoder":
            return encoder_specs(self.bundle)[0]
        kind, name = key.split(":", 1)
        return edit_spec(self.bundle, name, rows=kind == "rows_edit")

    def edit_key(self, editor: str, batch: int) -> str:
        """The graph an edit of ``batch`` rows runs on: ``"rows_edit:<editor>"`` for a small DeCurvEd batch on the
        CPU (when the bundle ships that graph, or ships neither), else ``"edit:<editor>"``."""
        small = self.device == "cpu" and batch < SMALL_BATCH_ROWS
        return f"rows_edit:{editor}" if small and self._small_batch_graph(editor) else f"edit:{editor}"

    def _small_batch_graph(self, editor: str) -> bool:
        """Whether small batches of ``editor`` get the batch-major graph: DeCurvEd only, and not when the bundle
        ships a fresh ``edit*.onnx`` but no fresh ``rows_edit*.onnx`` (exported before the twin existed): that
        bundle's own graph beats exporting one at serve time."""
        if editor not in self._rows_choice:
            choice = isinstance(self.bundle.editors[editor], DeCurvEd)
            if choice:
                rows, features = self._spec(f"rows_edit:{editor}"), self._spec(f"edit:{editor}")
                choice = self._shipped(rows) or not self._shipped(features)
            self._rows_choice[editor] = choice
        return self._rows_choice[editor]

    def _shipped(self, spec) -> bool:
        """The bundle lists ``spec``'s graph file, made from its current weights for this graph and editor."""
        from curvedit.export.graphs import is_fresh

        entry = self.bundle.manifest.get("onnx", {}).get(spec.filename)
        return entry is not None and is_fresh(self.bundle, entry, spec)

    def _exported(self, spec) -> tuple[bytes | None, str]:
        """A graph the bundle does not ship: exported and verified in memory now, or ``None`` (torch fallback)."""
        try:
            from curvedit.export.onnx_export import ExportError, build_graph
        except ImportError as exc:  # onnx/onnxscript are the optional `export` extra
            reason = f"cannot export {spec.filename} here ({exc}); pip install 'curvedit[export]'"
            log.warning("%s runs on PyTorch: %s", spec.key, reason)
            return None, f"torch: {reason}"
        try:
            return build_graph(spec, self.exporter).data, "memory"
        except ExportError as exc:
            log.warning("%s runs on PyTorch: %s", spec.key, exc)
            return None, f"torch: {exc}"

    def _new_session(self, spec):
        """``(session or None, origin)``: the bundle's own graph (its bytes and the weight files it reads checked
        against the manifest now, in case a file changed since load), else an in-memory export."""
        if self._shipped(spec):
            bundle = self.bundle
            session = ort_session(bundle.path, bundle.manifest, spec.filename, self.options.session_options(),
                                  self.providers)
            return session, "bundle"
        data, origin = self._exported(spec)
        if data is None:
            return None, origin
        return _ort().InferenceSession(data, self.options.session_options(), providers=self.providers), origin

    def session(self, key: str):
        """The session for ``"generator"``, ``"edit:<editor>"`` or ``"rows_edit:<editor>"``, made on first use;
        ``None`` = torch fallback."""
        if key not in self._sessions:
            with self._lock:
                if key not in self._sessions:
                    session, self.origins[key] = self._new_session(self._spec(key))
                    self._sessions[key] = session
        return self._sessions[key]

    def _generator_keys(self) -> tuple[str, ...]:
        return STEP_GRAPHS if isinstance(self.bundle.generator, PixelCNN) else ("generator",)

    def warm_up(self) -> dict[str, str]:
        """Build every session now (not on first request); returns ``origins``."""
        for key in self._generator_keys():
            self.session(key)
        if self.bundle.generator.can_encode:
            self.session("encoder")
        for editor in self.bundle.editors:
            for batch in (1, SMALL_BATCH_ROWS):
                self.session(self.edit_key(editor, batch))
        return dict(self.origins)

    def fallbacks(self) -> dict[str, str]:
        """The graphs that run on their PyTorch module instead (export or verification failed), and why."""
        return {key: origin for key, origin in self.origins.items() if origin.startswith("torch")}

    # -- the work -------------------------------------------------------------------------------------------
    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """``z [batch, d]``, ``amounts [batch, K]`` → edited latents float32 ``[batch, d]``."""
        session = self.session(self.edit_key(editor, len(z)))
        if session is None:
            with torch.inference_mode():
                out = self.bundle.editors[editor].edit(torch.from_numpy(z), torch.from_numpy(amounts))
            return out.numpy()
        rows = CPU_CHUNK_ROWS if self.device == "cpu" else len(z)
        if len(z) <= rows:
            return session.run(None, {"z": z, "t": amounts})[0]
        return np.concatenate([session.run(None, {"z": z[i : i + rows], "t": amounts[i : i + rows]})[0]
                               for i in range(0, len(z), rows)])

    def generate(self, z: np.ndarray, seeds: np.ndarray | None = None, check=None) -> np.ndarray:
        """``z [batch, d]`` → uint8 images ``[batch, H, W, 3]``; a PixelCNN samples by looping over its step
        graphs, with ``seeds`` and ``check`` as in ``Engine.generate``."""
        sessions = [self.session(key) for key in self._generator_keys()]
        if any(session is None for session in sessions):
            with torch.inference_mode():
                return to_uint8(self.bundle.generator.render(to_tensor(z, "cpu"), seed_list(seeds), check))
        if len(sessions) == 1:
            return sessions[0].run(None, {"z": z})[0]
        generator = self.bundle.generator
        seeds = [DEFAULT_SEED] * len(z) if seeds is None else seed_list(seeds)
        rows = step_rows(_tensor_call(sessions[0], ("classes", "h", "row")),
                         _tensor_call(sessions[1], ("row_classes", "above", "h", "col")), to_tensor(z, "cpu"))
        classes = sample_loop(rows, seeds, len(z), generator.config.image_size, "cpu", check)
        return to_uint8(dequantise(classes, generator.config))

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images ``[batch, H, W, 3]`` → latents float32 ``[batch, d]``."""
        session = self.session("encoder")
        if session is None:
            with torch.inference_mode():
                return self.bundle.generator.encode(from_uint8(images)).numpy()
        return session.run(None, {"image": images})[0]
