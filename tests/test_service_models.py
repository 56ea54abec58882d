"""Several models on one server: each request reaches the model it names; two models of one name are refused."""

import shutil

import grpc
import numpy as np
import pytest
import torch
from conftest import randomize
from service_util import metric

import curvedit
from curvedit.bundle import write_bundle
from curvedit.client import Client
from curvedit.models.editors import DeCurvEd
from curvedit.models.generator import Generator, GeneratorConfig
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig
from curvedit.service.models import load_models

ATOL = 1e-5


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory):
    """A second model, ``other``: latent dim 6, directions a and b (so a mix-up cannot go unnoticed)."""
    torch.manual_seed(1)
    generator = Generator(GeneratorConfig(latent_dim=6)).eval()
    editor = randomize(DeCurvEd(6, ["a", "b"], hidden=16, layers=2, mixing=True), seed=1).eval()
    return write_bundle(tmp_path_factory.mktemp("bundles") / "other", name="other", version="2.0.0",
                        generator=generator, editors={"decurved": (editor, "supervised", {})},
                        default_editor="decurved", seed=1)


@pytest.fixture(scope="module")
def two(tiny_bundle, other_bundle):
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny_bundle), str(other_bundle)),
                         max_batch_size=8, max_queue_delay_ms=1)
    with BackgroundServer(config) as bg, Client(f"127.0.0.1:{bg.port}", timeout=30) as client:
        yield bg, client


def test_list_models_gives_both_in_order_the_first_is_default(two):
    _, client = two
    infos = client.list_models()
    assert [(i.name, i.version, i.latent_dim) for i in infos] == [("tiny", "0.0.1", 8), ("other", "2.0.0", 6)]
    assert client.get_model().name == "tiny"
    assert [d.name for d in client.get_model("other").editors[0].directions] == ["a", "b"]


def test_each_request_is_computed_by_the_model_it_names(two, tiny_bundle, other_bundle):
    bg, client = two
    tiny, other = curvedit.load(tiny_bundle), curvedit.load(other_bundle)
    by_other = client.edit(seeds=[3, 4], edits={"b": 0.7}, model="other", images="raw")
    np.testing.assert_allclose(by_other.latents, other.edit(other.sample_seeds([3, 4]), {"b": 0.7}), atol=ATOL)
    np.testing.assert_array_equal(by_other.images, other.generate(by_other.latents))
    assert (by_other.model, by_other.model_version) == ("other", "2.0.0")
    by_default = client.edit(seeds=[3], edits={"x": 0.7})
    np.testing.assert_allclose(by_default.latents, tiny.edit(tiny.sample_seeds([3]), {"x": 0.7}), atol=ATOL)
    frames = list(client.traverse("a", seed=1, steps=3, model="other"))
    assert list(frames[0].latent.shape) == [1, 6] and frames[0].model_version == "2.0.0"
    port = bg.server.metrics_port
    assert metric(port, "nv_inference_request_success", model="other", version="2.0.0") >= 2
    assert metric(port, "nv_inference_request_success", model="tiny", version="0.0.1") >= 1


def test_a_direction_of_one_model_is_unknown_to_the_other(two):
    _, client = two
    with pytest.raises(grpc.RpcError) as info:
        client.edit(seeds=[0], edits={"a": 1.0})  # "a" is other's; the default model is tiny
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown direction 'a'" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.edit(latents=np.zeros((1, 8), np.float32), edits={"a": 1.0}, model="other")
    assert "latent dim is 6" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.edit(seeds=[0], edits={"a": 1.0}, model="third")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "['tiny', 'other']" in info.value.details()


def test_two_models_of_one_name_are_refused(tiny_bundle, tmp_path):
    copy = shutil.copytree(tiny_bundle, tmp_path / "tiny-again")
    with pytest.raises(ValueError, match="two models are named 'tiny'"):
        load_models((str(tiny_bundle), str(copy)), "auto")
