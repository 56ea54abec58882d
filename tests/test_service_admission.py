"""Overload answered at once and counted, exactly; one poisoned request fails alone; a failing chunk fails its
request only. Real server on 127.0.0.1, the real engine behind a gate the test controls (so counts are exact)."""

import asyncio
import collections

import grpc
import numpy as np
import pytest
from service_util import Gate, metric, wait_until

import curvedit
from curvedit import InputError
from curvedit.client import edit_request
from curvedit.service import codec
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig
from curvedit.service.models import EDIT
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return curvedit.load(tiny_bundle)


def serve(tiny_bundle, gate: Gate, **settings):
    config = ServeConfig(**{"port": 0, "http_port": 0, "metrics_port": 0, "models": (str(tiny_bundle),),
                            "max_batch_size": 4, "max_queue_delay_ms": 0, "max_queue_size": 8,
                            "max_items_per_request": 4, "warmup": False, **settings})
    return BackgroundServer(config, compute_wrapper=gate.wrap)


def stub_of(bg):
    channel = grpc.insecure_channel(f"127.0.0.1:{bg.port}")
    return channel, pb_grpc.LatentEditServiceStub(channel)


def occupy(bg, gate, stub, queued_items: int):
    """One 1-item request computing (held at the gate) and ``queued_items`` more waiting in the queue."""
    running = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=60)
    assert gate.entered.wait(10)
    queued = stub.Edit.future(edit_request(seeds=range(1, 1 + queued_items), edits={"x": 1.0}), timeout=60)
    wait_until(lambda: len(bg.server.runner.queue) == queued_items, what="items queued")
    return [running, queued]


def outcomes(futures) -> collections.Counter:
    counts = collections.Counter()
    for f in futures:
        try:
            f.result()
            counts["OK"] += 1
        except grpc.RpcError as exc:
            counts[exc.code().name] += 1
    return counts


@pytest.mark.parametrize(("settings", "reason", "text"), [
    ({"max_concurrent_requests": 3, "max_queue_size": 64}, "overloaded", "server busy"),
    ({"max_concurrent_requests": 64, "max_queue_size": 5}, "queue_full", "queue full"),
])
def test_twelve_requests_at_a_full_server_exactly_one_admitted_eleven_refused(tiny_bundle, model, settings, reason,
                                                                               text):
    gate = Gate()
    with serve(tiny_bundle, gate, **settings) as bg:
        channel, stub = stub_of(bg)
        held = occupy(bg, gate, stub, queued_items=4)  # 2 requests in progress, 4 of the queue used
        burst = [stub.Edit.future(edit_request(seeds=[10 + i], edits={"x": 1.0}), timeout=60) for i in range(12)]
        wait_until(lambda: sum(f.done() for f in burst) == 11, what="11 refusals")
        refused = [f for f in burst if f.done()]
        assert {f.exception().code() for f in refused} == {RESOURCE_EXHAUSTED}
        assert all(text in f.exception().details() for f in refused)
        assert all(int(dict(f.exception().trailing_metadata())["grpc-retry-pushback-ms"]) >= 10 for f in refused)
        port = bg.server.metrics_port
        assert metric(port, "curvedit_rejections_total", reason=reason) == 11
        assert metric(port, "grpc_server_handled_total", grpc_code="RESOURCE_EXHAUSTED") == 11
        assert metric(port, "nv_inference_request_failure", reason="REJECTED") == 11
        gate.open.set()
        assert outcomes(held + burst) == {"OK": 3, "RESOURCE_EXHAUSTED": 11}
        (admitted,) = [f for f in burst if f not in refused]
        np.testing.assert_allclose(codec.from_tensor(admitted.result().latents),
                                   model.edit(model.sample_seeds([10 + burst.index(admitted)]), {"x": 1.0}),
                                   atol=1e-5)
        assert metric(port, "grpc_server_handled_total", grpc_code="CANCELLED") == 0
        channel.close()


