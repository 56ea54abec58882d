"""A real server on 127.0.0.1 port 0 with the tiny bundle: results, bad inputs, health, reflection, metrics."""

import asyncio
import concurrent.futures
import threading
import time
import urllib.request
from typing import ClassVar

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

import curvedit
from curvedit.client import Client, edit_request
from curvedit.service import codec
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig
from curvedit.service.models import ServedModel
from curvedit.v1 import latent_edit_pb2 as pb
from curvedit.v1 import latent_edit_pb2_grpc as pb_grpc

ATOL = 1e-5


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics as {"name{label=value,...}": value}, parsed by prometheus_client's parser."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def total(samples: dict[str, float], name: str, **labels) -> float:
    want = [f"{k}={v}" for k, v in labels.items()]
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and all(w in k for w in want))


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return curvedit.load(tiny_bundle)


@pytest.fixture(scope="module")
def server(tiny_bundle):
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny_bundle),), max_batch_size=16,
                         max_queue_delay_ms=20, max_items_per_request=64, max_queue_size=256)
    with BackgroundServer(config) as bg:
        yield bg


@pytest.fixture(scope="module")
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=30) as c:
        yield c


def test_edit_latents_equals_model_edit(client, model):
    z = model.sample(5, seed=3)
    result = client.edit(latents=z, edits={"x": 1.0, "scale": -0.5})
    np.testing.assert_allclose(result.latents, model.edit(z, {"x": 1.0, "scale": -0.5}), atol=ATOL)
    assert (result.model, result.model_version) == (model.name, model.version)


def test_edit_seeds_and_per_item_amounts_equal_model_edit(client, model):
    amounts = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)  # > max_batch: 3 chunks
    result = client.edit(seeds=range(100, 140), amounts=amounts)
    np.testing.assert_allclose(result.latents, model.edit(model.sample(40, seed=100), amounts), atol=ATOL)


def test_amount_columns_by_name(client, model):
    z = model.sample(3, seed=0)
    result = client.edit(latents=z, amounts=np.full((3, 1), 0.7, np.float32), directions=["scale"])
    np.testing.assert_allclose(result.latents, model.edit(z, {"scale": 0.7}), atol=ATOL)


def test_edit_with_images_and_generate(client, model):
    z = model.sample(2, seed=1)
    result = client.edit(latents=z, edits={"y": 1.0}, images="png")
    np.testing.assert_array_equal(result.images, model.generate(model.edit(z, {"y": 1.0})))
    np.testing.assert_array_equal(client.generate(seeds=[0, 1]), model.generate(model.sample(2, seed=0)))


def test_traverse_streams_frames_in_order(client, model):
    frames = list(client.traverse("x", seed=5, start=-1, stop=1, steps=5, images="raw"))
    assert [f.index for f in frames] == list(range(5))
    amounts = np.linspace(-1, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal([f.amount for f in frames], amounts)
    z = model.sample(1, seed=5)
    for f, amount in zip(frames, amounts, strict=True):
        edited = model.edit(z, {"x": float(amount)})
        np.testing.assert_allclose(codec.from_tensor(f.latent), edited, atol=ATOL)
        np.testing.assert_array_equal(codec.from_images(f.image), model.generate(edited))
    assert codec.from_images(frames[0].image).shape == (1, 32, 32, 3)


def test_traverse_with_only_seed_direction_and_steps_spans_the_default_range(client, model):
    frames = list(client.stub.Traverse(pb.TraverseRequest(seed=5, direction="y", steps=4), timeout=10))
    amounts = np.linspace(-1.5, 1.5, 4, dtype=np.float32)
    np.testing.assert_array_equal([f.amount for f in frames], amounts)
    latents = np.concatenate([codec.from_tensor(f.latent) for f in frames])
    np.testing.assert_allclose(latents, model.edit(np.repeat(model.sample(1, seed=5), 4, 0),
                                                   np.outer(amounts, [0, 1, 0, 0]).astype(np.float32)), atol=ATOL)
    assert len({row.tobytes() for row in latents}) == 4  # no two frames alike
    assert all(f.image.format == pb.IMAGE_FORMAT_RAW and list(f.image.shape) == [1, 32, 32, 3] for f in frames)


def test_an_unspecified_image_format_means_raw_in_every_rpc(client):
    unspecified = pb.IMAGE_FORMAT_UNSPECIFIED
    edited = client.stub.Edit(pb.EditRequest(seeds=pb.Seeds(seeds=[0]), return_images=True,
                                             image_format=unspecified), timeout=10)
    generated = client.stub.Generate(pb.GenerateRequest(seeds=pb.Seeds(seeds=[0]), image_format=unspecified),
                                     timeout=10)
    (frame,) = client.stub.Traverse(pb.TraverseRequest(seed=0, direction="x", steps=1, image_format=unspecified),
                                    timeout=10)
    assert edited.images.format == generated.images.format == frame.image.format == pb.IMAGE_FORMAT_RAW
    assert codec.from_images(edited.images).shape == codec.from_images(generated.images).shape == (1, 32, 32, 3)


def test_edit_stream_answers_each_message_including_errors(client, model):
    requests = [edit_request(seeds=[i], edits={"x": 1.0}, id=f"r{i}") for i in range(6)]
    requests.insert(2, edit_request(seeds=[0], edits={"nope": 1.0}, id="bad"))
    answers = {a.id: a for a in client.edit_stream(requests)}
    assert set(answers) == {f"r{i}" for i in range(6)} | {"bad"}
    assert answers["bad"].code == grpc.StatusCode.INVALID_ARGUMENT and "nope" in answers["bad"].message
    np.testing.assert_allclose(answers["r4"].latents, model.edit(model.sample(1, seed=4), {"x": 1.0}), atol=ATOL)


def test_list_and_get_model(client, model):
    (info,) = client.list_models()
    assert (info.name, info.version, info.latent_dim) == ("tiny", "0.0.1", 8)
    assert [d.name for d in info.editors[0].directions] == model.directions
    assert client.get_model("tiny").default_editor == "decurved"


def test_concurrent_single_item_requests_are_merged(server, client, model):
    before = scrape(server.server.metrics_port)
    z = model.sample(32, seed=7)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: client.edit(latents=z[i : i + 1], edits={"x": 0.5}).latents, range(32)))
    np.testing.assert_allclose(np.concatenate(results), model.edit(z, {"x": 0.5}), atol=ATOL)
    after = scrape(server.server.metrics_port)
    items = total(after, "nv_inference_count") - total(before, "nv_inference_count")
    batches = total(after, "nv_inference_exec_count") - total(before, "nv_inference_exec_count")
    assert items == 32 and items / batches > 1, f"{items} items in {batches} batches: nothing was merged"


