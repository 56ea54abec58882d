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

import curvedit
from curvedit.client import Client

SERVE_LINE = re.compile(r"SERVING .* on 127\.0\.0\.1:(\d+);")


def start_server(bundle, *flags) -> tuple[subprocess.Popen, int]:
    """``curvedit serve`` on a free port; returns the process and its port once it says SERVING."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "curvedit.cli", "serve", "--model", str(bundle), "--port", "0",
                             "--metrics-port", "-1", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        match = SERVE_LINE.search(line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
            return proc, int(match.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stdout.read()}")


@pytest.mark.slow
def test_sigterm_during_load_loses_no_accepted_request(tiny_bundle):
    model = curvedit.load(tiny_bundle)
    proc, port = start_server(tiny_bundle, "--max-queue-delay-ms", "300", "--max-batch-size", "64",
                              "--grace-s", "20")
    try:
        client = Client(f"127.0.0.1:{port}", timeout=30)
        stub = client.stub
        from curvedit.client import edit_request

        # A burst that is sitting in the batcher (300 ms delay) when SIGTERM arrives: all must complete.
        burst = [stub.Edit.future(edit_request(seeds=[i], edits={"x": 1.0}), timeout=30) for i in range(24)]
        outcomes: list[grpc.StatusCode] = []
        stop = threading.Event()

        def keep_sending():  # steady load across the signal: every answer is OK or UNAVAILABLE, nothing else
            i = 1000
            while not stop.is_set():
                try:
                    got = client.edit(seeds=[i], edits={"x": 1.0}).latents
                    np.testing.assert_allclose(got, model.edit(model.sample(1, seed=i), {"x": 1.0}), atol=1e-5)
                    outcomes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    outcomes.append(exc.code())
                    if exc.code() == grpc.StatusCode.UNAVAILABLE:
                        return
                i += 1

        loader = threading.Thread(target=keep_sending)
        loader.start()
        time.sleep(0.15)
        proc.send_signal(signal.SIGTERM)
        results = [f.result() for f in burst]  # raises if any accepted request was lost
        for i, r in enumerate(results):
            z = np.frombuffer(r.latents.data, np.float32).reshape(1, 8)
            np.testing.assert_allclose(z, model.edit(model.sample(1, seed=i), {"x": 1.0}), atol=1e-5)
        loader.join(30)
        stop.set()
        assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
        assert proc.wait(30) == 0
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
