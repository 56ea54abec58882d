"""``curvedit serve --workers 2`` through the real CLI: two front-end processes (no torch) before one engine
process: native traffic and bad input, one merged /metrics, and the faults: a front end or the engine killed
with -9, SIGTERM. (Every service suite, the Open Inference Protocol's included, also runs against front ends before
an engine process: `pytest --serve-workers 2`, which `make test` runs.)"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from service_util import metric, wait_until
from test_service_warmup import start_cli, wait_for_line

import curvedit
from curvedit.client import Client
from curvedit.service.client import edit_request
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
SERVING = re.compile(r"SERVING .* on 127\.0\.0\.1:(\d+); metrics http://127\.0\.0\.1:(\d+)/metrics; "
                     r"OIP HTTP http://127\.0\.0\.1:(\d+)/v2; 2 front-end processes and 1 engine process "
                     r"\(pids (\d+), (\d+), (\d+)\)")


class Workers:
    """``curvedit serve --workers 2`` on free ports; ``port``, ``metrics_port``, ``http_port``, the pids."""

    def __init__(self, *flags):
        self.proc, self.lines = start_cli("--workers", "2", "--metrics-port", "0", "--http-port", "0", *flags)
        match = SERVING.search(wait_for_line(self.lines, SERVING.pattern))
        self.port, self.metrics_port, self.http_port = (int(match.group(i)) for i in (1, 2, 3))
        self.engine_pid, *self.front_pids = (int(match.group(i)) for i in (4, 5, 6))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def workers(tiny_bundle, tiny_vae_bundle):
    server = Workers("--model", str(tiny_bundle), "--model", str(tiny_vae_bundle), "--max-batch-size", "16",
                     "--max-items-per-request", "64", "--max-queue-size", "256", "--engine", "onnxruntime",
                     "--ready-when", "all")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def models(tiny_bundle, tiny_vae_bundle):
    return {"tiny": curvedit.load(tiny_bundle, engine="onnxruntime"),
            "tinyvae": curvedit.load(tiny_vae_bundle, engine="onnxruntime")}


def test_front_ends_import_no_torch_and_stay_small(workers):
    for pid in workers.front_pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps and "triton" not in maps, f"front end {pid} loaded torch"
    engine = Path(f"/proc/{workers.engine_pid}/maps").read_text()
    assert "libtorch" in engine  # the engine holds the models
    imported = subprocess.run([sys.executable, "-c", "import sys, curvedit.service.frontend, "
                               "curvedit.service.workers; print(sorted(m for m in sys.modules if m.split('.')[0] "
                               "in ('torch', 'triton', 'onnxruntime')))"], capture_output=True, text=True)
    assert imported.stdout.strip() == "[]", imported.stdout + imported.stderr


def test_native_traffic_gives_what_the_model_gives(workers, models):
    tiny, vae = models["tiny"], models["tinyvae"]
    with Client(f"127.0.0.1:{workers.port}") as client:
        z = tiny.sample(5, seed=3)
        np.testing.assert_allclose(client.edit(z, edits={"x": 1.0}).latents, tiny.edit(z, {"x": 1.0}), atol=1e-5)
        result = client.edit(seeds=range(20), edits={"y": -0.5}, images="raw")  # two chunks of 16 and 4
        np.testing.assert_allclose(result.latents, tiny.edit(tiny.sample(20, seed=0), {"y": -0.5}), atol=1e-5)
        assert np.abs(result.images.astype(int) - tiny.generate(result.latents).astype(int)).max() <= 1
        images = vae.generate(vae.sample(3, seed=1))
        np.testing.assert_allclose(client.encode(images, model="tinyvae"), vae.encode(images), atol=1e-5)
        stream = [edit_request(latents=z, edits={"x": float(i)}, id=str(i)) for i in range(3)]
        assert len(list(client.edit_stream(stream))) == 3
        assert [m.name for m in client.list_models()] == ["tiny", "tinyvae"]
        with pytest.raises(grpc.RpcError) as bad:
            client.edit(z, edits={"no-such-direction": 1.0})
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "known directions" in bad.value.details()


def test_one_scrape_adds_up_every_process(workers):
    before = metric(workers.metrics_port, "nv_inference_request_success", model="tiny")
    with Client(f"127.0.0.1:{workers.port}") as client:
        for i in range(6):
            client.edit(seeds=[i], edits={"x": 1.0})
    # Counted by the front end that answered; the one scrape adds the two front ends up.
    assert metric(workers.metrics_port, "nv_inference_request_success", model="tiny") == before + 6
    text = urllib.request.urlopen(f"http://127.0.0.1:{workers.metrics_port}/metrics").read().decode()
    assert text.count("# TYPE nv_inference_request_success ") == 1
    # Headers as one process writes them, which Prometheus parses (an "unknown" type fails the whole scrape).
    assert "# TYPE nv_inference_request_success untyped" in text
    assert "# TYPE curvedit_rejections_total counter" in text
    assert not [line for line in text.splitlines() if line.startswith("# TYPE") and line.endswith(" unknown")]
    # Gauges are the engine's: one loaded-version series, not one per process.
    assert metric(workers.metrics_port, "curvedit_model_version_loaded", model="tiny") == 1
    assert metric(workers.metrics_port, "nv_inference_count", model="tiny") >= 6  # batches: the engine's


def _calls_on_many_connections(port: int, n: int, request) -> tuple[list, list[threading.Thread]]:
    """``n`` calls, each on its own connection (so the kernel spreads them over the front ends). A local subchannel
    pool per channel: channels to one address in one process otherwise share a connection, and with it one front
    end, which made the killed-front-end test fail whenever that front end was the victim."""
    outcomes: list = []

    def call():
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            try:
                pb_grpc.LatentEditServiceStub(channel).Edit(request, timeout=60)
                outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                outcomes.append(exc.code())

    threads = [threading.Thread(target=call) for _ in range(n)]
    for thread in threads:
        thread.start()
    return outcomes, threads


def test_a_killed_front_end_is_restarted_and_its_calls_end_unavailable(tiny_bundle):
    server = Workers("--model", str(tiny_bundle), "--max-items-per-request", "16384", "--max-queue-size", "65536")
    try:
        heavy = edit_request(seeds=range(2048), edits={"x": 1.0}, images="raw")  # 16 of them: seconds of work
        outcomes, threads = _calls_on_many_connections(server.port, 16, heavy)
        time.sleep(0.5)
        victim = server.front_pids[0]
        os.kill(victim, signal.SIGKILL)
        for thread in threads:
            thread.join(90)
        assert not any(t.is_alive() for t in threads), "a call hung"
        assert set(outcomes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes
        assert grpc.StatusCode.OK in outcomes  # the other front end's calls finished
        wait_for_line(server.lines, rf"front end 0 process \(pid {victim}\) died with exit code -9; restarting")
        wait_for_line(server.lines, r"the front end 0 process restarted \(pid \d+\)")
        with Client(f"127.0.0.1:{server.port}") as client:
            wait_until(lambda: client.health() == "SERVING", timeout=30, what="SERVING again")
            assert client.edit(seeds=[1], edits={"x": 1.0}).latents.shape == (1, 8)
    finally:
        assert server.stop() == 0


def test_a_killed_engine_fails_calls_in_flight_says_not_serving_and_comes_back(tiny_bundle):
    server = Workers("--model", str(tiny_bundle), "--max-items-per-request", "16384", "--max-queue-size", "65536")
    try:
        heavy = edit_request(seeds=range(8192), edits={"x": 1.0}, images="raw")
        outcomes, threads = _calls_on_many_connections(server.port, 4, heavy)
        time.sleep(0.5)
        os.kill(server.engine_pid, signal.SIGKILL)
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads), "a call hung"
        assert grpc.StatusCode.UNAVAILABLE in outcomes and set(outcomes) <= {grpc.StatusCode.OK,
                                                                            grpc.StatusCode.UNAVAILABLE}
        with Client(f"127.0.0.1:{server.port}") as client:
            seen = []
            wait_until(lambda: seen.append(client.health()) or seen[-1] == "NOT_SERVING" or
                       "SERVING" in seen[:-1], timeout=10, what="NOT_SERVING while the engine is away")
            wait_for_line(server.lines, r"the engine process restarted")
            wait_until(lambda: client.health() == "SERVING", timeout=60, what="SERVING with the new engine")
            assert client.edit(seeds=[1], edits={"x": 1.0}).latents.shape == (1, 8)
    finally:
        assert server.stop() == 0


def test_a_supervisor_killed_with_minus_9_leaves_no_worker_behind(tiny_bundle):
    server = Workers("--model", str(tiny_bundle))
    os.kill(server.proc.pid, signal.SIGKILL)
    server.proc.wait(10)
    for pid in (server.engine_pid, *server.front_pids):
        wait_until(lambda pid=pid: _gone(pid), timeout=15, what=f"worker {pid} gone")


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (exited; whoever adopted it has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_admission_counts_the_engines_queue_once(tiny_bundle):
    """A front end's items already in the engine's queue are not counted again: with 16,384 items computing
    (one request, chunks of 64), a request of 2,000 still fits a queue of 20,000."""
    server = Workers("--model", str(tiny_bundle), "--max-batch-size", "64", "--max-items-per-request", "16384",
                     "--max-queue-size", "20000", "--engine", "onnxruntime")
    try:
        with Client(f"127.0.0.1:{server.port}", timeout=120) as client:  # one connection: one front end
            blocker = client.stub.Edit.future(edit_request(seeds=range(16384), edits={"x": 1.0}, images="raw"),
                                              timeout=120)
            wait_until(lambda: metric(server.metrics_port, "nv_inference_exec_count", model="tiny") >= 4,
                       what="the engine's first batches answered")
            assert not blocker.done(), "the large request finished too soon to test anything"
            second = client.edit(seeds=range(2000), edits={"x": 1.0})
            assert second.latents.shape == (2000, 8)
            assert not blocker.done()  # admitted while the 16,384 were still queued or computing
            assert blocker.result().latents.shape == [16384, 8]
    finally:
        assert server.stop() == 0
