"""Real images over the service: ``Encode``, ``Edit`` with images as input, the client and ``curvedit client``, and
every bad image answered with INVALID_ARGUMENT while the server keeps serving. A real server on loopback."""

import io
import re

import grpc
import numpy as np
import pytest
from PIL import Image

import curvedit
from curvedit.cli import main
from curvedit.client import Client, edit_request
from curvedit.images import decode_image_file
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig
from curvedit.v1 import latent_edit_pb2 as pb


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tiny_vae_bundle, tiny_bundle):
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=(str(tiny_vae_bundle), str(tiny_bundle)),
                         engine="onnxruntime", max_batch_size=8)
    with BackgroundServer(config) as bg:
        yield bg


@pytest.fixture(scope="module")
def client(server):
    with Client(f"127.0.0.1:{server.port}", timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(tiny_vae_bundle):
    """The API on the same engine as the server."""
    return curvedit.load(tiny_vae_bundle, engine="onnxruntime")


@pytest.fixture(scope="module")
def photos(model):
    return model.generate(model.sample(3, seed=2))


def test_model_info_says_who_can_encode(client, model):
    infos = {info.name: info for info in client.list_models()}
    assert infos["tinyvae"].can_encode and infos["tinyvae"].family == "vae"
    assert not infos["tiny"].can_encode and infos["tiny"].family == "dcgan"
    assert infos["tinyvae"].digest == model.digest


@pytest.mark.parametrize("form", ["raw", "png"])
def test_encode_equals_the_api(client, model, photos, form):
    sent = photos if form == "raw" else [png(p) for p in photos]
    np.testing.assert_array_equal(client.encode(sent, model="tinyvae"), model.encode(photos))


def test_an_image_edited_through_the_service_equals_the_api_byte_for_byte(client, model, photos):
    """One PNG file, edited by the server and by the API on the same engine: identical bytes."""
    data = png(photos[0])
    result = client.edit(input_images=[data], edits={"x": 1.0, "scale": -0.5}, model="tinyvae", images="raw")
    expected = model.edit_images(decode_image_file(data, model.image_shape)[None], {"x": 1.0, "scale": -0.5})
    np.testing.assert_array_equal(result.images, expected)
    np.testing.assert_array_equal(result.latents, model.edit(model.encode(photos[:1]), {"x": 1.0, "scale": -0.5}))


def test_grayscale_and_other_sizes_are_fitted_from_files(client, model, photos):
    grey = np.asarray(Image.fromarray(photos[1]).convert("L").resize((64, 64)))
    z = client.encode([png(grey)], model="tinyvae")
    fitted = decode_image_file(png(grey), model.image_shape)
    np.testing.assert_array_equal(z, model.encode(fitted[None]))


def test_images_in_a_stream_batch_with_latents(client, model, photos):
    requests = [edit_request(input_images=photos[:2], edits={"y": 0.5}, model="tinyvae", id="img"),
                edit_request(seeds=[1, 2, 3], edits={"y": 0.5}, model="tinyvae", id="seeds")]
    results = {r.id: r for r in client.edit_stream(requests)}
    np.testing.assert_allclose(results["img"].latents, model.edit(model.encode(photos[:2]), {"y": 0.5}),
                               atol=1e-5)
    np.testing.assert_allclose(results["seeds"].latents, model.edit(model.sample_seeds([1, 2, 3]), {"y": 0.5}),
                               atol=1e-5)


def _huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4097, 4097)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD = {
    "not an image": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_PNG, png=[b"hello"]), "not a readable image"),
    "truncated png": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_PNG, png=[png(p[0])[:-30]]),
                      "not a readable image"),
    "empty png": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_PNG, png=[b""]), "is empty"),
    "oversized png": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_PNG, png=[_huge_png()]), "over the limit"),
    "raw of another size": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_RAW, shape=[1, 16, 16, 3],
                                                data=bytes(16 * 16 * 3)), "resize them first"),
    "raw with 2 channels": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_RAW, shape=[1, 32, 32, 2],
                                                data=bytes(32 * 32 * 2)), "2 channels"),
    "raw rgba": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_RAW, shape=[1, 32, 32, 4], data=bytes(32 * 32 * 4)),
                 "RGBA"),
    "raw bytes short": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_RAW, shape=[1, 32, 32, 3], data=b"x"),
                        "carry 1 bytes"),
    "raw wrong rank": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_RAW, shape=[32, 32], data=bytes(1024)),
                       r"must have shape \[n, H, W, 3\]"),
    "no images": (lambda p: pb.Images(format=pb.IMAGE_FORMAT_PNG), "empty batch"),
    "unknown format": (lambda p: pb.Images(format=7), "not PNG"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("rpc", ["Encode", "Edit"])
def test_bad_images_are_invalid_argument_and_the_server_keeps_serving(client, photos, case, rpc):
    make, message = BAD[case]
    images = make(photos)
    if rpc == "Encode":
        call = lambda: client.stub.Encode(pb.EncodeRequest(model="tinyvae", images=images), timeout=30)  # noqa: E731
    else:
        request = pb.EditRequest(model="tinyvae", images=images,
                                 edits=[pb.DirectionAmount(direction="x", amount=1.0)])
        call = lambda: client.stub.Edit(request, timeout=30)  # noqa: E731
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, info.value.details()), info.value.details()
    assert client.encode(photos[:1], model="tinyvae").shape == (1, 8)  # still serving


@pytest.mark.parametrize("rpc", ["Encode", "Edit"])
def test_a_model_without_an_encoder_refuses_images(client, photos, rpc):
    with pytest.raises(grpc.RpcError) as info:
        if rpc == "Encode":
            client.encode(photos[:1], model="tiny")
        else:
            client.edit(input_images=photos[:1], edits={"x": 1.0}, model="tiny")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no encoder" in info.value.details() and "vae" in info.value.details()


def test_client_command_line_encodes_and_edits_files(server, model, photos, tmp_path, capsys):
    files = []
    for i, photo in enumerate(photos[:2]):
        (tmp_path / f"p{i}.png").write_bytes(png(photo))
        files += ["--image", str(tmp_path / f"p{i}.png")]
    target = f"127.0.0.1:{server.port}"
    assert main(["client", "encode", "--server", target, "--model", "tinyvae", *files,
                 "--out", str(tmp_path / "z.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), model.encode(photos[:2]))
    assert main(["client", "edit", "--server", target, "--model", "tinyvae", *files, "--edit", "x=1",
                 "--out", str(tmp_path / "e")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "e" / "01_edited.png")),
                                  model.edit_images(photos[1:2], {"x": 1.0})[0])
