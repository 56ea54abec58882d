"""Compile-only checks: the kernel configurations the GPU autotuner may pick are built for an H100/H200 (sm_90)
on this CPU-only machine; their shared memory must fit one block (the interpreter never enforces that), and
they must not spill registers to local memory at the benchmark's width (d = h = 512), read off each cubin with
the cuobjdump that Triton's wheel bundles (the check skips where there is none).

Compiling needs Triton's real JIT, but conftest sets TRITON_INTERPRET=1 (kernel modules must see it at import)
and under it ``@triton.jit`` returns interpreter objects that cannot be lowered. So the compiles run in fresh
subprocesses with the variable removed, two at once (one per CPU core here).

What is built, to keep this under a minute on two cores: the edit kernel at every (precision, tile config) —
it inlines both coupling directions with the same tiles, so it is a superset of the single-layer kernels — and
the single-layer kernels at each precision family's largest tiles, and the column-parallel kernels (small, about a
second each) at their one configuration per precision. fp16 shares bf16's tiles and 16-bit tensor-core path
(``GPU_CONFIGS``), so it is not built separately.
"""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from curvedit.kernels.compile_check import COLUMN_KERNELS, resource_usage, run_job
from curvedit.kernels.configs import COLUMN_GPU_CONFIGS, GPU_CONFIGS, SM90_SHARED_LIMIT, LaunchConfig

JOBS = [f"{p}/{c.name}/edit" for p in ("fp32", "tf32", "bf16") for c in GPU_CONFIGS[p]]
JOBS += [f"{p}/{GPU_CONFIGS[p][-1].name}/{k}" for p in ("fp32", "bf16")
         for k in ("coupling_forward", "coupling_inverse")]
JOBS += [f"{p}/{COLUMN_GPU_CONFIGS[p].name}/{k}" for p in ("fp32", "tf32", "bf16") for k in COLUMN_KERNELS]


def _compile(jobs: list[str]) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its current default
    command = [sys.executable, "-m", "curvedit.kernels.compile_check"]
    command += [arg for job in jobs for arg in ("--job", job)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"compile_check failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict]:
    halves = [JOBS[0::2], JOBS[1::2]]
    with ThreadPoolExecutor(len(halves)) as pool:
        rows = [row for half in pool.map(_compile, halves) for row in half]
    return {f"{row['precision']}/{row['config']}/{row['kernel']}": row for row in rows}


@pytest.mark.parametrize("job", JOBS)
def test_kernel_compiles_for_sm90_within_shared_memory(compiled, job):
    row = compiled[job]
    assert "error" not in row, row.get("error")
    assert 0 < row["shared"] <= SM90_SHARED_LIMIT, row


@pytest.mark.parametrize("job", JOBS)
def test_kernel_does_not_spill_registers_at_d512(compiled, job):
    """Spilled registers go to local memory, which every access then pays for in the inner loops; the shipped
    configurations are chosen so that the kernels the engine launches (edit, column-parallel) need none. The
    single-layer kernels are checked at the largest tiles only (see ``GPU_CONFIGS`` for the 8-byte exceptions)."""
    row = compiled[job]
    if "error" in row:
        pytest.fail(row["error"])
    if row["spill_bytes"] is None:
        pytest.skip("no cuobjdump to read the cubin's resource usage with")
    assert row["spill_bytes"] == 0, (f"{job} spills {row['spill_bytes']} B per thread with {row['registers']} "
                                     f"registers under triton {row['triton']}")
    assert 0 < row["registers"] <= 255, row


@pytest.mark.parametrize("config", sorted({c for configs in GPU_CONFIGS.values() for c in configs}, key=str))
def test_config_names_round_trip(config):
    assert LaunchConfig.from_name(config.name) == config


@pytest.mark.parametrize("job", ["bf16/b16n64k64w4s3/nope", "fp8/b16n64k64w4s3/edit", "bf16/b16n64/edit", "edit"])
def test_unknown_jobs_are_refused_before_compiling(job):
    with pytest.raises(ValueError, match=r"unknown job|not of the form"):
        run_job(job, 512, 512, 8)


def test_a_file_that_is_no_cubin_has_no_resource_figures():
    assert resource_usage(b"not a cubin") == {"registers": None, "spill_bytes": None}
