"""The scale-out benchmark's load reaches every front end, and its CPU-µs per request counts every call paid for.

A real ``curvedit serve --workers 2`` on a loopback port, driven by the benchmark's own client processes: each
front-end process must use CPU (the kernel gives each TCP connection to one front end, so a load generator with
one connection per client process loads a single front end half the time, as run W1's N = 2 cells did), and the
calls counted for CPU include the warm-up the server worked through.
"""

import sys

import numpy as np
import pytest

from curvedit.bench.load import ServerProcess
from curvedit.bench.scale import CONNECTIONS_PER_CLIENT, cpu_seconds, family, load


@pytest.mark.slow
def test_the_load_reaches_every_front_end_and_counts_the_warm_up(tiny_bundle):
    server = ServerProcess([sys.executable, "-m", "curvedit.cli", "serve", "--model", str(tiny_bundle),
                            "--port", "0", "--http-port", "-1", "--metrics-port", "-1", "--workers", "2",
                            "--engine", "onnxruntime"])
    try:
        pids = family(server.proc.pid)
        assert len(pids) >= 4  # supervisor, engine, two front ends (and multiprocessing's resource tracker)
        before = {pid: cpu_seconds([pid]) for pid in pids}
        latents = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32)
        concurrency = 2 * CONNECTIONS_PER_CLIENT
        requests, latencies, errors, completed = load(f"127.0.0.1:{server.port}", latents, concurrency,
                                                      duration=1.5, processes=2)
        used = {pid: cpu_seconds([pid]) - before[pid] for pid in pids}
    finally:
        server.stop()
    assert errors == 0 and requests == len(latencies) > 0
    assert completed > requests  # the 0.5 s warm-up's calls are counted too
    busy = sorted(used.values(), reverse=True)
    # Two front ends and the engine each worked; an idle process (the supervisor) uses next to nothing.
    assert busy[2] > 0.05, used
