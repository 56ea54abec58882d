"""The Translate RPC on a real server on loopback: photo-style faces in (latents, seeds or image files), the
avatar model's latents (and images) out, equal to the API; every bad request answered with its status."""

import json
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest

import curvedit
from curvedit.client import Client
from curvedit.models.datasets import make_dataset
from curvedit.models.files import to_uint8
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig


@pytest.fixture(scope="module")
def server():
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=("faces-photo", "faces-avatar"),
                         engine="onnxruntime", max_batch_size=8)
    with BackgroundServer(config) as bg:
        yield bg


@pytest.fixture(scope="module")
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def models():
    return tuple(curvedit.load(name, engine="onnxruntime") for name in ("faces-photo", "faces-avatar"))


def test_model_info_lists_the_alignment(client):
    infos = {info.name: info for info in client.list_models()}
    assert list(infos["faces-photo"].alignments) == ["faces-avatar"]
    assert list(infos["faces-avatar"].alignments) == ["faces-photo"]  # the photo's map, read backwards


def test_avatar_latents_translate_back_to_photo_latents(client, models):
    photo, avatar = models
    z = photo.sample(4, seed=9)
    there, _ = client.translate("faces-avatar", latents=z, model="faces-photo")
    back, _ = client.translate("faces-photo", latents=there, model="faces-avatar")
    np.testing.assert_allclose(back, avatar.translate(there, to="faces-photo"), atol=1e-5)
    np.testing.assert_allclose(back, z, atol=1e-3)


def test_latents_translate_as_in_the_api(client, models):
    photo, avatar = models
    z = photo.sample(5, seed=4)
    latents, images = client.translate("faces-avatar", latents=z, model="faces-photo", images="raw")
    expected = photo.translate(z, to="faces-avatar")
    np.testing.assert_allclose(latents, expected, atol=1e-5)
    assert images.shape == (5, 64, 64, 3)
    assert np.abs(images.astype(int) - avatar.generate(expected).astype(int)).max() <= 1


def test_seeds_and_image_files_translate(client, models):
    photo, _ = models
    by_seed, none = client.translate("faces-avatar", seeds=[7, 8], model="faces-photo")
    assert none is None
    np.testing.assert_allclose(by_seed, photo.translate(photo.sample(2, seed=7), to="faces-avatar"), atol=1e-5)
    faces = to_uint8(make_dataset("faces-photo", 0).held_out(3))
    from_files, pngs = client.translate("faces-avatar", input_images=faces, model="faces-photo", images="png")
    np.testing.assert_allclose(from_files, photo.translate(faces, to="faces-avatar"), atol=1e-4)
    assert pngs.shape == (3, 64, 64, 3)


@pytest.mark.parametrize("kwargs, code, message", [
    ({"to": "shapes-vae", "model": "faces-photo"}, grpc.StatusCode.INVALID_ARGUMENT, "no alignment to"),
    ({"to": "faces-avatar", "model": "faces-avatar"}, grpc.StatusCode.INVALID_ARGUMENT, "no alignment to"),
    ({"to": "faces-avatar", "model": "nobody"}, grpc.StatusCode.NOT_FOUND, "no model named"),
    ({"to": "", "model": "faces-photo"}, grpc.StatusCode.INVALID_ARGUMENT, "name the target"),
])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(client, models, kwargs, code, message):
    with pytest.raises(grpc.RpcError) as error:
        client.translate(latents=models[0].sample(1, seed=0), **kwargs)
    assert error.value.code() == code and message in error.value.details()
    assert client.translate("faces-avatar", seeds=[1], model="faces-photo")[0].shape == (1, 10)


def test_wrong_latent_width_is_invalid_argument(client):
    with pytest.raises(grpc.RpcError) as error:
        client.translate("faces-avatar", latents=np.zeros((2, 8), np.float32), model="faces-photo")
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "latent dim is 10" in error.value.details()


def test_images_of_a_target_the_server_does_not_serve_are_not_found(tmp_path, models):
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=("faces-photo",), engine="onnxruntime",
                         max_batch_size=4)
    with BackgroundServer(config) as bg, Client(f"127.0.0.1:{bg.port}", timeout=60) as c:
        latents, _ = c.translate("faces-avatar", seeds=[3])  # latents need only the bundle, not a served target
        np.testing.assert_allclose(latents, models[0].translate(models[0].sample(1, seed=3), to="faces-avatar"),
                                   atol=1e-5)
        with pytest.raises(grpc.RpcError) as error:
            c.translate("faces-avatar", seeds=[3], images="raw")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def _oip_infer(port: int, model: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_open_inference_protocol_translates_with_the_translate_to_parameter(server, models):
    """OIP over HTTP: ``translate_to`` turns ``z_edited`` into the target's latents of the edited input, and
    ``images`` into the target's images of them."""
    photo, avatar = models
    z = photo.sample(2, seed=11)
    t = np.zeros((2, 8), np.float32)
    t[:, photo.directions.index("smile")] = 1.0
    body = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, 10], "data": z.ravel().tolist()},
                       {"name": "t", "datatype": "FP32", "shape": [2, 8], "data": t.ravel().tolist()}],
            "parameters": {"translate_to": "faces-avatar"}}
    status, answer = _oip_infer(server.server.http_port, "faces-photo", body)
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    expected = photo.translate(photo.edit(z, t), to="faces-avatar")
    assert outputs["z_edited"]["shape"] == [2, 10] and outputs["images"]["shape"] == [2, 64, 64, 3]
    np.testing.assert_allclose(np.array(outputs["z_edited"]["data"], np.float32).reshape(2, 10), expected,
                               atol=1e-4)
    images = np.array(outputs["images"]["data"]).reshape(2, 64, 64, 3)
    assert np.abs(images - avatar.generate(expected).astype(int)).max() <= 1
    status, answer = _oip_infer(server.server.http_port, "faces-photo",
                                {**body, "parameters": {"translate_to": "shapes-vae"}})
    assert status == 400 and "no alignment to 'shapes-vae'" in answer["error"]
