"""The Open Inference Protocol end to end: a real server on loopback, driven over gRPC and HTTP by tritonclient
(run in a process of its own, see ``oip_client.py``), results compared with ``Model.edit``, the real ``/metrics``
scraped. tritonclient is in the dev extra; without it these tests skip."""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from service_util import metric

import curvedit
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig

pytest.importorskip("tritonclient.http")
CLIENT = Path(__file__).with_name("oip_client.py")
ATOL = 1e-5


def drive(bg, model: str, tmp: Path, image_model: str | None = None, token: str | None = None) -> dict:
    argv = [sys.executable, str(CLIENT), "--grpc", f"127.0.0.1:{bg.port}", "--http",
            f"127.0.0.1:{bg.server.http_port}", "--model", model, "--out", str(tmp)]
    argv += ["--image-model", image_model] if image_model else []
    argv += ["--token", token] if token else []
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


@pytest.fixture(scope="module")
def models(tiny_bundle, tiny_vae_bundle):
    return {"tiny": curvedit.load(tiny_bundle), "tinyvae": curvedit.load(tiny_vae_bundle)}


@pytest.fixture(scope="module")
def session(tiny_bundle, tiny_vae_bundle, models, tmp_path_factory):
    """One server, one client run (both protocols); the tests below read what it got."""
    tmp = tmp_path_factory.mktemp("oip")
    model = models["tiny"]
    z, t = model.sample(3, seed=4), np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.save(tmp / "z.npy", z)
    np.save(tmp / "t.npy", t)
    vae = models["tinyvae"]
    np.save(tmp / "images.npy", vae.generate(vae.sample(2, seed=1)))
    config = ServeConfig(port=0, http_port=0, metrics_port=0, models=(str(tiny_bundle), str(tiny_vae_bundle)),
                         max_batch_size=16, max_items_per_request=64, max_queue_size=256, engine="onnxruntime")
    with BackgroundServer(config) as bg:
        results = drive(bg, "tiny", tmp, image_model="tinyvae")
        yield {"results": results, "tmp": tmp, "z": z, "t": t, "bg": bg}


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_health_and_metadata(session, kind):
    r = session["results"][kind]
    assert r["live"] == {"ok": True} and r["ready"] == {"ok": True} and r["model_ready"] == {"ok": True}
    server = r["server"]["ok"]
    assert server["name"] == "curvedit" and server["version"] == curvedit.__version__
    meta = r["metadata"]["ok"]
    assert meta["name"] == "tiny" and meta["versions"] == ["0.0.1"] and meta["platform"] == "curvedit_onnxruntime"
    shapes = {t["name"]: (t["datatype"], [int(s) for s in t["shape"]]) for t in meta["inputs"]}
    assert shapes == {"z": ("FP32", [-1, 8]), "t": ("FP32", [-1, 4])}  # no `images`: tiny cannot encode
    outputs = {t["name"]: (t["datatype"], [int(s) for s in t["shape"]]) for t in meta["outputs"]}
    assert outputs == {"z_edited": ("FP32", [-1, 8]), "images": ("UINT8", [-1, 32, 32, 3])}
    index = r["index"]["ok"]
    entries = index["models"] if isinstance(index, dict) else index
    assert {(m["name"], m["version"], m["state"]) for m in entries} == {("tiny", "0.0.1", "READY"),
                                                                        ("tinyvae", "0.0.1", "READY")}


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_infer_equals_model_edit_and_generate(session, models, kind):
    r, tmp = session["results"][kind], session["tmp"]
    model = models["tiny"]
    assert r["edit"] == {"ok": "edit"}  # the request id comes back
    expected = model.edit(session["z"], session["t"])
    np.testing.assert_allclose(np.load(tmp / f"{kind}_edit_z_edited.npy"), expected, atol=ATOL)
    np.testing.assert_array_equal(np.load(tmp / f"{kind}_edit_images.npy"), model.generate(expected))
    np.testing.assert_allclose(np.load(tmp / f"{kind}_no_t_z_edited.npy"), model.edit(session["z"], {}),
                               atol=ATOL)  # no `t`: no edit
    np.testing.assert_allclose(np.load(tmp / f"{kind}_editor_z_edited.npy"), expected, atol=ATOL)


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_real_images_in(session, models, kind):
    vae = models["tinyvae"]
    images = np.load(session["tmp"] / "images.npy")
    assert session["results"][kind]["images"] == {"ok": "images"}
    z = vae.encode(images)
    np.testing.assert_allclose(np.load(session["tmp"] / f"{kind}_images_z_edited.npy"), z, atol=1e-4)
    edited_images = np.load(session["tmp"] / f"{kind}_images_images.npy")
    assert edited_images.shape == images.shape and edited_images.dtype == np.uint8


