"""`curvedit serve` as a real subprocess: SIGTERM during load loses no accepted request, then it exits."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from service_util import metric, wait_until

import curvedit
from curvedit.client import Client, edit_request
from curvedit.service import codec

SERVE_LINE = re.compile(r"SERVING .* on 127\.0\.0\.1:(\d+); metrics (?:http://[\d.]+:(\d+)/metrics|off)")


def start_server(bundle, *flags) -> tuple[subprocess.Popen, int, int | None]:
    """``curvedit serve`` on a free port; returns the process, its port and metrics port once it says SERVING."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "curvedit.cli", "serve", "--model", str(bundle), "--port", "0",
                             "--http-port", "0", "--metrics-port", "-1", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        match = SERVE_LINE.search(line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, int(match.group(1)), int(match.group(2)) if match.group(2) else None
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stdout.read()}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "workers-2"])
def test_sigterm_during_load_loses_no_accepted_request(tiny_bundle, workers):
    model = curvedit.load(tiny_bundle)
    # A burst waits in the batcher when SIGTERM arrives; a steady loader keeps sending across it. A batch leaves
    # at once while its model's compute is idle, so the burst is sent while one large request (16,384 images in
    # chunks of 64, seconds of work) is computed: the burst's batch queues behind those chunks.
    proc, port, metrics_port = start_server(tiny_bundle, "--max-queue-delay-ms", "1000", "--max-batch-size", "64",
                                            "--max-items-per-request", "16384", "--max-queue-size", "32768",
                                            "--grace-s", "30", "--metrics-port", "0", "--workers", workers)
    try:
        client = Client(f"127.0.0.1:{port}", timeout=30)
        outcomes: list[grpc.StatusCode] = []
        mismatches: list[int] = []
        first_ok = threading.Event()

        def keep_sending():  # every answer is OK (and right) or UNAVAILABLE, which ends the loader
            i = 1000
            while True:
                # Generate: another batch key than the burst (so the burst's own 1 s timer holds it), and another
                # RPC method, so the burst's Edit calls can be counted on their own below.
                try:
                    got = client.generate(seeds=[i]).astype(np.int16)
                    if np.abs(got - model.generate(model.sample(1, seed=i))).max() > 1:
                        mismatches.append(i)
                    outcomes.append(grpc.StatusCode.OK)
                    first_ok.set()
                except grpc.RpcError as exc:
                    outcomes.append(exc.code())
                    if exc.code() != grpc.StatusCode.OK:
                        return
                i += 1

        loader = threading.Thread(target=keep_sending)
        loader.start()
        assert first_ok.wait(30), f"the loader got no answer: {outcomes}"
        edits_started = metric(metrics_port, "grpc_server_started_total", grpc_method="Edit")
        blocker = client.stub.Edit.future(edit_request(seeds=range(5000, 21384), edits={"x": 1.0}, images="raw"),
                                          timeout=120)
        time.sleep(0.1)
        burst = [client.stub.Edit.future(edit_request(seeds=[i], edits={"x": 1.0}), timeout=60) for i in range(24)]
        # Every burst call admitted before SIGTERM: an RPC is counted as started and admitted in one step of the
        # server's event loop (no await between), which the signal's handler cannot split. (The pending-items
        # gauge cannot say this: the blocker's queued chunks alone exceed 24.)
        wait_until(lambda: metric(metrics_port, "grpc_server_started_total", grpc_method="Edit")
                   >= edits_started + 1 + len(burst), timeout=10, what="every burst call admitted")
        proc.send_signal(signal.SIGTERM)
        results = [f.result() for f in burst]  # raises if any accepted request was lost
        assert codec.from_tensor(blocker.result().latents).shape == (16384, 8)
        for i, r in enumerate(results):
            expected = model.edit(model.sample(1, seed=i), {"x": 1.0})
            np.testing.assert_allclose(codec.from_tensor(r.latents), expected, atol=1e-5)
        loader.join(60)
        assert not loader.is_alive(), "the loader never saw the server go away"
        assert mismatches == []
        assert grpc.StatusCode.OK in outcomes and outcomes[-1] == grpc.StatusCode.UNAVAILABLE, outcomes
        assert set(outcomes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
        assert proc.wait(30) == 0
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_freezes_its_heap_once_warm_up_is_done(tiny_bundle):
    """``curvedit serve`` owns its process: the objects of loading are frozen out of the collector's full passes
    (``server.settle_heap``) before it says SERVING."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "curvedit.cli", "serve", "--model", str(tiny_bundle), "--port",
                             "0", "--http-port", "-1", "--metrics-port", "-1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if SERVE_LINE.search(line):
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    frozen = [re.search(r"heap settled: (\d+) objects frozen", line) for line in lines]
    counts = [int(m.group(1)) for m in frozen if m]
    assert counts and counts[-1] > 10_000, "".join(lines)
