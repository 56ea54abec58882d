"""A generator that samples (the PixelCNN) behind the real server on a loopback port: the sampling seed over the
native Generate and the Open Inference Protocol, requests with different seeds merged into one batch, and long
sampling stopped between steps when every request of its batch is gone."""

import json
import urllib.request

import grpc
import numpy as np
import pytest
import torch
from service_util import Gate, metric, wait_until

import curvedit
from curvedit.bundle import write_bundle
from curvedit.client import Client
from curvedit.models.labelled_editors import AxesEditor
from curvedit.models.pixelcnn import PixelCNN, PixelCNNConfig
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig

TINY = PixelCNNConfig(channels=8, layers=3, kernel=3, head=16, encoder_channels=8, encoder_hidden=32)


def pixelcnn_bundle(path, config: PixelCNNConfig):
    torch.manual_seed(0)
    return write_bundle(path, name="tiny-pixelcnn", version="0", generator=PixelCNN(config).eval(),
                        editors={"axes": (AxesEditor(8, ["x", "y"], [0, 1]), "supervised", {})},
                        default_editor="axes")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return pixelcnn_bundle(tmp_path_factory.mktemp("pixelcnn") / "b", TINY)


@pytest.fixture
def served(tiny):
    gate = Gate(opened=True)
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny),), engine="torch",
                         max_batch_size=16, max_queue_delay_ms=0, warmup=False)
    with BackgroundServer(config, compute_wrapper=gate.wrap) as bg, Client(f"127.0.0.1:{bg.port}") as client:
        yield bg, gate, client


def test_generate_takes_a_sampling_seed(served, tiny):
    _, _, client = served
    model = curvedit.load(tiny, engine="torch")
    z = model.sample(3, seed=1)
    seven = client.generate(latents=z, sampling_seed=7)
    assert (seven == model.generate(z, seed=7)).all()
    assert (client.generate(latents=z[1:2], sampling_seed=7) == seven[1:2]).all()
    assert (client.generate(latents=z) == model.generate(z)).all()  # unset: seed 0, as the API's default
    assert (client.generate(latents=z, sampling_seed=0) == model.generate(z)).all()
    assert not (client.generate(latents=z, sampling_seed=8) == seven).all()


def test_a_seed_out_of_range_is_invalid(served):
    _, _, client = served
    with pytest.raises(grpc.RpcError) as info:
        client.generate(seeds=[0], sampling_seed=2**63)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "seed" in info.value.details()


def test_requests_with_different_seeds_share_a_batch(served, tiny):
    """Three requests queue behind a running batch, each with its own seed; they run as one batch of 3 and each
    gets its own seed's images."""
    bg, gate, client = served
    gate.open.clear()
    model = curvedit.load(tiny, engine="torch")
    z = model.sample(4, seed=3)
    first = client.stub.Generate.future(_request(z[:1], 5), timeout=60)
    assert gate.entered.wait(10)
    calls = [client.stub.Generate.future(_request(z[i : i + 1], seed), timeout=60)
             for i, seed in ((1, 11), (2, 12), (3, None))]
    wait_until(lambda: len(bg.server.runner.queue) == 3, what="three queued items")
    gate.open.set()
    for call, (i, seed) in zip([first, *calls], ((0, 5), (1, 11), (2, 12), (3, None)), strict=True):
        images = np.frombuffer(call.result().images.data, np.uint8).reshape(1, 16, 16, 3)
        assert (images == model.generate(z[i : i + 1], seed=seed)).all(), (i, seed)
    assert gate.items == [1, 3]


def test_the_open_inference_protocol_takes_the_seed_parameter(served, tiny):
    bg, _, _ = served
    model = curvedit.load(tiny, engine="torch")
    z = model.sample(2, seed=4)
    body = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, 8], "data": z.flatten().tolist()},
                       {"name": "t", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 0.0, 1.0, 0.0]}],
            "outputs": [{"name": "images"}], "parameters": {"seed": 21}}

    def infer(payload):
        request = urllib.request.Request(f"http://127.0.0.1:{bg.server.http_port}/v2/models/tiny-pixelcnn/infer",
                                         json.dumps(payload).encode(), {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=60).read())

    images = np.array(infer(body)["outputs"][0]["data"], np.uint8).reshape(2, 16, 16, 3)
    assert (images == model.generate(model.edit(z, {"x": 1.0}), seed=21)).all()
    with pytest.raises(urllib.error.HTTPError) as info:
        infer({**body, "parameters": {"seed": "21"}})
    assert info.value.code == 400 and "seed" in info.value.read().decode()


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    """Full size, so that 64 images take seconds to sample on the CPU."""
    return pixelcnn_bundle(tmp_path_factory.mktemp("pixelcnn-full") / "b", PixelCNNConfig())


@pytest.mark.in_process
@pytest.mark.parametrize("ending", ["deadline", "cancel"])
def test_sampling_stops_between_steps_when_its_requests_are_gone(slow, ending):
    """A call whose deadline passes (or that is cancelled) while its batch samples ends DEADLINE_EXCEEDED (or
    CANCELLED); the batch stops within a few of its 256 steps instead of finishing, and the server goes on."""
    config = ServeConfig(port=0, http_port=-1, metrics_port=0, models=(str(slow),), engine="torch",
                         max_batch_size=64, max_items_per_request=64, warmup=False)
    with BackgroundServer(config) as bg, Client(f"127.0.0.1:{bg.port}", timeout=60) as client:
        port = bg.server.metrics_port
        z = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
        call = client.stub.Generate.future(_request(z, 1), timeout=0.5 if ending == "deadline" else 60)
        wait_until(lambda: bg.server.runner.busy, what="the batch computing")
        if ending == "cancel":
            call.cancel()
        else:
            with pytest.raises(grpc.RpcError) as info:
                call.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: metric(port, "curvedit_sampling_steps_total") > 0, timeout=30,
                   what="the stopped batch's steps counted")
        stopped_at = metric(port, "curvedit_sampling_steps_total")
        assert 0 < stopped_at < 200, f"the abandoned batch ran {stopped_at} of 256 steps"
        assert not bg.server.runner.busy
        code = "DEADLINE_EXCEEDED" if ending == "deadline" else "CANCELLED"
        wait_until(lambda: metric(port, "grpc_server_handled_total", grpc_method="Generate", grpc_code=code) == 1)
        assert client.generate(latents=z[:1], sampling_seed=1).shape == (1, 16, 16, 3)  # still serving
        assert metric(port, "curvedit_sampling_steps_total") == stopped_at + 256


def _request(z, seed):
    from curvedit.service import codec
    from curvedit.v1 import latent_edit_pb2 as pb

    request = pb.GenerateRequest(latents=codec.to_tensor(np.ascontiguousarray(z, np.float32)))
    if seed is not None:
        request.sampling_seed = seed
    return request


def test_serve_runs_every_shipped_model_but_the_sampler_unless_it_is_named():
    """Its warm-up samples every batch bucket (48 s with the auto engine on 2 cores): ``--model`` names it."""
    from curvedit.service.models import default_models

    assert default_models()[0] == "shapes32"
    assert set(default_models()) == set(curvedit.list_models()) - {"shapes-pixelcnn"}
