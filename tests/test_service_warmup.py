"""Ready fast, and say so: warm-up keeps its engine routes across starts, the models after the first warm up
while the first serves (each UNAVAILABLE, named, until warm), and a signal during warm-up stops the real CLI at
once. Nothing here asserts a time beyond the 2 s a stopped start may take."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from service_util import metric, wait_until
from test_auto_engine import Fake

import curvedit
from curvedit.bundle import load_bundle, read_manifest, write_manifest
from curvedit.client import Client
from curvedit.engines.auto_engine import AutoEngine
from curvedit.engines.route_cache import RouteCache
from curvedit.inference import grpc_service_pb2 as oip
from curvedit.inference import grpc_service_pb2_grpc as oip_grpc
from curvedit.service.background import BackgroundServer
from curvedit.service.config import ServeConfig, build_config
from curvedit.service.models import ServedModel, serving_model


def fake_auto(bundle, calls):
    engines = {"onnxruntime": Fake("onnxruntime", {1, 2}, calls), "torch": Fake("torch", {4, 8}, calls)}
    return AutoEngine(bundle, "cpu", "onnxruntime", ["onnxruntime", "torch"], lambda name, _o: engines[name])


def test_routes_come_from_the_cache_on_the_next_start(tiny_bundle, tmp_path):
    cache, bundle = RouteCache(tmp_path / "cache"), load_bundle(tiny_bundle)
    first_calls, second_calls = [], []
    first = fake_auto(bundle, first_calls)
    measured = first.calibrate([1, 2, 4, 8], operations=["edit:decurved"], cache=cache)
    assert first.calibrated_from == "measured" and first_calls
    (stored,) = (tmp_path / "cache").glob("routes-*.json")
    assert json.loads(stored.read_text())["key"]["bundle"] == bundle.digest
    second = fake_auto(bundle, second_calls)
    assert second.calibrate([1, 2, 4, 8], operations=["edit:decurved"], cache=cache) == measured
    assert second.calibrated_from == "cache" and second_calls == []  # nothing was timed


def test_another_bundle_machine_or_bucket_set_calibrates_afresh(tiny_bundle, tmp_path):
    cache = RouteCache(tmp_path / "cache")
    fake_auto(load_bundle(tiny_bundle), []).calibrate([1, 2, 4, 8], operations=["edit:decurved"], cache=cache)
    other = shutil.copytree(tiny_bundle, tmp_path / "other")
    write_manifest(other, {**read_manifest(other), "version": "9.9.9"})  # another digest, the same weights
    calls = []
    auto = fake_auto(load_bundle(other), calls)
    auto.calibrate([1, 2, 4, 8], operations=["edit:decurved"], cache=cache)
    assert auto.calibrated_from == "measured" and calls
    again = fake_auto(load_bundle(tiny_bundle), calls := [])
    again.calibrate([1, 2, 4], operations=["edit:decurved"], cache=cache)  # other buckets: another key
    assert again.calibrated_from == "measured" and calls


def test_a_damaged_cache_file_is_measured_again_and_rewritten(tiny_bundle, tmp_path):
    cache = RouteCache(tmp_path / "cache")
    fake_auto(load_bundle(tiny_bundle), []).calibrate([1, 2], operations=["edit:decurved"], cache=cache)
    (stored,) = (tmp_path / "cache").glob("routes-*.json")
    stored.write_text('{"key": ')  # half a file
    auto = fake_auto(load_bundle(tiny_bundle), [])
    auto.calibrate([1, 2], operations=["edit:decurved"], cache=cache)
    assert auto.calibrated_from == "measured" and json.loads(stored.read_text())["routes"]


def test_the_command_line_caches_in_the_users_cache_dir_unless_told_otherwise():
    assert build_config({}, {"HOME": "/home/u"}).cache_dir == "/home/u/.cache/curvedit"
    assert build_config({}, {"HOME": "/home/u", "XDG_CACHE_HOME": "/x"}).cache_dir == "/x/curvedit"
    assert build_config({"cache_dir": "off"}, {"HOME": "/home/u"}).cache_dir == ""
    assert build_config({}, {}).ready_when == "default"  # the command line: SERVING once the first is warm
    assert ServeConfig().cache_dir == "" and ServeConfig().ready_when == "all"  # a server built in code
    with pytest.raises(ValueError, match="ready_when must be 'default'"):
        ServeConfig(ready_when="soon")


@pytest.fixture
def two_models(tiny_bundle, tmp_path):
    """The tiny model as the default, and a copy named "second" whose warm-up waits for ``release``."""
    copy = shutil.copytree(tiny_bundle, tmp_path / "second")
    write_manifest(copy, {**read_manifest(copy), "name": "second"})
    first, second = (ServedModel(serving_model(path, "torch")) for path in (tiny_bundle, copy))
    release, started = threading.Event(), threading.Event()
    warm_up = second.warm_up

    def slow_warm_up(*args):
        started.set()
        if not release.wait(30):
            raise TimeoutError("never released")
        return warm_up(*args)

    second.warm_up = slow_warm_up
    return {"tiny": first, "second": second}, release, started


def test_the_default_model_serves_while_the_next_one_warms_up(two_models):
    models, release, started = two_models
    config = ServeConfig(port=0, metrics_port=0, http_port=-1, ready_when="default")
    with BackgroundServer(config, models) as bg, Client(f"127.0.0.1:{bg.port}") as client:
        assert started.wait(10)
        assert client.health() == "SERVING"  # the default model is warm
        z = np.zeros((2, 8), np.float32)
        assert client.edit(z, edits={"x": 1.0}).latents.shape == (2, 8)
        with pytest.raises(grpc.RpcError) as refused:
            client.edit(z, edits={"x": 1.0}, model="second")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert re.search(r"model second is warming up: ready in .*; retry after \d+ ms", refused.value.details())
        pushback = dict(refused.value.trailing_metadata())["grpc-retry-pushback-ms"]
        assert 100 <= int(pushback) <= 10_000
        stub = oip_grpc.GRPCInferenceServiceStub(client.channel)
        assert stub.ModelReady(oip.ModelReadyRequest(name="tiny")).ready
        assert not stub.ModelReady(oip.ModelReadyRequest(name="second")).ready
        assert metric(bg.server.metrics_port, "curvedit_model_ready", model="second") == 0
        assert metric(bg.server.metrics_port, "curvedit_rejections_total", model="second",
                      reason="warming_up") == 1
        release.set()
        wait_until(lambda: models["second"].ready, what="the second model warm")
        assert client.edit(z, edits={"x": 1.0}, model="second").latents.shape == (2, 8)
        assert stub.ModelReady(oip.ModelReadyRequest(name="second")).ready
        assert metric(bg.server.metrics_port, "curvedit_model_ready", model="second") == 1


def test_ready_when_all_says_serving_only_once_every_model_is_warm(two_models):
    models, release, started = two_models
    threading.Timer(0.5, release.set).start()
    config = ServeConfig(port=0, metrics_port=-1, http_port=-1, ready_when="all")
    with BackgroundServer(config, models):
        assert started.is_set() and all(m.ready for m in models.values())


# -- the real command line ---------------------------------------------------------------------------------------
def start_cli(*flags):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "curvedit.cli", "serve", "--port", "0", "--http-port", "-1",
                             "--metrics-port", "-1", *flags], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def wait_for_line(lines, pattern, timeout=120.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in list(lines):
            if re.search(pattern, line):
                return line
        time.sleep(0.01)
    raise AssertionError(f"no line matching {pattern!r}: {''.join(lines)}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_warm_up_stops_the_server_within_two_seconds(sig):
    """shapes32 calibrated afresh (no cache): seconds of warm-up, and the signal comes in the middle of it."""
    proc, lines = start_cli("--model", "shapes32", "--cache-dir", "off")
    try:
        wait_for_line(lines, r"warming up shapes32")
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert took < 2.0, f"stopped {took:.2f} s after {sig.name}"
    wait_for_line(lines, rf"{sig.name} during warm-up \(shapes32\): stopped before serving", timeout=5)
    assert not any("SERVING" in line for line in lines)


@pytest.mark.slow
def test_sigterm_while_the_later_models_warm_up_drains_and_stops(tiny_bundle):
    """Serving the tiny model while shapes32 calibrates in the background: the drain stops that warm-up."""
    proc, lines = start_cli("--model", str(tiny_bundle), "--model", "shapes32", "--cache-dir", "off",
                            "--engine", "auto")
    try:
        line = wait_for_line(lines, r"SERVING .*warming up after the default: shapes32")
        port = int(re.search(r"on 127\.0\.0\.1:(\d+);", line).group(1))
        with Client(f"127.0.0.1:{port}") as client:
            assert client.edit(np.zeros((1, 8), np.float32), edits={"x": 1.0}).latents.shape == (1, 8)
        wait_for_line(lines, r"warming up shapes32")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 0 and took < 2.0, f"exit {proc.returncode} {took:.2f} s after SIGTERM"
    wait_for_line(lines, r"curvedit serve: stopped$", timeout=5)


def test_shipped_models_warm_up_with_the_auto_engine_and_cache_their_routes(tmp_path):
    """One real shipped model: calibrated once, then its routes come from the cache (same routes)."""
    cache = RouteCache(tmp_path / "cache")
    routes = []
    for _ in range(2):
        served = ServedModel(serving_model("faces-photo", "auto"))
        served.warm_up(4, cache)
        routes.append((served.model.runtime.calibrated_from, served.routes()))
    assert [origin for origin, _ in routes] == ["measured", "cache"]
    assert routes[0][1] == routes[1][1]
    assert curvedit.load("faces-photo").digest in {json.loads(f.read_text())["key"]["bundle"]
                                                   for f in (tmp_path / "cache").iterdir()}


@pytest.mark.slow
def test_liveness_is_serving_while_readiness_waits_for_the_warm_up():
    """Kubernetes' probes (deploy/kubernetes): during a cold warm-up the process is alive ("liveness" SERVING)
    but not ready ("" NOT_SERVING), so a long warm-up never gets the pod killed."""
    import socket

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc, lines = start_cli("--model", "shapes32", "--cache-dir", "off", "--port", str(port))
    try:
        wait_for_line(lines, r"warming up shapes32")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            status = lambda service: check(health_pb2.HealthCheckRequest(service=service), timeout=5).status  # noqa: E731
            assert status("liveness") == health_pb2.HealthCheckResponse.SERVING
            assert status("") == health_pb2.HealthCheckResponse.NOT_SERVING
            wait_for_line(lines, r"SERVING shapes32")
            assert status("") == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.terminate()
        proc.wait(30)
