"""The browser studio's server side, without a browser: the page and its files at /, the studio API (models,
seeds, fitting uploads) on a real server on loopback, every refusal answered with a clear message while the server
keeps serving, and `curvedit edit --state` reading what the page downloads. The page itself runs in a real
Chromium in test_studio_browser.py."""

import io
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from service_util import metric

import curvedit
from curvedit.cli import main
from curvedit.images import MAX_FILE_BYTES, decode_image_file
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
DRAWN = ROOT / "docs" / "figures" / "drawn" / "shape_00.png"


def call(port: int, path: str, body: bytes | None = None, method: str | None = None, token: str | None = None):
    """``(status, headers, body bytes)`` of one HTTP request; error statuses are returned, not raised."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def error(port: int, path: str, **kwargs) -> tuple[int, str]:
    status, _, body = call(port, path, **kwargs)
    return status, json.loads(body)["error"]


@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_vae_bundle):
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny_bundle), str(tiny_vae_bundle)),
                         max_batch_size=16, engine="torch")
    with BackgroundServer(config) as bg:
        yield bg


@pytest.fixture(scope="module")
def http(server) -> int:
    return server.server.http_port


@pytest.mark.parametrize(("path", "kind"), [("/", "text/html"), ("/studio/", "text/html"),
                                            ("/studio/static/studio.js", "text/javascript"),
                                            ("/studio/static/studio.css", "text/css")])
def test_the_page_and_its_files_are_served(http, path, kind):
    status, headers, body = call(http, path)
    assert status == 200 and headers["Content-Type"].startswith(kind) and body
    # The browser itself refuses anything from another origin (no CDN can sneak in).
    assert "default-src 'self'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("name", ["index.html", "studio.js", "studio.css"])
def test_the_page_loads_nothing_from_elsewhere(name):
    text = (ROOT / "service" / "studio" / "static" / name).read_text()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), "a remote URL in the page"


def test_models_lists_every_served_model_with_directions_and_units(http):
    status, _, body = call(http, "/studio/api/models")
    info = json.loads(body)
    assert status == 200 and info["max_upload_bytes"] == MAX_FILE_BYTES
    models = {m["name"]: m for m in info["models"]}
    assert list(models) == ["tiny", "tinyvae"]
    assert (models["tiny"]["can_encode"], models["tinyvae"]["can_encode"]) == (False, True)
    (editor,) = models["tiny"]["editors"]
    assert editor["name"] == "decurved" and editor["directions"] == ["x", "y", "scale", "rotation"]
    assert editor["mode"] == "supervised" and "standard deviation" in editor["units"]
    assert models["tiny"]["image_shape"] == [32, 32, 3] and models["tiny"]["latent_dim"] == 8


@pytest.mark.parametrize("seed", [0, 7, 2**53 - 1])
def test_sample_is_the_models_own_seeded_latent(http, tiny_bundle, seed):
    status, _, body = call(http, f"/studio/api/models/tiny/sample?seed={seed}")
    assert status == 200
    expected = curvedit.load(tiny_bundle, engine="torch").sample(1, seed=seed)[0]
    np.testing.assert_array_equal(np.float32(json.loads(body)["z"]), expected)


def test_fit_gives_the_pixels_curvedit_edit_would_use(http):
    status, _, body = call(http, "/studio/api/models/tinyvae/fit", body=DRAWN.read_bytes())
    fitted = json.loads(body)
    assert status == 200 and fitted["shape"] == [32, 32, 3]
    expected = decode_image_file(DRAWN.read_bytes(), (32, 32, 3))
    np.testing.assert_array_equal(np.uint8(fitted["data"]).reshape(32, 32, 3), expected)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("path", "kwargs", "status", "says"), [
    ("/studio/api/models/tinyvae/fit", {"body": b"this is not an image\n"}, 400, "not a readable image"),
    ("/studio/api/models/tinyvae/fit", {"body": b"", "method": "POST"}, 400, "empty"),
    ("/studio/api/models/tinyvae/fit", {"body": _png()[:40]}, 400, "not a readable image"),  # truncated
    ("/studio/api/models/tinyvae/fit", {"body": b"\x89PNG" + bytes(MAX_FILE_BYTES)}, 400, "upload limit"),
    ("/studio/api/models/tiny/fit", {"body": _png()}, 400, "no encoder"),
    ("/studio/api/models/nope/fit", {"body": _png()}, 404, "no model named"),
    ("/studio/api/models/tinyvae/fit", {}, 405, "takes POST"),
    ("/studio/api/models/tiny/sample?seed=-1", {}, 400, "integer seed"),
    ("/studio/api/models/tiny/sample?seed=x", {}, 400, "integer seed"),
    ("/studio/api/models/tiny/sample", {}, 400, "integer seed"),
    ("/studio/api/models/tiny/sample?seed=9007199254740992", {}, 400, "integer seed"),
    ("/studio/api/nothing", {}, 404, "no studio API route"),
    ("/studio/other.html", {}, 404, "the studio is at /"),
    ("/", {"body": b"x"}, 405, "takes GET"),
])
def test_bad_input_is_refused_clearly_and_the_server_keeps_serving(server, http, path, kwargs, status, says):
    before = metric(server.server.metrics_port, "curvedit_http_requests_total", code=str(status))
    got, message = error(http, path, **kwargs)
    assert got == status and says in message and "object at 0x" not in message
    assert metric(server.server.metrics_port, "curvedit_http_requests_total", code=str(status)) == before + 1
    assert call(http, "/v2/health/ready")[0] == 200
    assert call(http, "/studio/api/models/tiny/sample?seed=1")[0] == 200


def test_the_api_takes_the_servers_token_but_the_page_does_not(tiny_bundle, tmp_path):
    (tmp_path / "tokens").write_text("s3cret\n")
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny_bundle),), engine="torch",
                         auth_token_file=str(tmp_path / "tokens"))
    with BackgroundServer(config) as bg:
        port = bg.server.http_port
        assert call(port, "/")[0] == 200 and call(port, "/studio/static/studio.js")[0] == 200
        assert call(port, "/studio/api/models")[0] == 401
        assert call(port, "/studio/api/models", token="s3cret")[0] == 200


# -- curvedit edit --state: what the page's "download JSON" feeds back --------------------------------------
def _state(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(fields))
    return path


def test_edit_state_runs_the_files_latent_editor_and_amounts(tiny_bundle, tmp_path):
    model = curvedit.load(tiny_bundle, engine="torch")
    z = model.sample(1, seed=3)
    path = _state(tmp_path, format="curvedit-studio-state/1", model="tiny", editor="decurved", z=z.tolist(),
                  edits={"x": 1.0, "y": 0.0, "scale": -0.5, "rotation": 0.0}, source={"seed": 3})
    out = tmp_path / "out"
    assert main(["edit", "--model", str(tiny_bundle), "--engine", "torch", "--state", str(path), "--edit",
                 "y=0.25", "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out / "latents.npy"), z)
    expected = model.edit(z, {"x": 1.0, "y": 0.25, "scale": -0.5}, editor="decurved")  # --edit wins over the file
    np.testing.assert_allclose(np.load(out / "edited.npy"), expected, atol=1e-6)


@pytest.mark.parametrize(("content", "extra", "says"), [
    ("{not json", [], "is not JSON"),
    ("[1, 2]", [], "JSON object with `z`"),
    ('{"z": [[0, 0, 0, 0, 0, 0, 0, 0]], "edits": {"x": "big"}}', [], "map direction names to numbers"),
    ('{"z": "zeros", "edits": {"x": 1}}', [], "list of rows of numbers"),
    ('{"z": [[0, 0, 0]], "edits": {"x": 1}}', [], "8"),
    ('{"z": [[0, 0, 0, 0, 0, 0, 0, 0]], "edits": {"warp": 1}}', [], "warp"),
    ('{"z": [[0, 0, 0, 0, 0, 0, 0, 0]], "edits": {"x": 1}}', ["--latents", "z.npy"], "pass --state alone"),
])
def test_edit_state_refuses_a_bad_file_clearly(tiny_bundle, tmp_path, capsys, content, extra, says):
    path = tmp_path / "state.json"
    path.write_text(content)
    code = main(["edit", "--model", str(tiny_bundle), "--engine", "torch", "--state", str(path), *extra,
                 "--out", str(tmp_path / "out")])
    assert code != 0 and says in capsys.readouterr().err
