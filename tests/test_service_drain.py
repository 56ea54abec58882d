"""Drain beyond the happy path, on a real server: the grace running out, an EditStream open across the drain,
requests arriving while gRPC itself stops. No client ever sees CANCELLED that it did not cause."""

import queue
import threading

import grpc
import numpy as np
import pytest
from service_util import Gate, wait_until

import curvedit
from curvedit.client import edit_request
from curvedit.service import codec
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def gated(tiny_bundle):
    gate = Gate()
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=(str(tiny_bundle),), max_batch_size=4,
                         max_queue_delay_ms=0, max_queue_size=64, max_items_per_request=8, warmup=False)
    with BackgroundServer(config, compute_wrapper=gate.wrap) as bg:
        channel = grpc.insecure_channel(f"127.0.0.1:{bg.port}")
        yield bg, gate, pb_grpc.LatentEditServiceStub(channel)
        gate.open.set()
        channel.close()


def test_grace_running_out_fails_accepted_work_with_unavailable_not_cancelled(gated):
    bg, gate, stub = gated
    computing = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=60)
    assert gate.entered.wait(10)
    queued = stub.Edit.future(edit_request(seeds=[1, 2, 3], edits={"x": 1.0}), timeout=60)
    wait_until(lambda: len(bg.server.runner.queue) == 3, what="queued")
    drained = bg.drain(grace_s=0.3)
    assert drained.result(30) is False  # the grace ran out with work left
    for future in (computing, queued):
        with pytest.raises(grpc.RpcError) as info:
            future.result()
        assert info.value.code() == UNAVAILABLE, info.value.details()
        assert "drain grace of 0.3 s ran out" in info.value.details()
    gate.open.set()  # the compute thread finishes its batch; nobody is waiting for it any more


def test_edit_stream_open_across_a_drain_gets_every_answer_then_unavailable(gated, tiny_bundle):
    bg, gate, stub = gated
    outbox: queue.Queue = queue.Queue()

    def messages():
        while (m := outbox.get()) is not None:
            yield m

    answers, ended = [], {}

    def read():
        try:
            for a in stub.EditStream(messages(), timeout=60):
                answers.append(a)
        except grpc.RpcError as exc:
            ended["code"], ended["details"] = exc.code(), exc.details()

    reader = threading.Thread(target=read)
    reader.start()
    outbox.put(edit_request(seeds=[0], edits={"x": 1.0}, id="before"))
    assert gate.entered.wait(10)  # "before" is computing, held at the gate
    drained = bg.drain(grace_s=30)
    wait_until(lambda: bg.server.servicer.draining, what="draining")
    outbox.put(edit_request(seeds=[1], edits={"x": 1.0}, id="during"))
    wait_until(lambda: len(answers) == 1, what="the refusal of 'during'")
    assert answers[0].id == "during" and answers[0].error.code == UNAVAILABLE.value[0]
    assert "draining" in answers[0].error.message and answers[0].error.retry_pushback_ms > 0
    gate.open.set()
    assert drained.result(30) is True  # the accepted message finished
    reader.join(30)
    assert not reader.is_alive()
    outbox.put(None)
    model = curvedit.load(tiny_bundle)
    (before,) = [a for a in answers if a.id == "before"]
    np.testing.assert_allclose(codec.from_tensor(before.result.latents),
                               model.edit(model.sample(1, seed=0), {"x": 1.0}), atol=1e-5)
    assert ended.get("code") == UNAVAILABLE and "draining" in ended["details"]  # not CANCELLED


def test_requests_racing_the_stop_get_unavailable_never_cancelled(tiny_bundle):
    """Clients keep sending while the server drains and stops: each call is OK or UNAVAILABLE."""
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=(str(tiny_bundle),), max_batch_size=16,
                         max_queue_delay_ms=1, warmup=False)
    codes: list[grpc.StatusCode] = []
    stop = threading.Event()
    with BackgroundServer(config) as bg:
        target = f"127.0.0.1:{bg.port}"

        def client():
            with grpc.insecure_channel(target) as channel:
                edit = pb_grpc.LatentEditServiceStub(channel).Edit
                while not stop.is_set():
                    try:
                        edit(edit_request(seeds=[1, 2], edits={"x": 1.0}), timeout=10)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as exc:
                        codes.append(exc.code())

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: codes.count(grpc.StatusCode.OK) >= 20, what="load running")
        assert bg.drain(grace_s=5).result(30) is True
        wait_until(lambda: codes.count(UNAVAILABLE) >= 20, what="clients refused after the stop")
        stop.set()
        for t in threads:
            t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert set(codes) == {grpc.StatusCode.OK, UNAVAILABLE}, set(codes)
