"""The Triton engine: DeCurvEd edits run as one fused kernel launch (``curvedit.kernels.edit``).

Each DeCurvEd editor's flow is packed once at construction (weights in the chosen MLP precision, biases fp32,
permutations int32). Editors of any other kind, and the generator, run on the bundle's torch modules. Batches are
padded to power-of-two buckets (at least 16 on a GPU) with fixed buffers per (editor, bucket, K); on a GPU,
``use_cuda_graphs=True`` also captures one CUDA graph per bucket: a call then costs two input copies, one graph
replay and one output copy. On a CPU machine the engine runs only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is for tests, not speed.

Buckets up to ``column_buckets_up_to`` rows run the column-parallel kernels (``curvedit.kernels.columns``: every
layer's columns spread over many programs, 6·L + 1 launches per edit, for CUDA graphs) instead of the one fused
launch, whose single program per 16 rows leaves a small batch on one SM. Off (0) by default until a GPU run
says where the two cross.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from curvedit.bundle import Bundle
from curvedit.engines.base import ShapePolicy, seed_list, to_tensor
from curvedit.kernels.columns import ColumnEditPlan
from curvedit.kernels.configs import bucket_size, check_precision, interpreting, triton_available
from curvedit.kernels.coupling import check_latents
from curvedit.kernels.edit import EditPlan, check_amounts
from curvedit.kernels.packing import PackedFlow, pack_flow
from curvedit.models.editors import DeCurvEd
from curvedit.models.files import from_uint8, to_uint8

__all__ = ["TritonEngine", "triton_available"]


# The largest batch bucket with its own cached buffers and CUDA graph: beyond it, a batch runs as chunks, so
# one huge call cannot pin huge buffers on the GPU for the engine's lifetime. 4096 rows already fill an H100.
MAX_BUCKET = 4096

# The measured default of ``column_buckets_up_to`` (run G2, H200): flows at least this wide run buckets up to
# WIDE_FLOW_COLUMN_BUCKETS rows on the column-parallel kernels; narrower flows always run the fused kernel.
WIDE_FLOW = 256
WIDE_FLOW_COLUMN_BUCKETS = 1024


class TritonEngine:
    """``edit`` / ``generate`` on NumPy arrays (the engine protocol) plus ``edit_tensor`` on device tensors.

    ``precision`` is the MLP precision of the kernels: "fp32" (exact fp32 products), "tf32", "bf16" (bf16
    inputs, fp32 accumulation; GPU only, the interpreter mishandles bf16) or "fp16". The latent state and the
    affine step are fp32 in every mode. ``column_buckets_up_to``: batch buckets up to this many rows run the
    column-parallel kernels (see the module docstring; 0 = never); ``None`` (the default) picks per editor what
    the H200 run G2 measured (benchmarks/RESULTS.md): columns up to 1,024 rows for flows of width ≥ 256
    (d = h = 512: 0.21 against 0.97 ms at batch ≤ 64 in bf16, 0.68 against 0.92 ms at 1,024, but 2.16 against
    1.45 ms at 4,096), never for narrow flows (d = 8, h = 64: the fused kernel was faster at every batch).
    """

    name = "triton"

    def __init__(self, bundle: Bundle, device: str = "cuda", precision: str = "fp32",
                 use_cuda_graphs: bool = False, column_buckets_up_to: int | None = None):
        self.device = torch.device(device)
        self.precision = check_precision(precision)
        if column_buckets_up_to is not None and (isinstance(column_buckets_up_to, bool) or not isinstance(
                column_buckets_up_to, int) or column_buckets_up_to < 0):
            raise ValueError(f"column_buckets_up_to must be an int >= 0 (0 = never) or None (measured default), "
                             f"got {column_buckets_up_to!r}")
        self.column_buckets_up_to = column_buckets_up_to
        if not triton_available(self.device):
            if self.device.type == "cpu":
                where = "TRITON_INTERPRET=1 is not set"
            elif interpreting():
                where = "TRITON_INTERPRET=1 is set, and the interpreter runs on the CPU only"
            else:
                where = "no CUDA device is available"
            raise ValueError(f"the triton engine cannot run on {self.device}: {where}. Use a CUDA device, set "
                             "TRITON_INTERPRET=1 before importing curvedit (tests only), or pick engine='torch' "
                             "or 'onnxruntime'")
        if use_cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"use_cuda_graphs needs a CUDA device, got {self.device}")
        if precision == "bf16" and interpreting():
            raise ValueError("bf16 does not work under TRITON_INTERPRET=1 (bf16 tl.dot is wrong there); "
                             "use precision='fp32' or 'fp16' on the interpreter, bf16 on a GPU")
        self.use_cuda_graphs = use_cuda_graphs
        self.generator = bundle.generator.to(self.device).eval()
        self.editors = {name: editor.to(self.device).eval() for name, editor in bundle.editors.items()}
        self.packed: dict[str, PackedFlow] = {
            name: pack_flow(editor, precision, self.device)
            for name, editor in self.editors.items() if isinstance(editor, DeCurvEd)
        }
        # (editor, batch bucket, K) → fixed buffers, and their CUDA graph when graphs are on.
        self._plans: dict[tuple[str, int, int], tuple[EditPlan | ColumnEditPlan, torch.cuda.CUDAGraph | None]] = {}
        self._lock = threading.Lock()
        smallest = self._min_bucket()
        sizes = [smallest]
        while sizes[-1] < MAX_BUCKET:
            sizes.append(sizes[-1] * 2)
        # The kernels run on fixed buffers (and CUDA graphs) per bucket: the engine pads, nobody else.
        self.shape_policy = ShapePolicy(tuple(sizes))

    def _min_bucket(self) -> int:
        return 16 if self.device.type == "cuda" else 1

    def fallbacks(self) -> dict[str, str]:
        """Editors without a fused kernel (not DeCurvEd) run their PyTorch module: kernel → reference."""
        return {f"edit:{name}": "torch: no fused kernel for this editor kind"
                for name in self.editors if name not in self.packed}

    def _editor(self, editor: str) -> torch.nn.Module:
        if editor not in self.editors:
            raise ValueError(f"unknown editor {editor!r}; this bundle has {sorted(self.editors)}")
        return self.editors[editor]

    @torch.inference_mode()
    def edit_tensor(self, editor: str, z: torch.Tensor, amounts: torch.Tensor) -> torch.Tensor:
        """``z [B, d]``, ``amounts [B, K]`` float32 tensors on the engine's device → ``z' [B, d]`` (a new
        tensor on the device). For on-device benchmarking without NumPy copies."""
        module = self._editor(editor)
        if editor not in self.packed:
            return module.edit(z, amounts)
        packed = self.packed[editor]
        z = check_latents(z, packed, "z")
        amounts = check_amounts(amounts, z, packed)
        batch, directions = z.shape[0], amounts.shape[1]
        if batch > MAX_BUCKET:  # cached plans (and graphs) stay bounded: larger batches run as chunks
            return torch.cat([self.edit_tensor(editor, z[i : i + MAX_BUCKET], amounts[i : i + MAX_BUCKET])
                              for i in range(0, batch, MAX_BUCKET)])
        key = (editor, bucket_size(batch, self._min_bucket()), directions)
        with self._lock:
            if key not in self._plans:
                plan_type = ColumnEditPlan if key[1] <= self.columns_up_to(editor) else EditPlan
                plan = plan_type(packed, key[1], directions)
                self._plans[key] = (plan, self._capture(plan) if self.use_cuda_graphs else None)
        plan, graph = self._plans[key]
        with self._lock:  # the plan's buffers are shared by every call of this bucket (e.g. service threads)
            # Rows past `batch` keep earlier inputs: rows are independent, so they cannot disturb the real ones.
            plan.z[:batch].copy_(z)
            plan.t[:batch].copy_(amounts)
            if graph is None:
                plan.launch()
            else:
                graph.replay()
            return plan.out[:batch].clone()

    def columns_up_to(self, editor: str) -> int:
        """The largest batch bucket of ``editor`` that runs the column-parallel kernels (0 = none)."""
        if self.column_buckets_up_to is not None:
            return self.column_buckets_up_to
        flow = self.editors[editor].flow.config
        return WIDE_FLOW_COLUMN_BUCKETS if max(flow.dim, flow.hidden) >= WIDE_FLOW else 0

    @staticmethod
    def _capture(plan: EditPlan | ColumnEditPlan) -> torch.cuda.CUDAGraph:
        device = plan.packed.device
        # Compile and autotune eagerly first (on a side stream, as capture requires): neither may happen inside
        # a capture.
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            plan.launch()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            plan.launch()
        return graph

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return to_tensor(array, self.device)

    def edit(self, editor: str, z: np.ndarray, amounts: np.ndarray) -> np.ndarray:
        """``z [B, d]``, ``amounts [B, K]`` float32 arrays → edited latents ``[B, d]`` float32."""
        return self.edit_tensor(editor, self._tensor(z), self._tensor(amounts)).float().cpu().numpy()

    @torch.inference_mode()
    def generate(self, z: np.ndarray, seeds: np.ndarray | None = None, check=None) -> np.ndarray:
        """``z [B, d]`` → uint8 images ``[B, H, W, 3]`` from the bundle's torch generator."""
        return to_uint8(self.generator.render(self._tensor(z), seed_list(seeds), check))

    @torch.inference_mode()
    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images ``[B, H, W, 3]`` → latents ``[B, d]`` from the bundle's torch encoder."""
        return self.generator.encode(from_uint8(images, self.device)).float().cpu().numpy()
