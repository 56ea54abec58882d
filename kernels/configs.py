"""Launch configurations, MLP precisions and where Triton can run.

The kernels' tile sizes live here, in one table, so the launchers, the autotuner and the compile-only tests
(which build every configuration for an sm_90 target) all see the same list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# precision name → (packed weight dtype, tl.dot input_precision). The latent state and the affine step are fp32
# in every mode; only the MLP's matrix products change. input_precision only matters for fp32 inputs.
PRECISIONS: dict[str, tuple[torch.dtype, str]] = {
    "fp32": (torch.float32, "ieee"),
    "tf32": (torch.float32, "tf32"),
    "bf16": (torch.bfloat16, "ieee"),
    "fp16": (torch.float16, "ieee"),
}

# The largest dynamic shared memory one block may use on an H100 / H200 (227 KiB).
SM90_SHARED_LIMIT = 232448


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes: ``block_b`` rows of the batch per program, ``block_n`` output columns and ``block_k``
    reduction columns per ``tl.dot``. Every dot dimension is >= 16, the minimum for 16-bit tensor cores."""

    block_b: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2

    def meta(self) -> dict:
        return {"BLOCK_B": self.block_b, "BLOCK_N": self.block_n, "BLOCK_K": self.block_k}

    @property
    def name(self) -> str:
        return f"b{self.block_b}n{self.block_n}k{self.block_k}w{self.num_warps}s{self.num_stages}"

    @classmethod
    def from_name(cls, name: str) -> LaunchConfig:
        """The inverse of ``name``: ``"b32n64k64w8s3"`` → ``LaunchConfig(32, 64, 64, 8, 3)``."""
        match = re.fullmatch(r"b(\d+)n(\d+)k(\d+)w(\d+)s(\d+)", name)
        if match is None:
            raise ValueError(f"config name {name!r} is not of the form b<rows>n<cols>k<depth>w<warps>s<stages>, "
                             "e.g. 'b16n64k64w4s3'")
        return cls(*(int(group) for group in match.groups()))


# The interpreter runs each program as NumPy array code, so bigger tiles mean fewer Python-level steps; there is
# one configuration only because a multi-config autotune needs a GPU driver.
INTERPRETER_CONFIG = LaunchConfig(16, 64, 64, num_warps=4, num_stages=1)

# GPU candidates the autotuner picks from per batch bucket. One program carries block_b rows through the whole
# flow, so small block_b keeps many SMs busy at small and medium batches (4096 rows / 32 = 128 programs for 132
# SMs); the weights of a 512-wide layer are streamed through these tiles, never held whole. 16-bit MLPs also get
# a 64-row tile (one warpgroup's wgmma has M = 64), and the 16-row tiles an 8-warp twin: at batch <= 16 one
# program does all the work, and more warps keep more weight loads in flight on its one SM.
# At d = h = 512 for sm_90 the edit kernel (what the engine launches) spills no register at any of these tiles
# under triton 3.6 or 3.9 (tests/test_kernels_compile.py checks the local memory of each cubin). The tiles they
# replaced did: bf16 b64n128k64w4s3 255 registers and a 1,424-byte stack frame per thread, b32n128k64w4s3 72 B
# (triton 3.6; 1,352 and 152 B on 3.9). The single-layer kernel (coupling_forward, not used by the engine) keeps
# 8 B at three tiles: bf16 b16n64k64w4s3 on 3.6, fp32 b16n64k32w4s2 and bf16 b32n32k64w8s3 on 3.9
# (benchmarks/RESULTS.md).
_SIXTEEN_BIT = (LaunchConfig(16, 64, 64, 4, 3), LaunchConfig(16, 64, 64, 8, 3), LaunchConfig(32, 32, 64, 8, 3),
                LaunchConfig(64, 64, 32, 8, 3))
GPU_CONFIGS: dict[str, tuple[LaunchConfig, ...]] = {
    "fp32": (LaunchConfig(16, 64, 32, 4, 2), LaunchConfig(16, 64, 32, 8, 2), LaunchConfig(32, 32, 32, 8, 2)),
    "tf32": (LaunchConfig(16, 64, 32, 4, 2), LaunchConfig(32, 64, 32, 8, 3)),
    "bf16": _SIXTEEN_BIT,
    "fp16": _SIXTEEN_BIT,  # the same tiles as bf16: same element width, same tensor-core instructions
}


# The column-parallel kernels (kernels/columns.py) are for small batches: one 16-row block (the smallest
# tensor-core tile) and narrow column blocks, so each stage of a 512-wide layer runs as 16 programs on 16 SMs. A
# first choice, not yet timed on a GPU; one configuration per precision (no autotuning: forward and inverse must
# use the same tiles).
COLUMN_GPU_CONFIGS: dict[str, LaunchConfig] = {
    "fp32": LaunchConfig(16, 32, 32, 4, 2),
    "tf32": LaunchConfig(16, 32, 32, 4, 2),
    "bf16": LaunchConfig(16, 32, 64, 4, 3),
    "fp16": LaunchConfig(16, 32, 64, 4, 3),
}
# Under the interpreter wider column blocks mean fewer programs, each a few NumPy operations.
COLUMN_INTERPRETER_CONFIG = LaunchConfig(16, 64, 64, num_warps=4, num_stages=1)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown MLP precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    return precision


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1`` before import)."""
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        return bool(knobs.runtime.interpret)
    import os  # triton < 3.4 has no knobs module and reads the variable itself

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available(device: str | torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: a CUDA device with a driver, or the CPU under the
    interpreter. Anything else uses the torch reference path."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and not interpreting()
    if device.type == "cpu":
        return interpreting()
    return False


def configs_for(precision: str) -> tuple[LaunchConfig, ...]:
    """The configurations the autotuner may pick from here: one under the interpreter, several on a GPU."""
    check_precision(precision)
    return (INTERPRETER_CONFIG,) if interpreting() else GPU_CONFIGS[precision]


def column_config_for(precision: str) -> LaunchConfig:
    """The column-parallel kernels' one configuration here (interpreter or GPU)."""
    check_precision(precision)
    return COLUMN_INTERPRETER_CONFIG if interpreting() else COLUMN_GPU_CONFIGS[precision]


def bucket_size(batch: int, minimum: int = 1) -> int:
    """The power of two ``>= max(batch, minimum)``: padded batch sizes, so CUDA graphs are captured per bucket."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return 1 << (max(batch, minimum) - 1).bit_length()