def test_a_deadline_that_cannot_be_met_is_refused_at_admission(tiny_bundle):
    gate = Gate()
    with serve(tiny_bundle, gate, max_queue_size=64, max_items_per_request=8) as bg:
        channel, stub = stub_of(bg)
        for bucket in (1, 2, 4):  # what a batch of this key costs here, as warm-up would have measured it
            bg.server.cost.set(("tiny", "decurved", EDIT), bucket, 2.0)
        held = occupy(bg, gate, stub, queued_items=8)  # 2 batches queued ahead: about 4 s of work
        short = [stub.Edit.future(edit_request(seeds=[20 + i], edits={"x": 1.0}), timeout=3.0) for i in range(10)]
        patient = stub.Edit.future(edit_request(seeds=[30], edits={"x": 1.0}), timeout=60)
        wait_until(lambda: all(f.done() for f in short), what="refusals")  # answered now, not after 3 s
        assert {f.exception().code() for f in short} == {RESOURCE_EXHAUSTED}
        assert "cannot finish within your deadline" in short[0].exception().details()
        assert not patient.done()
        port = bg.server.metrics_port
        assert metric(port, "curvedit_rejections_total", reason="deadline_unmeetable") == 10
        gate.open.set()
        assert outcomes([*held, patient]) == {"OK": 3}
        assert metric(port, "grpc_server_handled_total", grpc_code="DEADLINE_EXCEEDED") == 0
        channel.close()


@pytest.mark.slow
def test_two_thousand_concurrent_calls_are_all_answered_none_cancelled(tiny_bundle):
    """gRPC core cancels calls silently when too many wait for the application; none may be CANCELLED here."""
    gate = Gate()
    with serve(tiny_bundle, gate) as bg:
        channel, stub = stub_of(bg)
        held = occupy(bg, gate, stub, queued_items=4)

        async def burst(n: int) -> collections.Counter:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{bg.port}") as aio:
                edit = pb_grpc.LatentEditServiceStub(aio).Edit
                request = edit_request(seeds=[1, 2, 3, 4], edits={"x": 1.0})

                async def one():
                    try:
                        await edit(request, timeout=60)
                        return "OK"
                    except grpc.aio.AioRpcError as exc:
                        return exc.code().name
                tasks = [asyncio.create_task(one()) for _ in range(n)]
                while sum(t.done() for t in tasks) < n - 1:  # all refused but the one that fits the queue
                    await asyncio.sleep(0.01)
                refused = collections.Counter(t.result() for t in tasks if t.done())
                gate.open.set()
                return refused, collections.Counter(await asyncio.gather(*tasks))

        refused, counts = asyncio.run(burst(2000))
        assert refused == {"RESOURCE_EXHAUSTED": 1999} and counts == {"OK": 1, "RESOURCE_EXHAUSTED": 1999}
        port = bg.server.metrics_port
        assert metric(port, "curvedit_rejections_total", reason="queue_full") == 1999
        assert metric(port, "grpc_server_handled_total", grpc_code="CANCELLED") == 0
        assert outcomes(held) == {"OK": 2}
        channel.close()


def test_one_poisoned_request_in_a_merged_batch_fails_alone(tiny_bundle, model):
    """20 valid image edits merged with one whose amount makes the flow's result infinite: 20 OK, 1 refused."""
    gate = Gate()
    with serve(tiny_bundle, gate, max_batch_size=64, max_queue_size=256, max_items_per_request=64) as bg:
        channel, stub = stub_of(bg)
        blocker = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=60)
        assert gate.entered.wait(10)
        valid = [stub.Edit.future(edit_request(seeds=[i], edits={"y": 0.5}, images="raw"), timeout=60)
                 for i in range(1, 21)]
        poison = stub.Edit.future(edit_request(seeds=[99], edits={"scale": 3e38}, images="raw"), timeout=60)
        wait_until(lambda: len(bg.server.runner.queue) == 21, what="all 21 queued")
        gate.open.set()
        blocker.result()
        with pytest.raises(grpc.RpcError) as info:
            poison.result()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not finite" in info.value.details()
        for i, f in enumerate(valid, start=1):
            response = f.result()
            z = model.edit(model.sample_seeds([i]), {"y": 0.5})
            np.testing.assert_allclose(codec.from_tensor(response.latents), z, atol=1e-5)
            np.testing.assert_array_equal(codec.from_images(response.images), model.generate(z))
        assert gate.items == [1, 21], f"batches {gate.items}: the 21 requests were not merged"
        channel.close()


def poison_row(value: float, error=InputError):
    """A compute failure for any batch holding a latent row whose first value is ``value``."""
    def fail(batch):
        z, _ = batch.inputs()
        return error("latents contains a poisoned row") if (z[: batch.size, 0] == value).any() else None
    return fail


