"""Timing for ``curvedit bench engine``: one sample per call on the CPU, CUDA-event time over back-to-back calls on
a GPU, and the machine's own matmul rate as the yardstick for "% of peak"."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sampler(fn: Callable[[], object], device: str) -> Callable[[], float]:
    """A function that takes one timing sample of ``fn``: seconds per call (on CUDA: event time over enough
    back-to-back calls to last ≥ 1 ms, divided by their count)."""
    if not device.startswith("cuda"):
        def sample() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        return sample
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    inner = max(1, min(200, int(1e-3 / max(time.perf_counter() - t0, 1e-6))))

    def sample_cuda() -> float:
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / inner

    return sample_cuda


def time_call(fn: Callable[[], object], device: str, repeats: int, warmup: int, best: bool = False) -> float:
    """Median (``best``: minimum) seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    sample = sampler(fn, device)
    samples = [sample() for _ in range(repeats)]
    return min(samples) if best else statistics.median(samples)


def matmul_rate(device: str, dtype: torch.dtype, n: int, tf32: bool = False, repeats: int = 7) -> float:
    """GFLOP/s of an ``n×n @ n×n`` ``torch.matmul`` (the machine's own GEMM ceiling for that precision): the
    best of ``repeats`` calls, since a ceiling is what the hardware reaches when nothing else interferes."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        seconds = time_call(lambda: torch.matmul(a, b), device, repeats, warmup=2, best=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2.0 * n**3 / seconds / 1e9


def measure_peaks(device: str, quick: bool) -> dict[str, float]:
    if device.startswith("cuda"):
        n = 2048 if quick else 8192
        return {"fp32": matmul_rate(device, torch.float32, n), "tf32": matmul_rate(device, torch.float32, n, True),
                "bf16": matmul_rate(device, torch.bfloat16, n)}
    return {"fp32": matmul_rate(device, torch.float32, 512 if quick else 2048)}