def _tensor(shape, data: bytes) -> pb.Tensor:
    return pb.Tensor(shape=shape, data=data)


NAN = np.array([[np.nan] + [0.0] * 7], np.float32)
BAD = {
    "byte length": (pb.EditRequest(latents=_tensor([1, 8], b"\0" * 31)), grpc.StatusCode.INVALID_ARGUMENT,
                    "bytes"),
    "wrong width": (pb.EditRequest(latents=codec.to_tensor(np.zeros((1, 5)))), grpc.StatusCode.INVALID_ARGUMENT,
                    "latent dim is 8"),
    "3-d latents": (pb.EditRequest(latents=codec.to_tensor(np.zeros((1, 8, 1)))),
                    grpc.StatusCode.INVALID_ARGUMENT, "dimensions"),
    "nan": (pb.EditRequest(latents=codec.to_tensor(NAN)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    "inf amount": (edit_request(seeds=[0], edits={"x": float("inf")}), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
    "unknown direction": (edit_request(seeds=[0], edits={"zoom": 1}), grpc.StatusCode.INVALID_ARGUMENT, "zoom"),
    "unknown editor": (edit_request(seeds=[0], editor="gan"), grpc.StatusCode.INVALID_ARGUMENT, "unknown editor"),
    "empty batch": (pb.EditRequest(latents=codec.to_tensor(np.zeros((0, 8)))), grpc.StatusCode.INVALID_ARGUMENT,
                    "empty"),
    "no input": (pb.EditRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no input"),
    "too many items": (edit_request(seeds=range(65)), grpc.StatusCode.INVALID_ARGUMENT, "too many items"),
    "amounts shape": (edit_request(seeds=[0, 1], amounts=np.zeros((2, 3), np.float32)),
                      grpc.StatusCode.INVALID_ARGUMENT, "expected [n, K]"),
    "negative seed": (edit_request(seeds=[-1]), grpc.StatusCode.INVALID_ARGUMENT, "seeds must be >= 0"),
    "unknown model": (edit_request(seeds=[0], model="big"), grpc.StatusCode.NOT_FOUND, "no model named"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_its_code_and_the_server_keeps_serving(server, client, model, case):
    request, code, text = BAD[case]
    stub = pb_grpc.LatentEditServiceStub(client.channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Edit(request, timeout=10)
    assert info.value.code() == code and text in info.value.details()
    np.testing.assert_allclose(client.edit(seeds=[0], edits={"x": 1}).latents,
                               model.edit(model.sample(1, seed=0), {"x": 1}), atol=ATOL)


def test_unknown_model_in_get_model_is_not_found(client):
    with pytest.raises(grpc.RpcError) as info:
        client.get_model("nope")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_serving_and_reflection_lists_services(server, client):
    assert client.health() == "SERVING"
    assert client.health("curvedit.v1.LatentEditService") == "SERVING"
    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    (answer,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in answer.list_services_response.service}
    assert {"curvedit.v1.LatentEditService", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


EXPECTED_METRICS = [
    "grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
    "grpc_server_msg_received_total", "grpc_server_msg_sent_total",
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_pending_request_count", "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us",
    "curvedit_queue_wait_seconds_bucket", "curvedit_batch_compute_seconds_bucket",
    "curvedit_request_latency_seconds_bucket", "curvedit_batch_size_bucket", "curvedit_rejections_total",
]


@pytest.mark.parametrize("name", EXPECTED_METRICS)
def test_expected_metric_names_are_exported(server, client, name):
    list(client.edit_stream([edit_request(seeds=[0], edits={"x": 1.0}, id="m")]))
    with pytest.raises(grpc.RpcError):
        client.edit(seeds=[0], edits={"zz": 1.0})
    assert total(scrape(server.server.metrics_port), name) > 0 or any(
        k.startswith(name + "{") for k in scrape(server.server.metrics_port))


def test_handled_total_counts_codes(server, client):
    before = scrape(server.server.metrics_port)
    with pytest.raises(grpc.RpcError):
        client.edit(seeds=[0], model="nope")
    after = scrape(server.server.metrics_port)
    key = dict(grpc_method="Edit", grpc_code="NOT_FOUND")
    handled = "grpc_server_handled_total"
    assert total(after, handled, **key) - total(before, handled, **key) == 1


class GatedWarmup(ServedModel):
    """The real model, whose warm-up waits for the test and records the batch sizes it ran."""

    gate = threading.Event()
    sizes: ClassVar[list[int]] = []

    def warm_up(self, max_batch_size, *cache_and_stop):
        self.gate.wait(30)
        edit = self.model.edit
        self.model.edit = lambda z, a, e: (self.sizes.append(len(z)), edit(z, a, e))[1]
        try:
            super().warm_up(max_batch_size, *cache_and_stop)
        finally:
            del self.model.edit


def test_health_says_serving_only_after_warm_up_ran_every_bucket(tiny_bundle):
    served = GatedWarmup(curvedit.load(tiny_bundle))
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, max_batch_size=8)
    bg = BackgroundServer(config, models={served.name: served})
    entering = threading.Thread(target=bg.__enter__)
    entering.start()
    try:
        deadline = time.monotonic() + 120
        while bg.port == 0:  # the server binds its port before warm-up starts
            assert time.monotonic() < deadline and entering.is_alive(), "the server never bound its port"
            threading.Event().wait(0.01)
        channel = grpc.insecure_channel(f"127.0.0.1:{bg.port}")
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10, wait_for_ready=True).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        GatedWarmup.gate.set()
        entering.join(60)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        assert sorted(set(GatedWarmup.sizes)) == [1, 2, 4, 8]
        channel.close()
    finally:
        GatedWarmup.gate.set()
        entering.join(60)
        bg.__exit__(None, None, None)


def test_async_client(server, model):
    from curvedit.client import AsyncClient

    async def scenario():
        async with AsyncClient(f"127.0.0.1:{server.port}") as c:
            assert await c.health() == "SERVING"
            one = await c.edit(seeds=[3], edits={"x": 1.0})
            streamed = [r async for r in c.edit_stream([edit_request(seeds=[4], edits={"x": 1.0}, id="a")])]
            frames = [f async for f in c.traverse("y", seed=0, steps=3)]
            images = await c.generate(seeds=[0])
            return one, streamed, frames, images, await c.list_models()

    one, streamed, frames, images, models = asyncio.run(scenario())
    np.testing.assert_allclose(one.latents, model.edit(model.sample(1, seed=3), {"x": 1.0}), atol=ATOL)
    np.testing.assert_allclose(streamed[0].latents, model.edit(model.sample(1, seed=4), {"x": 1.0}), atol=ATOL)
    assert len(frames) == 3 and images.shape == (1, 32, 32, 3) and models[0].name == "tiny"


@pytest.mark.parametrize(("request_", "text"), [
    (pb.TraverseRequest(seed=0, direction="zoom", steps=3), "zoom"),
    (pb.TraverseRequest(seed=0, direction="x", steps=0), "steps must be >= 1"),
    (pb.TraverseRequest(seed=0, direction="x", steps=3, start=float("nan"), stop=1.0), "must be finite"),
    (pb.TraverseRequest(seed=0, direction="x", steps=3, start=0.0, stop=float("inf")), "must be finite"),
])
def test_traverse_bad_input_is_invalid_argument(client, request_, text):
    with pytest.raises(grpc.RpcError) as info:
        list(client.stub.Traverse(request_, timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and text in info.value.details()


def test_shell_client_commands(server, tmp_path, capsys, model):
    from curvedit.cli import main

    target = f"127.0.0.1:{server.port}"
    assert main(["client", "models", "--server", target]) == 0
    assert "tiny 0.0.1 d=8" in capsys.readouterr().out
    assert main(["client", "health", "--server", target]) == 0
    assert main(["client", "edit", "--server", target, "--seed", "0", "--count", "3", "--edit", "scale=1",
                 "--out", str(tmp_path)]) == 0
    edited = np.load(tmp_path / "edited.npy")
    np.testing.assert_allclose(edited, model.edit(model.sample(3, seed=0), {"scale": 1.0}), atol=ATOL)
    assert (tmp_path / "edit.png").stat().st_size > 0