def test_a_batch_failing_on_its_inputs_is_rerun_request_by_request(tiny_bundle, model):
    gate = Gate(fail=poison_row(7.0))
    with serve(tiny_bundle, gate, max_batch_size=16, max_queue_size=64, max_items_per_request=16) as bg:
        channel, stub = stub_of(bg)
        blocker = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=60)
        assert gate.entered.wait(10)
        z = model.sample(6, seed=40)
        bad_z = z.copy()
        bad_z[2, 0] = 7.0
        good = [stub.Edit.future(edit_request(latents=z[i : i + 1], edits={"x": 1.0}), timeout=60)
                for i in range(5)]
        bad = stub.Edit.future(edit_request(latents=bad_z[2:3], edits={"x": 1.0}), timeout=60)
        wait_until(lambda: len(bg.server.runner.queue) == 6, what="all queued")
        gate.open.set()
        blocker.result()
        for i, f in enumerate(good):
            np.testing.assert_allclose(codec.from_tensor(f.result().latents), model.edit(z[i : i + 1], {"x": 1.0}),
                                       atol=1e-5)
        with pytest.raises(grpc.RpcError) as info:
            bad.result()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "poisoned" in info.value.details()
        assert gate.items == [1, 6, 1, 1, 1, 1, 1, 1]  # the merged batch failed, then each request ran alone
        channel.close()


def test_a_value_error_from_inside_the_engine_is_internal_logged_once_with_its_id_and_not_rerun(tiny_bundle, model,
                                                                                              caplog):
    """Only ``InputError`` (validation) means a bad request; any other error below it is the server's fault."""
    gate = Gate(fail=poison_row(7.0, error=ValueError))
    with serve(tiny_bundle, gate, max_batch_size=16, max_queue_size=64, max_items_per_request=16) as bg:
        channel, stub = stub_of(bg)
        blocker = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=60)
        assert gate.entered.wait(10)
        z = model.sample(3, seed=40)
        z[1, 0] = 7.0
        merged = [stub.Edit.future(edit_request(latents=z[i : i + 1], edits={"x": 1.0}), timeout=60)
                  for i in range(3)]
        wait_until(lambda: len(bg.server.runner.queue) == 3, what="all queued")
        gate.open.set()
        blocker.result()
        for f in merged:  # the whole batch failed: no request is blamed for it
            with pytest.raises(grpc.RpcError) as info:
                f.result()
            assert info.value.code() == grpc.StatusCode.INTERNAL and "see the server log" in info.value.details()
        ids = {f.exception().details().split("(request ")[1].split(")")[0] for f in merged}
        assert len(ids) == 3
        assert gate.items == [1, 3], "an internal error must not be rerun request by request"
        logged = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
        assert len(logged) == 3 and {m.split("(request ")[1].split(")")[0] for m in logged} == ids
        port = bg.server.metrics_port
        assert metric(port, "nv_inference_request_failure", reason="BACKEND") == 3
        assert metric(port, "grpc_server_handled_total", grpc_code="INTERNAL") == 3
        assert metric(port, "curvedit_rejections_total", reason="invalid") == 0
        channel.close()


def test_a_failing_chunk_fails_its_request_and_its_other_chunks_never_run(tiny_bundle, model, caplog):
    gate = Gate(fail=lambda batch: RuntimeError("device lost") if batch.size == 4 else None)
    with serve(tiny_bundle, gate, max_batch_size=4, max_queue_size=64, max_items_per_request=12) as bg:
        channel, stub = stub_of(bg)
        blocker = stub.Edit.future(edit_request(seeds=[0], edits={"x": 1.0}), timeout=60)
        assert gate.entered.wait(10)
        split = stub.Edit.future(edit_request(seeds=range(1, 13), edits={"x": 1.0}), timeout=60)  # 3 chunks
        wait_until(lambda: len(bg.server.runner.queue) == 12, what="3 chunks queued")
        gate.open.set()
        blocker.result()
        with pytest.raises(grpc.RpcError) as info:
            split.result()
        assert info.value.code() == grpc.StatusCode.INTERNAL and "see the server log" in info.value.details()
        after = stub.Edit(edit_request(seeds=[50, 51, 52], edits={"x": 1.0}), timeout=10)  # still serving
        np.testing.assert_allclose(codec.from_tensor(after.latents),
                                   model.edit(model.sample_seeds([50, 51, 52]), {"x": 1.0}), atol=1e-5)
        assert gate.items == [1, 4, 3], f"batches {gate.items}: the failed request's other chunks were computed"
        port = bg.server.metrics_port
        assert metric(port, "curvedit_dropped_items_total", reason="cancelled") == 8
        assert metric(port, "nv_inference_request_failure", reason="BACKEND") == 1
        assert sum("internal error" in r.getMessage() for r in caplog.records) == 1  # logged once
        channel.close()
