"""Overload, deadlines and cancellation, made deterministic: the real engine behind a gate the test controls."""

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import curvedit
from curvedit.client import edit_request
from curvedit.service import codec
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc


class Gate:
    """Wraps the server's real compute: records what reaches it, blocks until the test opens the gate."""

    def __init__(self):
        self.open = threading.Event()
        self.entered = threading.Event()
        self.items = []

    def wrap(self, compute):
        def gated(batch):
            self.items.append(batch.size)
            self.entered.set()
            if not self.open.wait(30):
                raise TimeoutError("gate never opened")
            return compute(batch)
        return gated


def metric(port: int, name: str, **labels) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def gated(tiny_bundle):
    gate = Gate()
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny_bundle),), max_batch_size=4,
                         max_queue_delay_ms=0, max_queue_size=4, max_items_per_request=4, warmup=False)
    with BackgroundServer(config, compute_wrapper=gate.wrap) as bg:
        channel = grpc.insecure_channel(f"127.0.0.1:{bg.port}")
        yield bg, gate, pb_grpc.LatentEditServiceStub(channel)
        gate.open.set()
        channel.close()


def wait_until(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def fill(bg, gate, stub):
    """One request computing (blocked at the gate) and 4 items queued: the queue (4 items) is full."""
    running = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=30)
    assert gate.entered.wait(10)
    queued = stub.Edit.future(edit_request(seeds=[1, 2, 3, 4], edits={"x": 1.0}), timeout=30)
    wait_until(lambda: len(bg.server.runner.queue) == 4)
    return running, queued


def test_full_queue_rejects_exactly_the_overflow_with_pushback_trailer(gated, tiny_bundle):
    bg, gate, stub = gated
    running, queued = fill(bg, gate, stub)
    codes, trailers = [], []
    for i in range(10):
        with pytest.raises(grpc.RpcError) as info:
            stub.Edit(edit_request(seeds=[10 + i], edits={"x": 1.0}), timeout=10)
        codes.append(info.value.code())
        trailers.append(dict(info.value.trailing_metadata()))
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 10
    assert all(int(t["grpc-retry-pushback-ms"]) >= 10 for t in trailers)
    assert "queue full" in info.value.details()
    gate.open.set()
    model = curvedit.load(tiny_bundle)
    np.testing.assert_allclose(codec.from_tensor(running.result().latents),
                               model.edit(model.sample(1, seed=0), {"x": 1.0}), atol=1e-5)
    np.testing.assert_allclose(codec.from_tensor(queued.result().latents),
                               model.edit(model.sample(4, seed=1), {"x": 1.0}), atol=1e-5)
    assert metric(bg.server.metrics_port, "curvedit_rejections_total", reason="queue_full") == 10
    assert metric(bg.server.metrics_port, "nv_inference_request_failure", reason="REJECTED") == 10
    stub.Edit(edit_request(seeds=[0], edits={"x": 1.0}), timeout=10)  # still serving


def test_expired_deadline_never_reaches_compute(gated):
    bg, gate, stub = gated
    running = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=30)
    assert gate.entered.wait(10)
    late = stub.Edit.future(edit_request(seeds=[1, 2, 3], edits={"x": 1.0}), timeout=0.2)
    wait_until(lambda: len(bg.server.runner.queue) == 3)
    with pytest.raises(grpc.RpcError) as info:
        late.result()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    gate.open.set()
    running.result()
    stub.Edit(edit_request(seeds=[5], edits={"x": 1.0}), timeout=10)  # the next batch runs: stale entries gone
    assert gate.items == [1, 1], f"compute saw batches {gate.items}: the expired request's 3 items ran"
    port = bg.server.metrics_port
    assert metric(port, "curvedit_dropped_items_total", reason="deadline") == 3
    codes = {c: metric(port, "grpc_server_handled_total", grpc_method="Edit", grpc_code=c)
             for c in ("OK", "DEADLINE_EXCEEDED", "CANCELLED")}
    assert codes == {"OK": 2, "DEADLINE_EXCEEDED": 1, "CANCELLED": 0}


def test_cancelled_request_never_reaches_compute(gated):
    bg, gate, stub = gated
    running = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=30)
    assert gate.entered.wait(10)
    gone = stub.Edit.future(edit_request(seeds=[1, 2], edits={"x": 1.0}), timeout=30)
    wait_until(lambda: len(bg.server.runner.queue) == 2)
    gone.cancel()
    wait_until(lambda: metric(bg.server.metrics_port, "grpc_server_handled_total", grpc_code="CANCELLED") == 1)
    gate.open.set()
    running.result()
    stub.Edit(edit_request(seeds=[5], edits={"x": 1.0}), timeout=10)
    assert gate.items == [1, 1]
    assert metric(bg.server.metrics_port, "curvedit_dropped_items_total", reason="cancelled") == 2


def test_draining_server_refuses_new_work_but_finishes_accepted(gated, tiny_bundle):
    bg, gate, stub = gated
    running, queued = fill(bg, gate, stub)
    drained = bg.drain(grace_s=20)
    wait_until(lambda: bg.server.servicer.draining)
    with pytest.raises(grpc.RpcError) as info:
        stub.Edit(edit_request(seeds=[9], edits={"x": 1.0}), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "draining" in info.value.details()
    gate.open.set()
    assert running.result().latents.data and queued.result().latents.data
    assert drained.result(30) is True


@pytest.mark.in_process
def test_broken_metrics_never_fail_a_request(tiny_bundle):
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=(str(tiny_bundle),), max_batch_size=4,
                         warmup=False)
    with BackgroundServer(config) as bg:
        def broken(*args):
            raise RuntimeError("metrics backend is broken")

        bg.server.metrics._child = broken
        channel = grpc.insecure_channel(f"127.0.0.1:{bg.port}")
        stub = pb_grpc.LatentEditServiceStub(channel)
        model = curvedit.load(tiny_bundle)
        response = stub.Edit(edit_request(seeds=[0, 1], edits={"x": 1.0}), timeout=10)
        np.testing.assert_allclose(codec.from_tensor(response.latents),
                                   model.edit(model.sample(2, seed=0), {"x": 1.0}), atol=1e-5)
        with pytest.raises(grpc.RpcError) as info:
            stub.Edit(edit_request(seeds=[0], edits={"nope": 1.0}), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        channel.close()


def test_metrics_port_in_use_says_the_fix(tiny_bundle):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = ServeConfig(port=0, http_port=0, metrics_port=busy.getsockname()[1], models=(str(tiny_bundle),),
                             warmup=False)
        with pytest.raises(ValueError, match="--metrics-port"), BackgroundServer(config):
            pass