CODES = {"grpc": {"invalid": "StatusCode.INVALID_ARGUMENT", "not_found": "StatusCode.NOT_FOUND"},
         "http": {"invalid": "400", "not_found": "404"}}


@pytest.mark.parametrize("kind", ["grpc", "http"])
@pytest.mark.parametrize(("case", "code", "text"), [
    ("bad_shape", "invalid", "model tiny takes FP32 [n, 8]"),
    ("bad_t", "invalid", "input t has shape [3, 2], expected [3, 4]"),
    ("bad_editor", "invalid", "unknown editor 'nope'"),
    ("unknown_model", "not_found", "no model named 'nope'"),
])
def test_bad_requests_get_the_native_codes_and_messages(session, kind, case, code, text):
    answer = session["results"][kind][case]
    assert answer["status"] == CODES[kind][code] and text in answer["message"], answer


def test_metrics_count_both_sides(session):
    port = session["bg"].server.metrics_port
    assert metric(port, "grpc_server_handled_total", grpc_service="inference.GRPCInferenceService",
                  grpc_method="ModelInfer", grpc_code="OK") == 4  # edit, no t, editor, images
    assert metric(port, "grpc_server_handled_total", grpc_service="inference.GRPCInferenceService",
                  grpc_method="ModelInfer", grpc_code="INVALID_ARGUMENT") == 3
    assert metric(port, "curvedit_http_requests_total", route="/v2/models/{name}/infer", code="200") == 4
    assert metric(port, "curvedit_http_requests_total", route="/v2/models/{name}/infer", code="400") == 3
    assert metric(port, "grpc_server_handled_total", grpc_service="inference.GRPCInferenceService",
                  grpc_method="ModelInfer", grpc_code="NOT_FOUND") == 1
    assert metric(port, "curvedit_http_requests_total", route="/v2/models/{name}/infer", code="404") == 1
    assert metric(port, "nv_inference_request_success", model="tiny") == 6  # 3 inferences of tiny per protocol
    assert metric(port, "nv_inference_request_success", model="tinyvae") == 2
    # Malformed requests are Triton's OTHER; REJECTED is only for refusals for want of room (none here).
    assert metric(port, "nv_inference_request_failure", model="tiny", reason="OTHER") == 6
    assert metric(port, "nv_inference_request_failure", model="tiny", reason="REJECTED") == 0
    assert metric(port, "curvedit_rejections_total", model="tiny", reason="invalid") == 6


def test_http_errors_are_json_with_a_fix(session):
    port = session["bg"].server.http_port
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/tiny/infer", method="POST",
                                     data=b'{"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], '
                                          b'"data": [1, 2]}]}')
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    assert json.loads(info.value.read()) == {"error": "input 'z' has shape [1, 8] (8 values) but carries 2 values"}
    body = json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}],
                       "outputs": [{"name": "z_edited"}]}).encode()
    answer = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/tiny/infer", data=body, method="POST"), timeout=10).read())
    assert answer["outputs"][0]["name"] == "z_edited" and len(answer["outputs"][0]["data"]) == 8


def test_tokens_guard_both_protocols_but_not_health(tiny_bundle, tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text("s3cret\n")
    np.save(tmp_path / "z.npy", np.zeros((1, 8), np.float32))
    np.save(tmp_path / "t.npy", np.zeros((1, 4), np.float32))
    config = ServeConfig(port=0, http_port=0, metrics_port=-1, models=(str(tiny_bundle),), warmup=False,
                         auth_token_file=str(token_file))
    with BackgroundServer(config) as bg:
        refused = drive(bg, "tiny", tmp_path / "", token=None)
        (tmp_path / "with").mkdir()
        for name in ("z.npy", "t.npy"):
            (tmp_path / "with" / name).write_bytes((tmp_path / name).read_bytes())
        allowed = drive(bg, "tiny", tmp_path / "with", token="s3cret")
        health = urllib.request.urlopen(f"http://127.0.0.1:{bg.server.http_port}/v2/health/ready", timeout=10)
        assert health.status == 200
    assert refused["grpc"]["edit"]["status"] == "StatusCode.UNAUTHENTICATED"
    assert refused["http"]["edit"]["status"] == "401"
    assert "authorization: Bearer" in refused["http"]["edit"]["message"]
    assert allowed["grpc"]["edit"] == {"ok": "edit"} and allowed["http"]["edit"] == {"ok": "edit"}
