"""``curvedit.client`` before several servers: calls spread per request over every server, a server killed with
-9 costs no call (each one it held is retried on the other), and a refusal's pushback is honoured before the
retry. Real servers: two ``curvedit serve`` processes, and a real gRPC server that refuses on purpose."""

import signal
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from service_util import metric, wait_until
from test_service_warmup import start_cli, wait_for_line

import curvedit
from curvedit.client import Client
from curvedit.service.channels import RETRY_ATTEMPTS, balanced_target
from curvedit.service.errors import PUSHBACK_KEY
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc


def test_targets_one_several_or_a_dns_name():
    assert balanced_target("127.0.0.1:5") == ("127.0.0.1:5", [])  # one server: the channel gRPC always made
    target, options = balanced_target("127.0.0.1:5, 127.0.0.2:6")
    assert target == "ipv4:127.0.0.1:5,127.0.0.2:6"
    assert '"round_robin"' in dict(options)["grpc.service_config"]
    assert balanced_target(["[::1]:5", "[::1]:6"])[0] == "ipv6:[::1]:5,[::1]:6"
    target, options = balanced_target("localhost:7,127.0.0.1:8")
    assert target.startswith("ipv4:127.0.0.1:7") and dict(options)["grpc.default_authority"] == "localhost:7"
    target, options = balanced_target("dns:///headless.curvedit.svc:50051")
    assert target == "dns:///headless.curvedit.svc:50051" and "grpc.service_config" in dict(options)
    for bad, says in (("", "no server given"), ("10.0.0.1:5,dns:///x:1", "each be host:port"),
                      ("a:b,c:d", "each be host:port"), ("no-such-host.invalid:5,127.0.0.1:6", "cannot resolve")):
        with pytest.raises(ValueError, match=says):
            balanced_target(bad)


class Server:
    """One ``curvedit serve`` process on free ports."""

    def __init__(self, bundle):
        self.proc, self.lines = start_cli("--model", str(bundle), "--metrics-port", "0", "--engine", "onnxruntime",
                                          "--max-batch-size", "16")
        line = wait_for_line(self.lines, r"SERVING .* on 127\.0\.0\.1:\d+; metrics http://127\.0\.0\.1:\d+")
        self.port = int(line.split(" on 127.0.0.1:")[1].split(";")[0])
        self.metrics_port = int(line.split("metrics http://127.0.0.1:")[1].split("/")[0])

    def edits_answered(self) -> float:
        return metric(self.metrics_port, "grpc_server_handled_total", grpc_method="Edit", grpc_code="OK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.mark.slow
def test_calls_spread_over_two_servers_and_a_killed_one_costs_no_call(tiny_bundle):
    model = curvedit.load(tiny_bundle, engine="onnxruntime")
    servers = [Server(tiny_bundle), Server(tiny_bundle)]
    try:
        z = model.sample(4, seed=1)
        want = model.edit(z, {"x": 1.0})
        with Client([f"127.0.0.1:{s.port}" for s in servers], timeout=30) as client:
            for _ in range(40):
                np.testing.assert_allclose(client.edit(latents=z, edits={"x": 1.0}).latents, want, atol=1e-4)
            answered = [s.edits_answered() for s in servers]
            assert sum(answered) == 40 and min(answered) >= 10, answered  # round robin: per call, not per client

            # Calls keep coming from 8 threads while one server dies: every one of them must succeed.
            failures, done, stop = [], [0], threading.Event()

            def caller():
                while not stop.is_set():
                    try:
                        client.edit(latents=z, edits={"x": 1.0})
                        done[0] += 1
                    except grpc.RpcError as exc:
                        failures.append(exc.code())

            threads = [threading.Thread(target=caller) for _ in range(8)]
            for t in threads:
                t.start()
            wait_until(lambda: done[0] >= 50, what="calls before the kill")
            servers[0].proc.send_signal(signal.SIGKILL)
            at_kill = done[0]
            wait_until(lambda: done[0] >= at_kill + 200, timeout=30, what="calls after the kill")
            stop.set()
            for t in threads:
                t.join(30)
            assert failures == [], failures[:5]
            before = servers[1].edits_answered()
            for _ in range(10):
                client.edit(latents=z, edits={"x": 1.0})
            assert servers[1].edits_answered() == before + 10  # all to the survivor
    finally:
        for s in servers:
            s.stop()


class Refusing(pb_grpc.LatentEditServiceServicer):
    """Refuses the first ``ListModels`` with RESOURCE_EXHAUSTED and a pushback of ``pushback_ms``, as curvedit's
    admission does; answers the next. Records when each attempt arrived."""

    def __init__(self, pushback_ms: int):
        self.pushback_ms, self.arrivals = pushback_ms, []

    def ListModels(self, request, context):
        self.arrivals.append(time.monotonic())
        if len(self.arrivals) == 1:
            context.set_trailing_metadata(((PUSHBACK_KEY, str(self.pushback_ms)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
        return pb.ListModelsResponse()


@pytest.fixture
def refusing():
    servicer = Refusing(pushback_ms=400)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_LatentEditServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


def test_a_refusal_is_retried_after_the_servers_pushback(refusing):
    servicer, port = refusing
    with Client(f"127.0.0.1:{port},127.0.0.1:{port}", timeout=10) as client:
        assert client.list_models() == []
    assert len(servicer.arrivals) == 2, servicer.arrivals
    waited = servicer.arrivals[1] - servicer.arrivals[0]
    assert waited >= 0.4, f"retried {waited * 1e3:.0f} ms after a 400 ms pushback"


def test_one_server_keeps_plain_errors_without_retries(refusing):
    """A single target is the channel it always was: the refusal reaches the caller at once."""
    servicer, port = refusing
    with Client(f"127.0.0.1:{port}", timeout=10) as client, pytest.raises(grpc.RpcError) as caught:
        client.list_models()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and len(servicer.arrivals) == 1
    assert RETRY_ATTEMPTS >= 2
