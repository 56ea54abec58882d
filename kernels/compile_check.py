"""Compile every kernel configuration for an H100/H200 (sm_90) without a GPU; report its shared memory,
registers and register spills.

The Triton wheel bundles ptxas, so ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` builds
real cubins on a CPU-only machine; this catches what the interpreter never enforces (shared-memory limits,
tensor-core tile minimums, layouts that fail to lower, spills). It must run WITHOUT ``TRITON_INTERPRET=1``: under
the interpreter ``@triton.jit`` yields interpreter objects that cannot be lowered, so the tests run this module
in a subprocess with the variable removed:

    python -m curvedit.kernels.compile_check [--job bf16/b16n64k64w4s3/edit ...]   # prints JSON lines

A job's configuration may be any ``LaunchConfig`` name, not only the shipped ones (to try a candidate tile).
Registers and spills come from ``cuobjdump -res-usage`` on the cubin (the wheel bundles cuobjdump too; it works
on cached compiles, unlike ptxas's log): ``REG`` is registers per thread, ``STACK`` the per-thread stack frame,
which in a Triton kernel holds nothing but register spills; it is the local memory a GPU launch reports
(Triton's ``n_spills`` is the same figure in 4-byte words). Without cuobjdump both are ``null``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

from curvedit.kernels.configs import COLUMN_GPU_CONFIGS, GPU_CONFIGS, PRECISIONS, SM90_SHARED_LIMIT, LaunchConfig

KERNELS = ("coupling_forward", "coupling_inverse", "edit", "column_dense", "column_dense_hidden",
           "column_affine_forward", "column_affine_inverse")
_SCALARS = {"clamp": "fp32", "B": "i32", "K": "i32"}


def _signature(fn, pointer_dtypes: dict[str, str], constexprs: dict) -> dict[str, str]:
    """Every argument of ``fn`` as the type string triton.compile expects ("*fp32", "i32", "constexpr")."""
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in _SCALARS:
            signature[name] = _SCALARS[name]
        else:
            signature[name] = "*" + pointer_dtypes.get(name, "fp32")
    return signature


def kernel_sources(precision: str, config: LaunchConfig, dim: int, hidden: int, layers: int):
    """``{kernel name: (jit function, signature, constexprs)}`` for the coupling (both directions), edit and
    column-parallel kernels at one precision and tile configuration (``column_dense``: stage 1 of an inverse
    layer, gathering fp32 latents; ``column_dense_hidden``: stage 2, on the MLP dtype)."""
    from curvedit.kernels.columns import _affine_kernel, _dense_silu_kernel
    from curvedit.kernels.coupling import _coupling_kernel
    from curvedit.kernels.edit import _edit_kernel

    mlp = {"fp32": "fp32", "tf32": "fp32", "bf16": "bf16", "fp16": "fp16"}[precision]
    pointers = {"h1": mlp, "h2": mlp, "w1": mlp, "w2": mlp, "w3": mlp, "inv_perm": "i32"}
    sizes = {"D": dim, "SPLIT": dim // 2, "REST": dim - dim // 2, "H": hidden, **config.meta(),
             "PRECISION": PRECISIONS[precision][1]}
    sources = {}
    for reverse in (False, True):
        constexprs = {**sizes, "REVERSE": reverse, "WRITE_LD": True}
        name = "coupling_inverse" if reverse else "coupling_forward"
        sources[name] = (_coupling_kernel, _signature(_coupling_kernel, pointers, constexprs), constexprs)
    constexprs = {**sizes, "L": layers}
    sources["edit"] = (_edit_kernel, _signature(_edit_kernel, pointers, constexprs), constexprs)
    tiles = {k: sizes[k] for k in ("BLOCK_B", "BLOCK_N", "BLOCK_K", "PRECISION")}
    dense = {**tiles, "A_STRIDE": dim, "GATHER": True, "K": dim // 2, "N": hidden}
    pointers_dense = {"a_ptr": "fp32", "idx_ptr": "i32", "w_ptr": mlp, "out_ptr": mlp}
    sources["column_dense"] = (_dense_silu_kernel, _signature(_dense_silu_kernel, pointers_dense, dense), dense)
    hidden_stage = {**dense, "A_STRIDE": hidden, "GATHER": False, "K": hidden}
    signature = _signature(_dense_silu_kernel, {**pointers_dense, "a_ptr": mlp}, hidden_stage)
    sources["column_dense_hidden"] = (_dense_silu_kernel, signature, hidden_stage)
    for reverse in (False, True):
        affine = {**{k: sizes[k] for k in ("D", "SPLIT", "REST", "H")}, **tiles, "REVERSE": reverse}
        name = "column_affine_inverse" if reverse else "column_affine_forward"
        sources[name] = (_affine_kernel, _signature(_affine_kernel, pointers, affine), affine)
    return sources


def _cuobjdump() -> str | None:
    import triton

    try:
        return triton.knobs.nvidia.cuobjdump.path
    except (AttributeError, RuntimeError):  # triton < 3.4 has no knobs; or the wheel lacks the binary
        return shutil.which("cuobjdump")


def resource_usage(cubin: bytes) -> dict:
    """``{"registers": REG, "spill_bytes": STACK}`` per thread of a one-kernel cubin (``None``s if cuobjdump
    is missing or says nothing we can read)."""
    tool = _cuobjdump()
    if tool is None:
        return {"registers": None, "spill_bytes": None}
    with tempfile.TemporaryDirectory(prefix="curvedit-cubin-") as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        report = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, timeout=60).stdout
    found = dict(re.findall(r"\b(REG|STACK):(\d+)", report))
    return {"registers": int(found["REG"]) if "REG" in found else None,
            "spill_bytes": int(found["STACK"]) if "STACK" in found else None}


def compile_sm90(fn, signature: dict, constexprs: dict, config: LaunchConfig) -> dict:
    """Build one kernel for sm_90; returns its shared memory in bytes, whether it fits an H100 block, and its
    registers and spill bytes per thread (``resource_usage``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # Pointers get the 16-byte divisibility hint the JIT gives torch allocations, as in a real launch.
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if signature[name][0] == "*"}
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    shared = int(compiled.metadata.shared)
    return {"shared": shared, "fits": shared <= SM90_SHARED_LIMIT, **resource_usage(compiled.asm["cubin"]),
            "triton": triton.__version__}


COLUMN_KERNELS = tuple(k for k in KERNELS if k.startswith("column_"))


def all_jobs() -> list[str]:
    """Every ``precision/config/kernel`` combination a GPU may launch: the autotuner's fused-kernel candidates
    and the column-parallel kernels' one configuration."""
    fused = [f"{p}/{c.name}/{k}" for p in GPU_CONFIGS for c in GPU_CONFIGS[p] for k in KERNELS
             if k not in COLUMN_KERNELS]
    return fused + [f"{p}/{c.name}/{k}" for p, c in COLUMN_GPU_CONFIGS.items() for k in COLUMN_KERNELS]


def run_job(job: str, dim: int, hidden: int, layers: int) -> dict:
    """Compile one ``precision/config/kernel`` job; errors are reported in the result, not raised."""
    parts = job.split("/")
    if len(parts) != 3 or parts[0] not in PRECISIONS or parts[2] not in KERNELS:
        raise ValueError(f"unknown job {job!r}; jobs look like {all_jobs()[0]!r} "
                         f"(precisions {sorted(PRECISIONS)}, kernels {list(KERNELS)})")
    precision, config_name, kernel = parts
    config = LaunchConfig.from_name(config_name)
    start = time.perf_counter()
    try:
        result = compile_sm90(*kernel_sources(precision, config, dim, hidden, layers)[kernel], config)
    except Exception as exc:  # report every failing configuration, not just the first
        result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    return {"precision": precision, "config": config_name, "kernel": kernel, **result,
            "seconds": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--job", action="append", help="precision/config/kernel, repeatable; default: all")
    args = parser.parse_args(argv)
    for job in args.job or all_jobs():
        print(json.dumps(run_job(job, args.dim, args.hidden, args.layers)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
